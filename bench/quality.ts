// npm run bench:quality -- [--json] [--model PATH|smollm2|stories3m] [--corpus PATH|kjv|tinystories] [--context 512]
//                           [--budgets 0.1,0.2,0.5] [--windows 8] [--chunk 16] [--prompts 8] [--prompt-tokens 64]
//                           [--generate 128] [--configs all|compact|budgets] [--only LABEL,...] [--keepkv JSON]
//                           [--recent 16] [--spread] [--out quality]
//
// Perplexity of held-out text, evaluated in windows of the logical context with the cache compressing as it
// goes (a streaming evaluation: the window is decoded `chunk` tokens at a time, so a budget forces many
// compressions per window), for the full cache, every policy at every budget, llama.cpp's own KV quantization
// (q8_0, q4_0, full cache) at its equal-memory budget, and keepkv with a q8_0 cache. Also the greedy agreement
// with the full cache: over N prompts from the corpus, the fraction of the first `generate` tokens identical
// to what the full cache generates. Long prompts (--prompt-tokens beyond the budget) make the greedy agreement
// measure generation from a compressed cache. --configs compact keeps one row per policy and selection
// (the 8k runs); budgets runs only the full cache and keepkv with the server's settings (for choosing its default budget). --only
// keeps the full cache (the greedy reference) and the rows of those labels (as the progress lines name them, e.g.
// "keepkv/key 0.1"); --keepkv '{"protect":0}' adds KeepKV options to every compressing row. --out names the folder under results/.
import * as fs from "node:fs";
import * as path from "node:path";
import type { LlamaModel, Token } from "node-llama-cpp";
import {
    createKeepKvContext, KeepKvOptions, keepKvContextStats, KeepKvPolicy, KeepKvSelection, KeepKvVariant
} from "../server/engine/keepkv.js";
import { loadPatchedLlama } from "../server/engine/llama-loader.js";
import { claimSequence } from "../server/engine/native-context.js";
import { parseArgs } from "./lib/args.js";
import { resolveCorpus, resolveModel } from "./lib/inputs.js";
import { lineChartSvg, machineInfo, markdownTable, progress, resultsDir, svgToPng, textTable } from "./lib/report.js";
import { greedyGenerate, streamingNll } from "./lib/scoring.js";
import { errorMessage } from "../lib/error-message.js";

type CacheType = "f16" | "q8_0" | "q4_0";
const ggmlTypeName: Record<CacheType, "F16" | "Q8_0" | "Q4_0"> = { f16: "F16", q8_0: "Q8_0", q4_0: "Q4_0" };
// bytes per value: q8_0 stores 32 values in 34 bytes, q4_0 in 18
const bytesPerValue: Record<CacheType, number> = { f16: 2, q8_0: 34 / 32, q4_0: 18 / 32 };

type Config = {
    policy: KeepKvPolicy, variant: KeepKvVariant | null, selection: KeepKvSelection, budget: number | null, cacheType: CacheType, label: string
};

export type QualityRow = {
    policy: string, variant: string | null, selection: string, budget: number, cacheType: CacheType,
    perplexity: number, greedyAgreement: number, kvBytes: number, kvFraction: number,
    compressions: number, merges: number, evictions: number, seconds: number
};

async function main(): Promise<void> {
    const args = parseArgs(process.argv.slice(2), {
        json: { type: "boolean", default: false },
        model: { type: "string", default: "stories3m" },
        corpus: { type: "string", default: "tinystories" },
        context: { type: "number", default: 512 },
        budgets: { type: "list", default: "0.1,0.2,0.5" },
        windows: { type: "number", default: 8 },
        chunk: { type: "number", default: 16 },
        prompts: { type: "number", default: 8 },
        "prompt-tokens": { type: "number", default: 64 },
        generate: { type: "number", default: 128 },
        threads: { type: "number", default: 1 },
        configs: { type: "enum", values: ["all", "compact", "budgets"], default: "all" },
        only: { type: "string", default: "" },
        keepkv: { type: "string", default: "{}" },
        recent: { type: "number", default: 16 },
        out: { type: "string", default: "quality" },
        spread: { type: "boolean", default: false }
    });
    const modelPath = resolveModel(String(args.model));
    const text = fs.readFileSync(resolveCorpus(String(args.corpus)), "utf8");
    const promptTokens = Number(args["prompt-tokens"]);
    const contextSize = Number(args.context);
    const chunk = Number(args.chunk);
    const budgets = String(args.budgets).split(",").map(Number);
    if (budgets.some((b) => !(b > 0 && b <= 1)))
        throw new Error(`--budgets must be fractions in (0, 1], got ${args.budgets}`);

    const llama = await loadPatchedLlama();
    const model: LlamaModel = await llama.loadModel({ modelPath });

    // evaluation windows: non-overlapping stretches of the corpus, consecutive from its start, or with --spread
    // spaced evenly over it (the King James text: not all from Genesis)
    const windowCount = Number(args.windows);
    const spread = Boolean(args.spread);
    const all = model.tokenize(spread ? text : text.slice(0, windowCount * contextSize * 8));
    const stride = spread ? Math.floor(all.length / windowCount) : contextSize;
    const windows: Token[][] = [];
    for (let i = 0; i + contextSize <= all.length && windows.length < windowCount; i += stride)
        windows.push(all.slice(i, i + contextSize));
    if (windows.length < windowCount)
        throw new Error(`the corpus gives ${windows.length} windows of ${contextSize} tokens, ${args.windows} wanted`);

    // prompts for the greedy agreement: the beginnings of separate stories, or for prompts longer than a
    // story, stretches of the text between the windows
    let prompts: Token[][];
    if (promptTokens <= 64) {
        const stories = text.split(/\n\s*\n|<\|endoftext\|>/).map((s) => s.trim()).filter((s) => model.tokenize(s).length >= promptTokens);
        prompts = stories.slice(0, Number(args.prompts)).map((s) => model.tokenize(s).slice(0, promptTokens));
    } else {
        const step = Math.floor(all.length / Number(args.prompts));
        prompts = Array.from({ length: Number(args.prompts) }, (_, k) => all.slice(k * step + Math.floor(step / 2), k * step + Math.floor(step / 2) + promptTokens));
    }
    if (prompts.length < Number(args.prompts) || prompts.some((p) => p.length < promptTokens))
        throw new Error(`the corpus gives ${prompts.length} prompts of ${promptTokens} tokens, ${args.prompts} wanted`);
    if (promptTokens + Number(args.generate) > contextSize)
        throw new Error(`--prompt-tokens ${promptTokens} plus --generate ${args.generate} do not fit the context ${contextSize}`);

    type Choice = [KeepKvPolicy, KeepKvVariant | null, KeepKvSelection];
    const perBudget: Choice[] = {
        all: [["window", null, "policy"], ["evict", null, "policy"], ["merge-naive", null, "policy"],
            ["keepkv", "paper", "policy"], ["keepkv", "votes", "policy"], ["keepkv", "key", "policy"],
            ["merge-naive", null, "recency"], ["keepkv", "key", "recency"]] as Choice[],
        compact: [["window", null, "policy"], ["evict", null, "policy"], ["merge-naive", null, "policy"], ["keepkv", "key", "policy"],
            ["merge-naive", null, "recency"], ["keepkv", "key", "recency"]] as Choice[],
        budgets: [["keepkv", "key", "recency"]] as Choice[]
    }[String(args.configs) as "all" | "compact" | "budgets"];
    const configs: Config[] = [{ policy: "off", variant: null, selection: "policy", budget: null, cacheType: "f16", label: "full cache f16" }];
    for (const budget of budgets) {
        for (const [policy, variant, selection] of perBudget)
            configs.push({ policy, variant, selection, budget, cacheType: "f16", label: `${policy}${variant ? "/" + variant : ""}${selection === "policy" ? "" : " (" + selection + ")"} ${budget}` });
        if (args.configs === "all")
            configs.push({ policy: "keepkv", variant: "key", selection: "recency", budget, cacheType: "q8_0", label: `keepkv/key (recency)+q8_0 ${budget}` });
    }
    if (args.configs !== "budgets") {
        if (args.configs === "all")
            configs.push({ policy: "off", variant: null, selection: "policy", budget: null, cacheType: "q8_0", label: "full cache q8_0" });
        configs.push({ policy: "off", variant: null, selection: "policy", budget: null, cacheType: "q4_0", label: "full cache q4_0" });
    }

    const only = String(args.only) === "" ? null : String(args.only).split(",");
    if (only != null) {
        const unknown = only.filter((l) => !configs.some((c) => c.label === l));
        if (unknown.length > 0)
            throw new Error(`--only: no row ${unknown.map((l) => JSON.stringify(l)).join(", ")}; rows: ${configs.map((c) => c.label).join(", ")}`);
        configs.splice(0, configs.length, ...configs.filter((c, i) => i === 0 || only.includes(c.label)));
    }
    const extra = JSON.parse(String(args.keepkv)) as KeepKvOptions;

    const bytesFullF16 = (await kvBytesPerCell(model, "f16")) * contextSize;

    let reference: Token[][] | null = null;
    const rows: QualityRow[] = [];
    for (const [i, c] of configs.entries()) {
        progress(`${i + 1}/${configs.length} ${c.label}`);
        const started = Date.now();
        const keepKv: KeepKvOptions = c.policy === "off"
            ? { policy: "off" }
            : { policy: c.policy, variant: c.variant ?? "key", selection: c.selection, budget: Math.floor(c.budget! * contextSize), recent: Number(args.recent), sinks: 4, ...extra };
        const context = await createKeepKvContext(model, {
            contextSize, batchSize: chunk, flashAttention: true, threads: Number(args.threads),
            experimentalKvCacheKeyType: ggmlTypeName[c.cacheType], experimentalKvCacheValueType: ggmlTypeName[c.cacheType],
            keepKv
        });
        const sequence = claimSequence(context);

        let nll = 0;
        let count = 0;
        for (const w of windows) {
            const values = await streamingNll(context, 0, w, chunk);
            nll += values.reduce((a, b) => a + b, 0);
            count += values.length;
        }

        const generated: Token[][] = [];
        for (const p of prompts)
            generated.push(await greedyGenerate(context, 0, p, Number(args.generate), chunk));
        if (reference == null)
            reference = generated;
        let same = 0;
        let total = 0;
        generated.forEach((g, k) => g.forEach((t, j) => {
            same += t === reference![k]![j] ? 1 : 0;
            total++;
        }));

        progress(`  perplexity ${Math.exp(nll / count).toFixed(3)}, ${(100 * same / total).toFixed(1)}% greedy agreement, ${((Date.now() - started) / 1000).toFixed(0)} s`);
        const stats = await keepKvContextStats(context, [sequence]);
        const kvBytes = c.policy === "off" ? (await kvBytesPerCell(model, c.cacheType)) * contextSize : stats.kvBytesAllocated;
        rows.push({
            policy: c.policy === "off" ? (c.cacheType === "f16" ? "off" : `kv-${c.cacheType}`) : c.policy,
            variant: c.variant,
            selection: c.selection === "policy" ? (c.policy === "window" ? "recency" : c.policy === "off" ? "-" : "score") : c.selection,
            budget: c.budget ?? (c.cacheType === "f16" ? 1 : bytesPerValue[c.cacheType] / bytesPerValue.f16),
            cacheType: c.cacheType,
            perplexity: Math.exp(nll / count),
            greedyAgreement: same / total,
            kvBytes,
            kvFraction: kvBytes / bytesFullF16,
            compressions: stats.compressions,
            merges: stats.merges,
            evictions: stats.evictions,
            seconds: (Date.now() - started) / 1000
        });
        await context.dispose();
    }

    const out = {
        machine: machineInfo(),
        model: path.basename(modelPath),
        context: contextSize,
        corpus: path.basename(String(args.corpus)),
        windows: windows.length,
        evaluatedTokens: windows.length * (contextSize - 1),
        chunk,
        recent: Number(args.recent),
        prompts: prompts.length,
        promptTokens,
        generate: Number(args.generate),
        keepKv: extra,
        note: "perplexity of held-out text in windows of the logical context, decoded `chunk` tokens at a time so that the cache compresses as it goes; flash attention on (needed by quantized V); kvBytes = K/V bytes allocated (a budget allocates exactly its cells)",
        rows
    };

    const columns = [
        { title: "policy", value: (r: QualityRow) => r.policy + (r.variant ? `/${r.variant}` : "") },
        { title: "selection", value: (r: QualityRow) => r.selection },
        { title: "cache", value: (r: QualityRow) => r.cacheType },
        { title: "budget", value: (r: QualityRow) => r.budget.toFixed(2) },
        { title: "K/V bytes", value: (r: QualityRow) => `${r.kvBytes} (${(100 * r.kvFraction).toFixed(1)}%)` },
        { title: "perplexity", value: (r: QualityRow) => r.perplexity.toFixed(3) },
        { title: "greedy agreement", value: (r: QualityRow) => (100 * r.greedyAgreement).toFixed(1) + "%" },
        { title: "compressions", value: (r: QualityRow) => String(r.compressions) },
        { title: "merges", value: (r: QualityRow) => r.merges.toFixed(0) },
        { title: "evictions", value: (r: QualityRow) => r.evictions.toFixed(0) }
    ];

    const dir = resultsDir(String(args.out));
    fs.writeFileSync(path.join(dir, "quality.json"), JSON.stringify(out, null, 2) + "\n");
    fs.writeFileSync(path.join(dir, "quality.md"),
        `Model ${out.model}, corpus ${out.corpus}, context ${contextSize}, ${out.evaluatedTokens} evaluated tokens, chunk ${chunk}, recent ${out.recent}; ` +
        `greedy agreement over ${prompts.length} prompts of ${promptTokens} tokens, ${out.generate} generated; ${out.machine.cpu}, ${out.machine.cores} cores` +
        `${Object.keys(extra).length > 0 ? `; KeepKV options of every compressing row: ${JSON.stringify(extra)}` : ""}.\n\n` +
        markdownTable(rows, columns));
    const bySeries = new Map<string, { x: number, y: number }[]>();
    for (const r of rows) {
        const name = r.policy.startsWith("kv-") || r.policy === "off" ? `full cache ${r.cacheType}`
            : `${r.policy}${r.variant ? "/" + r.variant : ""}${r.policy !== "window" && r.selection === "recency" ? " (recency)" : ""}${r.cacheType !== "f16" ? "+" + r.cacheType : ""}`;
        bySeries.set(name, [...(bySeries.get(name) ?? []), { x: Number((100 * r.kvFraction).toFixed(1)), y: r.perplexity }]);
    }
    const svg = lineChartSvg({
        title: `Perplexity against K/V memory (${out.model}, context ${contextSize})`,
        xLabel: "K/V bytes, % of the full f16 cache", yLabel: "perplexity (log scale)", logY: true,
        series: [...bySeries].map(([name, points]) => ({ name, points }))
    });
    fs.writeFileSync(path.join(dir, "quality.svg"), svg);
    await svgToPng(svg, path.join(dir, "quality.png"));

    if (args.json)
        process.stdout.write(JSON.stringify(out) + "\n");
    else
        process.stdout.write(textTable(rows, columns) + `\nwritten: ${dir}/quality.{json,md,svg,png}\n`);

    await model.dispose();
    await llama.dispose();
}

/** K/V bytes of one cell (all layers) for a cache type, read from a real context. */
async function kvBytesPerCell(model: LlamaModel, cacheType: CacheType): Promise<number> {
    const context = await createKeepKvContext(model, {
        contextSize: 256, batchSize: 16, flashAttention: true,
        experimentalKvCacheKeyType: ggmlTypeName[cacheType], experimentalKvCacheValueType: ggmlTypeName[cacheType],
        keepKv: { policy: "keepkv" }
    });
    const stats = await keepKvContextStats(context, []);
    await context.dispose();
    return stats.kvBytesAllocated / stats.capacityCells;
}

main().catch((err: unknown) => {
    process.stderr.write(`bench:quality: ${errorMessage(err)}\n`);
    process.exit(1);
});
