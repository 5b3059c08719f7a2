// Experiment: SnapKV-style max pooling of the selection ranking at the prompt's end.
import fs from "node:fs";
// run from the repository after `npm run -s build`: node results/longctx-pool/pool.mjs
const D = process.env.D ?? new URL("../../dist", import.meta.url).pathname;
const { loadPatchedLlama } = await import(`${D}/server/engine/llama-loader.js`);
const { createKeepKvContext, compressSequence, selectForCompression, cellPositions, keepKvSettingsOf } = await import(`${D}/server/engine/keepkv.js`);
const { needleCase, needleSeed, needleAnswered } = await import(`${D}/bench/lib/longctx-tasks.js`);
const { evaluatePrompt, continueGreedy } = await import(`${D}/bench/lib/scoring.js`);
const { removeCellsRaw } = await import(`${D}/server/engine/native-context.js`);
const { rawDecode } = await import(`${D}/bench/lib/raw-decode.js`);
const { resolveCorpus, resolveModel } = await import(`${D}/bench/lib/inputs.js`);

const env = (k, d) => process.env[k] ?? d;
const TASK = env("TASK", "multikey"), LEN = Number(env("LEN", 2048)), BUDGET = Number(env("BUDGET", 0.1));
const DEPTHS = env("DEPTHS", "0.1,0.2,0.3,0.4,0.6,0.7,0.8,0.9").split(",").map(Number);
const SEEDS = Number(env("SEEDS", 2));
const POLICIES = env("POLICIES", "keepkv,evict").split(",");
// a radius r: a cell is worth its best-ranked neighbour within r positions; fr: within the r positions before it
const RADII = env("RADII", "0,1,3").split(",");
const text = fs.readFileSync(resolveCorpus(env("CORPUS", "kjv")), "utf8");
const llama = await loadPatchedLlama();
const model = await llama.loadModel({ modelPath: resolveModel(env("MODEL", "smollm2")) });
const cases = [];
for (const d of DEPTHS) for (let s = 0; s < SEEDS; s++) cases.push(needleCase(model, text, TASK, LEN, d, needleSeed(LEN, d, s)));
const budgetCells = Math.round(BUDGET * LEN);
const tally = {};
const statePath = "/tmp/pool.state";
// the cells radius 0 removes, to count how many a radius changes
let base = new Set();
for (const policy of POLICIES) {
    const context = await createKeepKvContext(model, { contextSize: LEN + 8, threads: 2, batchSize: 512,
        keepKv: { policy, budget: null, selection: "policy", scoreDecay: 0 } });
    const seq = context.getSequence();
    for (const c of cases) {
        await removeCellsRaw(context, 0, 0, -1);
        await evaluatePrompt(context, 0, c.prompt, 512);
        await seq.saveStateToFile(statePath);
        const N = c.prompt.length - budgetCells;
        // removal order: the position that enters the removal set at k
        const rank = new Map();
        let prev = new Set();
        const { sinks, recent } = keepKvSettingsOf(context);
        const K = c.prompt.length - sinks - recent - 1;
        for (let k = 1; k <= K; k++) {
            const sel = await selectForCompression(seq, k);
            for (const p of sel) if (!prev.has(p)) rank.set(p, k);
            prev = new Set(sel);
        }
        const ranked = [...rank.keys()].sort((a, b) => a - b);
        for (const w of RADII) {
            if (w !== RADII[0]) await seq.loadStateFromFile(statePath, { acceptRisk: true });
            // importance: later removal = more important; pooled over ranked neighbours within ±w positions
            const imp = new Map(ranked.map((p) => [p, rank.get(p)]));
            const pooled = ranked.map((p) => {
                let m = imp.get(p);
                const forward = w.startsWith("f"), r = Number(w.replace("f", ""));
                for (let d = -r; d <= (forward ? 0 : r); d++) { const q = imp.get(p + d); if (q != null && q > m) m = q; }
                return { p, m, r: imp.get(p) };
            });
            pooled.sort((a, b) => a.m - b.m || a.r - b.r);
            const remove = pooled.slice(0, N).map((x) => x.p).sort((a, b) => a - b);
            if (w === RADII[0]) base = new Set(remove);
            const changed = remove.filter((p) => !base.has(p)).length;
            await compressSequence(seq, remove);
            const last = c.prompt.length - 1;
            await removeCellsRaw(context, 0, last, last + 1);
            const logits = await rawDecode(context, 0, last, [c.prompt[last]]);
            const reply = model.detokenize(await continueGreedy(context, 0, c.prompt.length, logits, 8));
            const ok = needleAnswered(reply, c.answer);
            const key = `${policy} r${w}`;
            tally[key] = (tally[key] ?? 0) + (ok ? 1 : 0);
            const needleKept = (await cellPositions(seq)).filter((p) => p >= c.needleAt && p < c.needleAt + 16).length;
            console.log(`${policy} r${w} d${c.depth} s${c.seed % 10} ${ok ? "OK " : "-- "} ans ${c.answer} reply ${JSON.stringify(reply)} needle-cells-kept ${needleKept}/16 ranked ${ranked.length} N ${N} changed ${changed}`);
        }
    }
    await context.dispose();
}
console.log(JSON.stringify(tally));
await model.dispose(); await llama.dispose();
