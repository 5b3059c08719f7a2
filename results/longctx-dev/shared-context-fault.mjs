// Reproduces the fault of one shared context in bench:longctx runPromptEnd (before the context per case); its
// cause was the harness: sequence 0 garbage-collected and cleared by node-llama-cpp (shared-context-fault-diagnosis.md):
// git checkout c65511c -- bench/lib/longctx-run.ts && npm run -s build, then
// ALL=1 CASES=0.1:0,0.1:1,0.2:0,0.2:1,0.3:0,0.3:1,0.4:0,0.4:1,0.5:0,0.5:1,0.6:0 node results/longctx-dev/shared-context-fault.mjs
// prints every configuration's reply on the last case (question before, depth 60%, seed 0): from "keepkv prompt-end 0.1" on,
// every one answers "-1000." (window at 20% included), where alone (CASES=0.6:0) they answer 58164. Output: shared-context-fault.txt
import fs from "node:fs";
const D = process.env.D ?? new URL("../../dist", import.meta.url).pathname;
const { loadPatchedLlama } = await import(`${D}/server/engine/llama-loader.js`);
const { runPromptEnd, longctxConfigs, extraConfigs } = await import(`${D}/bench/lib/longctx-run.js`);
const { needleCase, needleSeed } = await import(`${D}/bench/lib/longctx-tasks.js`);
const { resolveCorpus, resolveModel } = await import(`${D}/bench/lib/inputs.js`);
const TASK = process.env.TASK ?? "before";
const cases0 = (process.env.CASES ?? "0.5:1,0.6:0").split(",").map((s) => s.split(":").map(Number));
const text = fs.readFileSync(resolveCorpus("kjv"), "utf8");
const llama = await loadPatchedLlama();
const model = await llama.loadModel({ modelPath: resolveModel("smollm2") });
const cases = cases0.map(([d, s]) => needleCase(model, text, TASK, 2048, d, needleSeed(2048, d, s)));
const only = ['window prompt-end','evict prompt-end','merge-naive prompt-end','merge-naive (recency) prompt-end','keepkv/paper prompt-end','keepkv/votes prompt-end','keepkv prompt-end','keepkv (recency) prompt-end'];
const extras = JSON.parse('[{"label":"keepkv T0.9","policy":"keepkv","threshold":0.9},{"label":"keepkv T0.95","policy":"keepkv","threshold":0.95},{"label":"keepkv P0","policy":"keepkv","protect":0},{"label":"keepkv P0.9","policy":"keepkv","protect":0.9},{"label":"merge-naive T0.95","policy":"merge-naive","threshold":0.95}]');
let configs = [...longctxConfigs("all", [0.05, 0.1, 0.2], ["prompt-end"]).filter((c) => c.policy === "off" || only.includes(c.label)), ...(process.env.NOEXTRA ? [] : extraConfigs(extras, [0.05, 0.1, 0.2]))];
const rows = await runPromptEnd(model, configs, cases, { threads: 2, generate: 8 });
for (const r of rows) if (process.env.ALL ? (r.depth === cases0.at(-1)[0] && r.seed % 10 === cases0.at(-1)[1]) : (r.config === "evict prompt-end" && r.budget === 0.2)) console.log(r.config, r.budget, r.depth, r.seed % 10, JSON.stringify(r.reply));
await model.dispose(); await llama.dispose();
