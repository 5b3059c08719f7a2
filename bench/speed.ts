// npm run bench:speed -- [--json] [--model PATH] [--contexts 1024,4096,8192] [--repeats 3] [--threads 1]
//                         [--batch-context 1024] [--batch-full-sequences 2] [--budget 0.1] [--chunk FRACTION]
//                         [--experiments decode,batch,prefill,overhead] [--overhead-pairs 15] [--out speed]
//
// (a) decode tokens/s at long logical contexts, for node-llama-cpp's vanilla prebuilt binary, the patched build
//     with KeepKV off, and keepkv at a 10% budget;
// (b) batch throughput at equal K/V memory: vanilla gets the memory of N full-length sequences, keepkv the same
//     memory at a 10% budget (as many sequences as fit), all sequences run concurrently to the same length;
// (c) prefill tokens/s with and without compression;
// (d) time spent compressing, per event and per generated token;
// (e) the patches' own overhead: the patched build (off, and keepkv without a budget) against the same sources
//     built here without the patches (vanilla-local), in alternating pairs.
// Every figure is the median of repeated runs, and configurations alternate within each repeat, so that
// every ratio is measured in the same run on a shared, noisy machine. Tokens are fed from the corpus
// (teacher-forced) rather than sampled: the work per token is the same, and the vanilla binary can run it.
import * as fs from "node:fs";
import * as path from "node:path";
import type { Llama, LlamaContext, LlamaModel, Token } from "node-llama-cpp";
import { createKeepKvContext, KeepKvOptions, keepKvContextStats, type KeepKvSelection } from "../server/engine/keepkv.js";
import { loadPatchedLlama, loadVanillaLlama, loadVanillaLocalLlama } from "../server/engine/llama-loader.js";
import { claimSequence, decodeRaw } from "../server/engine/native-context.js";
import { parseArgs } from "./lib/args.js";
import { resolveCorpus, resolveModel } from "./lib/inputs.js";
import { lineChartSvg, machineInfo, markdownTable, median, progress, resultsDir, svgToPng, textTable } from "./lib/report.js";
import { errorMessage } from "../lib/error-message.js";

/** One decode with several sequences: each gets `tokens` from `pos`, with the logits of its last token. */
async function decode(context: LlamaContext, items: { seq: number, pos: number, tokens: Token[] }[]): Promise<void> {
    await decodeRaw(context, items, false);
}

/** Prefills `count` tokens into each sequence, `chunk` per decode (one sequence at a time); returns seconds. */
async function prefill(context: LlamaContext, seqs: number[], text: Token[], count: number, chunk: number): Promise<number> {
    const t0 = performance.now();
    for (const seq of seqs)
        for (let start = 0; start < count; start += chunk) {
            const n = Math.min(chunk, count - start);
            await decode(context, [{ seq, pos: start, tokens: text.slice(start + seq * 7, start + seq * 7 + n) }]);
        }
    return (performance.now() - t0) / 1000;
}

/** Decodes `steps` tokens per sequence, one at a time, all sequences in each batch; returns seconds. */
async function decodeSteps(context: LlamaContext, seqs: number[], text: Token[], from: number, steps: number): Promise<number> {
    const t0 = performance.now();
    for (let i = 0; i < steps; i++)
        await decode(context, seqs.map((seq) => ({ seq, pos: from + i, tokens: [text[(from + i + seq * 7) % text.length]!] })));
    return (performance.now() - t0) / 1000;
}

// vanilla: node-llama-cpp's prebuilt binary; local: the same sources without our patches, built here like the
// patched build (same compiler, flags and ggml): off against local is the patches' own overhead
type Engine = "vanilla" | "local" | "patched";
type Setup = { name: string, engine: Engine, policy: "off" | "keepkv", budget: number | null, selection?: KeepKvSelection };

export type SpeedRow = {
    experiment: string, policy: string, budget: number | null, contextTokens: number, sequences: number,
    tokensPerSecond: number, ratioToVanilla: number | null, ratioToLocalVanilla: number | null,
    /** overhead experiment: the quartiles of the paired ratios to vanilla-local */
    ratioQuartiles?: [number, number],
    kvBytes?: number, compressionShare?: number, msPerCompression?: number, msCompressionPerToken?: number
};

async function main(): Promise<void> {
    const args = parseArgs(process.argv.slice(2), {
        json: { type: "boolean", default: false },
        model: { type: "string", default: "stories3m" },
        corpus: { type: "string", default: "tinystories" },
        contexts: { type: "list", default: "1024,4096,8192" },
        repeats: { type: "number", default: 3 },
        threads: { type: "number", default: 1 },
        // 0: twice the budget, so that every measurement spans about eight compressions (one per budget/4
        // tokens); a window shorter than a few of them measures where the compressions happen to fall
        "decode-tokens": { type: "number", default: 0 },
        budget: { type: "number", default: 0.1 },
        // cells removed per automatic compression, as a fraction of the budget (0: the default, budget/4)
        chunk: { type: "number", default: 0 },
        experiments: { type: "list", default: "decode,batch,prefill,overhead" },
        "batch-context": { type: "number", default: 1024 },
        "batch-full-sequences": { type: "number", default: 2 },
        "prefill-tokens": { type: "number", default: 4096 },
        "overhead-pairs": { type: "number", default: 15 },
        out: { type: "string", default: "speed" }
    });
    const modelPath = resolveModel(String(args.model));
    const text = fs.readFileSync(resolveCorpus(String(args.corpus)), "utf8");
    const threads = Number(args.threads);
    const budgetFraction = Number(args.budget);
    const repeats = Number(args.repeats);
    const chunkFraction = Number(args.chunk);
    if (!(chunkFraction >= 0 && chunkFraction <= 1))
        throw new Error(`--chunk must be a fraction of the budget in [0, 1], got ${args.chunk}`);
    const experiments = new Set(String(args.experiments).split(","));
    for (const e of experiments)
        if (!["decode", "batch", "prefill", "overhead"].includes(e))
            throw new Error(`unknown experiment "${e}" (decode, batch, prefill, overhead)`);

    const llamas: Record<Engine, Llama> = { vanilla: await loadVanillaLlama(), local: await loadVanillaLocalLlama(), patched: await loadPatchedLlama() };
    const models: Record<Engine, LlamaModel> = {
        vanilla: await llamas.vanilla.loadModel({ modelPath }),
        local: await llamas.local.loadModel({ modelPath }),
        patched: await llamas.patched.loadModel({ modelPath })
    };
    const corpusTokens = models.patched.tokenize(text.slice(0, 400_000));

    const setups: Setup[] = [
        { name: "vanilla", engine: "vanilla", policy: "off", budget: null },
        { name: "vanilla-local", engine: "local", policy: "off", budget: null },
        { name: "off", engine: "patched", policy: "off", budget: null },
        { name: "keepkv", engine: "patched", policy: "keepkv", budget: budgetFraction }
    ];

    async function makeContext(s: Setup, contextSize: number, sequences: number, batchSize: number, budgetCells: number | null): Promise<LlamaContext> {
        const options = { contextSize, sequences, batchSize, threads, flashAttention: false, ignoreMemorySafetyChecks: true };
        if (s.engine !== "patched")
            return await models[s.engine].createContext(options);
        const chunk = chunkFraction > 0 && budgetCells != null ? Math.max(1, Math.round(chunkFraction * budgetCells)) : undefined;
        const keepKv: KeepKvOptions = s.policy === "off" ? { policy: "off" } : { policy: "keepkv", budget: budgetCells, recent: 32, ...(chunk != null ? { chunk } : {}), ...(s.selection != null ? { selection: s.selection } : {}) };
        return await createKeepKvContext(models.patched, { ...options, keepKv });
    }

    const rows: SpeedRow[] = [];
    const decodeTokensFor = (L: number) => Number(args["decode-tokens"]) > 0
        ? Number(args["decode-tokens"])
        : Math.max(64, Math.round(2 * budgetFraction * L));

    // (a) decode speed at long logical contexts
    for (const L of experiments.has("decode") ? String(args.contexts).split(",").map(Number) : []) {
        const samples = new Map<string, number[]>();
        const extra = new Map<string, { share: number[], perEvent: number[], perToken: number[], kvBytes: number }>();
        for (let r = 0; r < repeats; r++) {
            for (const s of setups) {
                progress(`(a) decode at ${L} tokens: ${s.name}, repeat ${r + 1}/${repeats}`);
                const budgetCells = s.budget != null ? Math.floor(s.budget * L) : null;
                const batch = budgetCells != null ? Math.min(512, budgetCells) : 512;
                const decodeTokens = decodeTokensFor(L);
                const context = await makeContext(s, L + decodeTokens + 16, 1, batch, budgetCells);
                const sequence = s.policy === "keepkv" ? claimSequence(context) : null;
                await prefill(context, [0], corpusTokens, L - decodeTokens, batch);
                const before = sequence != null ? await keepKvContextStats(context, [sequence]) : null;
                const seconds = await decodeSteps(context, [0], corpusTokens, L - decodeTokens, decodeTokens);
                samples.set(s.name, [...(samples.get(s.name) ?? []), decodeTokens / seconds]);
                if (sequence != null && before != null) {
                    const after = await keepKvContextStats(context, [sequence]);
                    const cs = after.compressionSeconds - before.compressionSeconds;
                    const events = after.compressions - before.compressions;
                    const e = extra.get(s.name) ?? { share: [], perEvent: [], perToken: [], kvBytes: after.kvBytesAllocated };
                    e.share.push(cs / seconds);
                    e.perEvent.push(events > 0 ? 1000 * cs / events : 0);
                    e.perToken.push(1000 * cs / decodeTokens);
                    extra.set(s.name, e);
                }
                await context.dispose();
            }
        }
        const vanilla = median(samples.get("vanilla")!);
        const local = median(samples.get("vanilla-local")!);
        for (const s of setups) {
            const tps = median(samples.get(s.name)!);
            rows.push({
                experiment: "decode", policy: s.name, budget: s.budget, contextTokens: L, sequences: 1,
                tokensPerSecond: tps, ratioToVanilla: tps / vanilla, ratioToLocalVanilla: tps / local,
                ...(extra.has(s.name) ? {
                    kvBytes: extra.get(s.name)!.kvBytes, compressionShare: median(extra.get(s.name)!.share),
                    msPerCompression: median(extra.get(s.name)!.perEvent), msCompressionPerToken: median(extra.get(s.name)!.perToken)
                } : {})
            });
        }
    }

    // (b) batch throughput at equal K/V memory
    if (experiments.has("batch")) {
        const L = Number(args["batch-context"]);
        const nFull = Number(args["batch-full-sequences"]);
        const budgetCells = Math.floor(budgetFraction * L);
        // the same K/V memory: a keepkv stream holds exactly its budget
        const nKeep = Math.floor(nFull * L / budgetCells);
        const batchRoom = Math.max(nKeep, 64);
        const prompt = 32;
        const steps = L - prompt - 8;
        const plan: { s: Setup, sequences: number }[] = setups.map((s) => ({ s, sequences: s.policy === "keepkv" ? nKeep : nFull }));
        const samples = new Map<string, number[]>();
        const comp = new Map<string, { seconds: number[], events: number[], kvBytes: number }>();
        for (let r = 0; r < repeats; r++) {
            for (const { s, sequences } of plan) {
                progress(`(b) batch throughput, ${sequences} sequences of ${L} tokens: ${s.name}, repeat ${r + 1}/${repeats}`);
                const context = await makeContext(s, L, sequences, batchRoom, s.policy === "keepkv" ? budgetCells : null);
                const seqIds = Array.from({ length: sequences }, (_, i) => i);
                const handles = s.engine !== "vanilla" ? seqIds.map(() => claimSequence(context)) : [];
                await prefill(context, seqIds, corpusTokens, prompt, prompt);
                const seconds = await decodeSteps(context, seqIds, corpusTokens, prompt, steps);
                samples.set(s.name, [...(samples.get(s.name) ?? []), sequences * steps / seconds]);
                if (s.policy === "keepkv") {
                    const stats = await keepKvContextStats(context, handles);
                    const c = comp.get(s.name) ?? { seconds: [], events: [], kvBytes: stats.kvBytesAllocated };
                    c.seconds.push(stats.compressionSeconds / seconds);
                    c.events.push(stats.compressions > 0 ? 1000 * stats.compressionSeconds / stats.compressions : 0);
                    comp.set(s.name, c);
                }
                await context.dispose();
            }
        }
        const vanilla = median(samples.get("vanilla")!);
        const local = median(samples.get("vanilla-local")!);
        for (const { s, sequences } of plan) {
            const tps = median(samples.get(s.name)!);
            const c = comp.get(s.name);
            rows.push({
                experiment: "batch", policy: s.name, budget: s.budget, contextTokens: L, sequences,
                tokensPerSecond: tps, ratioToVanilla: tps / vanilla, ratioToLocalVanilla: tps / local,
                ...(c != null ? { kvBytes: c.kvBytes, compressionShare: median(c.seconds), msPerCompression: median(c.events) } : {})
            });
        }
    }

    // (c) prefill with and without compression, (d) compression cost during decode at a long context
    if (experiments.has("prefill")) {
        const P = Number(args["prefill-tokens"]);
        const samples = new Map<string, number[]>();
        const decodeShare: number[] = [];
        const perEvent: number[] = [];
        const perToken: number[] = [];
        for (let r = 0; r < repeats; r++) {
            for (const s of setups) {
                progress(`(c) prefill of ${P} tokens: ${s.name}, repeat ${r + 1}/${repeats}`);
                const budgetCells = s.budget != null ? Math.floor(s.budget * P) : null;
                const batch = budgetCells != null ? Math.min(512, budgetCells) : 512;
                const decodeTokens = decodeTokensFor(P);
                const context = await makeContext(s, P + decodeTokens + 16, 1, batch, budgetCells);
                const seconds = await prefill(context, [0], corpusTokens, P, batch);
                samples.set(s.name, [...(samples.get(s.name) ?? []), P / seconds]);
                if (s.policy === "keepkv") {
                    const sequence = claimSequence(context);
                    const before = await keepKvContextStats(context, [sequence]);
                    const dt = await decodeSteps(context, [0], corpusTokens, P, decodeTokens);
                    const after = await keepKvContextStats(context, [sequence]);
                    const cs = after.compressionSeconds - before.compressionSeconds;
                    const events = after.compressions - before.compressions;
                    decodeShare.push(cs / dt);
                    perEvent.push(events > 0 ? 1000 * cs / events : 0);
                    perToken.push(1000 * cs / decodeTokens);
                }
                await context.dispose();
            }
        }
        const vanilla = median(samples.get("vanilla")!);
        const local = median(samples.get("vanilla-local")!);
        for (const s of setups) {
            const tps = median(samples.get(s.name)!);
            rows.push({
                experiment: "prefill", policy: s.name, budget: s.budget, contextTokens: P, sequences: 1,
                tokensPerSecond: tps, ratioToVanilla: tps / vanilla, ratioToLocalVanilla: tps / local,
                ...(s.policy === "keepkv" ? {
                    compressionShare: median(decodeShare), msPerCompression: median(perEvent), msCompressionPerToken: median(perToken)
                } : {})
            });
        }
    }

    // (e) the patches' own overhead: short decodes of the patched build (off, and keepkv with no budget: the vote
    // bias and the score tracking, never a compression) right after the unpatched local build, many times; the
    // median of the paired ratios, since this machine's speed drifts more between runs than the effect is large
    if (experiments.has("overhead")) {
        const L = 1024;
        const steps = 256;
        const pairs = Number(args["overhead-pairs"]);
        const overheadSetups: Setup[] = [
            setups.find((s) => s.name === "vanilla-local")!,
            setups.find((s) => s.name === "off")!,
            { name: "keepkv (no budget)", engine: "patched", policy: "keepkv", budget: null },
            // oldest-first selection tracks no attention scores: what is left is the vote bias and the query update
            { name: "keepkv recency (no budget)", engine: "patched", policy: "keepkv", budget: null, selection: "recency" }
        ];
        const tps = new Map<string, number[]>();
        const ratios = new Map<string, number[]>();
        for (let r = 0; r < pairs; r++) {
            progress(`(e) overhead at ${L} tokens, pair ${r + 1}/${pairs}`);
            let base = 0;
            for (const s of overheadSetups) {
                const context = await makeContext(s, L + 16, 1, 512, null);
                if (s.policy === "keepkv")
                    claimSequence(context);
                await prefill(context, [0], corpusTokens, L - steps, 512);
                const v = steps / await decodeSteps(context, [0], corpusTokens, L - steps, steps);
                await context.dispose();
                tps.set(s.name, [...(tps.get(s.name) ?? []), v]);
                if (s.engine === "local")
                    base = v;
                else
                    ratios.set(s.name, [...(ratios.get(s.name) ?? []), v / base]);
            }
        }
        const quartile = (values: number[], q: number) => {
            const v = [...values].sort((a, b) => a - b);
            return v[Math.min(v.length - 1, Math.round(q * (v.length - 1)))]!;
        };
        const vanillaLocal = median(tps.get("vanilla-local")!);
        for (const s of overheadSetups) {
            const r = ratios.get(s.name);
            rows.push({
                experiment: "overhead", policy: s.name, budget: null, contextTokens: L, sequences: 1,
                tokensPerSecond: median(tps.get(s.name)!), ratioToVanilla: null,
                ratioToLocalVanilla: r != null ? median(r) : median(tps.get(s.name)!) / vanillaLocal,
                ...(r != null ? { ratioQuartiles: [quartile(r, 0.25), quartile(r, 0.75)] as [number, number] } : {})
            });
        }
    }

    const out = {
        machine: machineInfo(),
        model: path.basename(modelPath),
        threads,
        repeats,
        note: `Model ${path.basename(modelPath)}; contexts past the length it was trained on measure speed only. Tokens are fed from the corpus. Ratios are against node-llama-cpp's vanilla prebuilt binary and against vanilla-local (the same sources without the KeepKV patches, built here with the same compiler and flags), measured in the same run; figures are medians of ${repeats} runs. keepkv: budget ${budgetFraction} of the context, recent 32, chunk ${chunkFraction > 0 ? chunkFraction + " of the budget" : "budget/4"}.`,
        rows
    };

    const pct = (v: number | undefined) => v == null ? "" : (100 * v).toFixed(1) + "%";
    const columns = [
        { title: "experiment", value: (r: SpeedRow) => r.experiment },
        { title: "setup", value: (r: SpeedRow) => r.policy + (r.budget != null ? ` ${r.budget}` : "") },
        { title: "context", value: (r: SpeedRow) => String(r.contextTokens) },
        { title: "sequences", value: (r: SpeedRow) => String(r.sequences) },
        { title: "tokens/s", value: (r: SpeedRow) => r.tokensPerSecond.toFixed(1) },
        { title: "vs vanilla", value: (r: SpeedRow) => r.ratioToVanilla == null ? "" : r.ratioToVanilla.toFixed(2) + "x" },
        { title: "vs vanilla-local", value: (r: SpeedRow) => r.ratioToLocalVanilla == null ? "" : r.ratioToLocalVanilla.toFixed(3) + "x" + (r.ratioQuartiles != null ? ` (${r.ratioQuartiles.map((q) => q.toFixed(3)).join("-")})` : "") },
        { title: "compression share", value: (r: SpeedRow) => pct(r.compressionShare) },
        { title: "ms per compression", value: (r: SpeedRow) => r.msPerCompression?.toFixed(2) ?? "" },
        { title: "compression ms per token", value: (r: SpeedRow) => r.msCompressionPerToken?.toFixed(3) ?? "" }
    ];
    const dir = resultsDir(String(args.out));
    fs.writeFileSync(path.join(dir, "speed.json"), JSON.stringify(out, null, 2) + "\n");
    fs.writeFileSync(path.join(dir, "speed.md"), `${out.note}\n\n${out.machine.cpu}, ${out.machine.cores} cores, ${threads} thread(s).\n\n` + markdownTable(rows, columns));
    const svg = lineChartSvg({
        title: `Decode speed against logical context (${out.model})`, xLabel: "logical context (tokens)", yLabel: "tokens/s",
        series: setups.map((s) => ({ name: s.name, points: rows.filter((r) => r.experiment === "decode" && r.policy === s.name).map((r) => ({ x: r.contextTokens, y: r.tokensPerSecond })) }))
    });
    fs.writeFileSync(path.join(dir, "speed.svg"), svg);
    await svgToPng(svg, path.join(dir, "speed.png"));

    if (args.json)
        process.stdout.write(JSON.stringify(out) + "\n");
    else
        process.stdout.write(textTable(rows, columns) + `\n${out.note}\nwritten: ${dir}/speed.{json,md,svg,png}\n`);

    for (const e of ["vanilla", "local", "patched"] as const) {
        await models[e].dispose();
        await llamas[e].dispose();
    }
}

main().catch((err: unknown) => {
    process.stderr.write(`bench:speed: ${errorMessage(err)}\n`);
    process.exit(1);
});
