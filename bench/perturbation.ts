// npm run bench:perturbation -- [--json] [--model PATH] [--mha] [--flash-attention on|off]
//                               [--cache-type f16|q8_0|q4_0] [--cache-type-k T] [--cache-type-v T]
//                               [--threshold T] [--tokens N] [--remove FRACTION]
//                               [--suite] [--threads N]
//
// Evaluates a prompt from the corpus, records the logits of its last token, removes the same cells with
// every policy, recomputes the last token on the compressed cache and prints how far its logits moved, beside
// the floor: the same recomputation with nothing removed.
// --mha runs on a multi-head copy of the model (every KV head repeated per query head: the same function,
// but one query per KV head, the case ZIP merging is exact for).
// --suite runs the configurations the README reports (both models, the MHA copy, both attention paths, f16
// and q8_0 caches) and writes them to results/perturbation/.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Llama } from "node-llama-cpp";
import { loadPatchedLlama } from "../server/engine/llama-loader.js";
import { testModelPath, requireFile, sharedDir } from "../lib/model-paths.js";
import { makeMhaCopy } from "../scripts/lib/gguf-mha.js";
import { parseArgs } from "./lib/args.js";
import { resolveCorpus, resolveModel } from "./lib/inputs.js";
import { groupedBarChartSvg, machineInfo, markdownTable, progress, resultsDir, svgToPng } from "./lib/report.js";
import { CacheType, measurePerturbation, PerturbationMeasurement, promptTokens } from "./lib/perturbation.js";
import { errorMessage } from "../lib/error-message.js";

type Config = {
    model: string, mha: boolean, flashAttention: boolean, cacheType: CacheType, cacheTypeK?: CacheType, cacheTypeV?: CacheType,
    threshold: number
};
type ConfigResult = Config & { label: string, promptTokens: number, floor: PerturbationMeasurement["floor"], rows: PerturbationMeasurement["results"] };

async function runConfig(llama: Llama, c: Config, text: string, tokenCount: number, remove: number, threads: number): Promise<ConfigResult> {
    let loadPath = c.model;
    let tmp: string | null = null;
    if (c.mha) {
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-mha-"));
        loadPath = path.join(tmp, path.basename(c.model, ".gguf") + "-mha.gguf");
        makeMhaCopy(c.model, loadPath);
    }
    const model = await llama.loadModel({ modelPath: loadPath });
    try {
        const tokens = promptTokens(model, text, tokenCount);
        const m = await measurePerturbation({
            model, tokens, removeFraction: remove, flashAttention: c.flashAttention, cacheType: c.cacheType,
            cacheTypeK: c.cacheTypeK, cacheTypeV: c.cacheTypeV, threshold: c.threshold, ...(threads > 0 ? { threads } : {})
        });
        const label = `${path.basename(c.model, ".gguf")}${c.mha ? " (MHA copy)" : ""}, flash attention ${c.flashAttention ? "on" : "off"}, ` +
            `${cacheLabel(c)} cache, T ${c.threshold}`;
        return { ...c, label, promptTokens: tokens.length, floor: m.floor, rows: m.results };
    } finally {
        await model.dispose();
        if (tmp != null)
            fs.rmSync(tmp, { recursive: true, force: true });
    }
}

function cacheLabel(c: Config): string {
    const k = c.cacheTypeK ?? c.cacheType;
    const v = c.cacheTypeV ?? c.cacheType;
    return k === v ? k : `K ${k} / V ${v}`;
}

function printConfig(r: ConfigResult): void {
    process.stdout.write(`${r.label}, ${r.promptTokens} prompt tokens\n`);
    process.stdout.write("policy        variant  removed  max|dlogit|   KL           merges  evictions\n");
    process.stdout.write(`${"(floor)".padEnd(13)} ${"-".padEnd(8)} ${"0".padStart(7)}  ${r.floor.maxAbsLogitDiff.toExponential(3).padEnd(12)} ${r.floor.klDivergence.toExponential(3).padEnd(12)}\n`);
    for (const x of r.rows)
        process.stdout.write(`${x.policy.padEnd(13)} ${(x.variant ?? "-").padEnd(8)} ${String(x.cellsRemoved).padStart(7)}  ${x.maxAbsLogitDiff.toExponential(3).padEnd(12)} ${x.klDivergence.toExponential(3).padEnd(12)} ${x.merges.toFixed(1).padStart(6)}  ${x.evictions.toFixed(1).padStart(9)}\n`);
}

// a label short enough to stand under a bar group
function shortLabel(r: ConfigResult): string {
    const model = path.basename(r.model, ".gguf").replace(/^stories3M-/, "").replace(/^SmolLM2-135M-Instruct\./, "SmolLM2 ");
    return `${r.mha ? "MHA copy" : "GQA"} ${model}, FA ${r.flashAttention ? "on" : "off"}, ${cacheLabel(r)}${r.threshold !== 1e-6 ? `, T ${r.threshold}` : ""}`;
}

function suiteChartSvg(results: ConfigResult[]): string {
    const cases = results[0]!.rows.map((r) => (r.variant != null ? `${r.policy}/${r.variant}` : r.policy));
    return groupedBarChartSvg({
        title: "KL divergence of the next-token distribution after removing 25% of the cells",
        yLabel: "KL divergence (log scale)",
        categories: results.map(shortLabel),
        series: [
            { name: "floor", values: results.map((r) => r.floor.klDivergence) },
            ...cases.map((name, i) => ({ name, values: results.map((r) => r.rows[i]!.klDivergence) }))
        ]
    });
}

function suiteMarkdown(results: ConfigResult[], key: "maxAbsLogitDiff" | "klDivergence"): string {
    const cases = results[0]!.rows.map((r) => (r.variant != null ? `${r.policy}/${r.variant}` : r.policy));
    const fmt = (v: number) => (v === 0 ? "0" : v.toExponential(2));
    return markdownTable(results, [
        { title: "configuration", value: (r) => r.label },
        { title: "floor", value: (r) => fmt(r.floor[key]) },
        ...cases.map((name, i) => ({ title: name, value: (r: ConfigResult) => fmt(r.rows[i]![key]) }))
    ]);
}

async function main(): Promise<void> {
    const args = parseArgs(process.argv.slice(2), {
        json: { type: "boolean", default: false },
        model: { type: "string", default: "stories3m" },
        mha: { type: "boolean", default: false },
        corpus: { type: "string", default: "tinystories" },
        "flash-attention": { type: "enum", values: ["on", "off"], default: "off" },
        "cache-type": { type: "enum", values: ["f16", "q8_0", "q4_0"], default: "f16" },
        "cache-type-k": { type: "enum", values: ["f16", "q8_0", "q4_0"], default: "" },
        "cache-type-v": { type: "enum", values: ["f16", "q8_0", "q4_0"], default: "" },
        threshold: { type: "number", default: 0.8 },
        tokens: { type: "number", default: 300 },
        remove: { type: "number", default: 0.25 },
        suite: { type: "boolean", default: false },
        // 0: node-llama-cpp's default (all cores)
        threads: { type: "number", default: 0 }
    });
    const text = fs.readFileSync(resolveCorpus(String(args.corpus)), "utf8");
    const tokenCount = Number(args.tokens);
    const remove = Number(args.remove);

    let configs: Config[];
    if (args.suite) {
        const q8 = requireFile(testModelPath(), "model", "KEEPKV_TEST_MODEL");
        const f16 = requireFile(path.join(sharedDir, "models", "stories3M-f16.gguf"), "model", "KEEPKV_SHARED_DIR");
        const smol = resolveModel("smollm2-f16");
        configs = [
            { model: q8, mha: true, flashAttention: false, cacheType: "f16", threshold: 1e-6 },
            { model: q8, mha: true, flashAttention: true, cacheType: "f16", threshold: 1e-6 },
            { model: f16, mha: false, flashAttention: false, cacheType: "f16", threshold: 1e-6 },
            { model: f16, mha: false, flashAttention: true, cacheType: "f16", threshold: 1e-6 },
            { model: f16, mha: false, flashAttention: true, cacheType: "q8_0", threshold: 1e-6 },
            { model: q8, mha: false, flashAttention: false, cacheType: "f16", threshold: 1e-6 },
            { model: f16, mha: false, flashAttention: false, cacheType: "f16", threshold: 0.8 },
            // the real chat model, in F16 (its Q4_1 matrix products would round every change to 8-bit steps)
            { model: smol, mha: true, flashAttention: false, cacheType: "f16", threshold: 1e-6 },
            { model: smol, mha: false, flashAttention: false, cacheType: "f16", threshold: 1e-6 },
            { model: smol, mha: false, flashAttention: true, cacheType: "f16", threshold: 1e-6 },
            { model: smol, mha: false, flashAttention: false, cacheType: "f16", threshold: 0.8 }
        ];
    } else {
        configs = [{
            model: resolveModel(String(args.model)), mha: Boolean(args.mha),
            flashAttention: args["flash-attention"] === "on", cacheType: args["cache-type"] as CacheType,
            cacheTypeK: (args["cache-type-k"] || undefined) as CacheType | undefined,
            cacheTypeV: (args["cache-type-v"] || undefined) as CacheType | undefined,
            threshold: Number(args.threshold)
        }];
    }

    const llama = await loadPatchedLlama();
    const results: ConfigResult[] = [];
    for (const [i, c] of configs.entries()) {
        if (configs.length > 1)
            progress(`${i + 1}/${configs.length} ${path.basename(c.model)}${c.mha ? " MHA" : ""} fa=${c.flashAttention} ${c.cacheType} T=${c.threshold}`);
        results.push(await runConfig(llama, c, text, tokenCount, remove, Number(args.threads)));
    }
    await llama.dispose();

    // one configuration: its rows (and, as the core issue named them, the same rows as "results")
    const single = results.length === 1 ? results[0]! : null;
    const out = single != null
        ? {
            machine: machineInfo(), model: single.model, mha: single.mha, cacheType: single.cacheType,
            cacheTypeK: single.cacheTypeK ?? single.cacheType, cacheTypeV: single.cacheTypeV ?? single.cacheType,
            flashAttention: single.flashAttention, threshold: single.threshold, promptTokens: single.promptTokens,
            floor: single.floor, rows: single.rows, results: single.rows
        }
        : { machine: machineInfo(), model: "stories3M (q8_0, f16, MHA copy), SmolLM2-135M-Instruct (F16, MHA copy)", removeFraction: remove, configurations: results, rows: results.flatMap((r) => r.rows.map((x) => ({ configuration: r.label, ...x }))) };

    if (args.suite) {
        const dir = resultsDir("perturbation");
        fs.writeFileSync(path.join(dir, "perturbation.json"), JSON.stringify(out, null, 2) + "\n");
        fs.writeFileSync(path.join(dir, "perturbation.md"),
            `Generated by \`npm run bench:perturbation -- --suite\` (${out.machine.cpu}, ${out.machine.cores} cores, ${out.machine.date.slice(0, 10)}). ` +
            `${tokenCount} prompt tokens, ${Math.round(remove * 100)}% of the cells removed (the same cells for every policy), then the last ` +
            "token recomputed. The floor is the recomputation with nothing removed.\n\n" +
            "Largest change of a logit:\n\n" + suiteMarkdown(results, "maxAbsLogitDiff") +
            "\nKL divergence of the next-token distribution:\n\n" + suiteMarkdown(results, "klDivergence") +
            "\n![KL divergence per configuration and policy](perturbation.png)\n");
        const svg = suiteChartSvg(results);
        fs.writeFileSync(path.join(dir, "perturbation.svg"), svg);
        await svgToPng(svg, path.join(dir, "perturbation.png"));
        progress(`wrote ${path.join(dir, "perturbation.md")}`);
    }

    if (args.json)
        process.stdout.write(JSON.stringify(out) + "\n");
    else
        for (const r of results) {
            printConfig(r);
            process.stdout.write("\n");
        }
}

main().catch((err: unknown) => {
    process.stderr.write(`bench:perturbation: ${errorMessage(err)}\n`);
    process.exit(1);
});
