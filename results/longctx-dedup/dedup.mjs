// EXPERIMENT: merge-first (dedup) selection at the prompt's end, toggled per configuration by env
import * as fs from "node:fs";
const D = process.env.D ?? new URL("../../dist", import.meta.url).pathname;
const { loadPatchedLlama } = await import(`${D}/server/engine/llama-loader.js`);
const { createKeepKvContext, compressSequence, setKeepKvCompression, keepKvSequenceStats } = await import(`${D}/server/engine/keepkv.js`);
const { needleCase, needleSeed, needleAnswered } = await import(`${D}/bench/lib/longctx-tasks.js`);
const { evaluatePrompt, continueGreedy } = await import(`${D}/bench/lib/scoring.js`);
const { removeCellsRaw, copyCellsRaw, claimSequence } = await import(`${D}/server/engine/native-context.js`);
const { rawDecode } = await import(`${D}/bench/lib/raw-decode.js`);
const { resolveCorpus, resolveModel } = await import(`${D}/bench/lib/inputs.js`);
const env = (k, d) => process.env[k] ?? d;
const TASKS = env("TASKS", "needle").split(","), LEN = Number(env("LEN", 2048));
const BUDGETS = env("BUDGETS", "0.05,0.1").split(",").map(Number);
const DEPTHS = env("DEPTHS", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9").split(",").map(Number);
const SEEDS = Number(env("SEEDS", 2));
const OBS = Number(env("OBS", 8));
// configs: policy:T:dist
const CONFIGS = env("CONFIGS", "evict:0:0,keepkv:0:0,evict:0.9:8,keepkv:0.9:8").split(",").map((s) => { const [policy, t, d] = s.split(":"); return { policy, t: Number(t), d: Number(d), label: s }; });
const text = fs.readFileSync(resolveCorpus("kjv"), "utf8");
const llama = await loadPatchedLlama();
const model = await llama.loadModel({ modelPath: resolveModel("smollm2") });
const tally = {};
for (const task of TASKS) {
  const ctx = await createKeepKvContext(model, { contextSize: LEN + 16, sequences: 2, batchSize: 512, threads: 2, keepKv: { policy: "evict", selection: "score", scoreDecay: 0, observed: OBS } });
  // claimed: sequence 0 is used only by its id (shared-context-fault-diagnosis.md)
  const [p, q] = [claimSequence(ctx), claimSequence(ctx)];
  for (const depth of DEPTHS) for (let s = 0; s < SEEDS; s++) {
    const c = needleCase(model, text, task, LEN, depth, needleSeed(LEN, depth, s));
    await evaluatePrompt(ctx, 0, c.prompt, 512);
    const line = [];
    for (const b of BUDGETS) for (const cf of CONFIGS) {
      await removeCellsRaw(ctx, 1, 0, -1);
      await copyCellsRaw(ctx, 0, 1);
      await setKeepKvCompression(ctx, { policy: cf.policy, selection: "policy" });
      process.env.LLAMA_KEEPKV_DEDUP = String(cf.t);
      process.env.LLAMA_KEEPKV_DEDUP_DIST = String(cf.d);
      await compressSequence(q, c.prompt.length - Math.round(b * LEN));
      process.env.LLAMA_KEEPKV_DEDUP = "0";
      const last = c.prompt.length - 1;
      await removeCellsRaw(ctx, 1, last, last + 1);
      const logits = await rawDecode(ctx, 1, last, [c.prompt[last]]);
      const reply = model.detokenize(await continueGreedy(ctx, 1, c.prompt.length, logits, 8));
      const ok = needleAnswered(reply, c.answer);
      const key = `${task} ${b} ${cf.label}`;
      tally[key] = (tally[key] ?? 0) + (ok ? 1 : 0);
      line.push(`${b} ${cf.label} ${ok ? "OK" : "--"} ${JSON.stringify(reply.slice(0, 12))}`);
    }
    console.log(`${task} d${depth} s${s} ans ${c.answer} | ${line.join(" | ")}`);
  }
  await ctx.dispose();
}
console.log(JSON.stringify(tally, null, 1));
await model.dispose(); await llama.dispose();
