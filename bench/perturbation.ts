// npm run bench:perturbation -- [--json] [--model PATH] [--mha] [--flash-attention on|off]
//                               [--cache-type f16|q8_0|q4_0] [--threshold T] [--tokens N] [--remove FRACTION]
//
// Evaluates a prompt from the corpus, records the logits of its last token, removes the same cells with
// every policy, recomputes the last token on the compressed cache and prints how far its logits moved.
// --mha runs on a multi-head copy of the model (every KV head repeated per query head: the same function,
// but one query per KV head, the case ZIP merging is exact for).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { loadPatchedLlama } from "../server/engine/llama-loader.js";
import { corpusPath, defaultModelPath, requireFile } from "../server/engine/model-paths.js";
import { makeMhaCopy } from "../scripts/lib/gguf-mha.js";
import { parseArgs } from "./lib/args.js";
import { CacheType, measurePerturbation, promptTokens } from "./lib/perturbation.js";

async function main(): Promise<void> {
    const args = parseArgs(process.argv.slice(2), {
        json: { type: "boolean", default: false },
        model: { type: "string", default: defaultModelPath() },
        mha: { type: "boolean", default: false },
        corpus: { type: "string", default: corpusPath() },
        "flash-attention": { type: "enum", values: ["on", "off"], default: "off" },
        "cache-type": { type: "enum", values: ["f16", "q8_0", "q4_0"], default: "f16" },
        threshold: { type: "number", default: 0.8 },
        tokens: { type: "number", default: 300 },
        remove: { type: "number", default: 0.25 }
    });
    const modelPath = requireFile(String(args.model), "model", "--model or KEEPKV_MODEL");
    const text = fs.readFileSync(requireFile(String(args.corpus), "corpus", "--corpus or KEEPKV_CORPUS"), "utf8");

    let loadPath = modelPath;
    let tmp: string | null = null;
    if (args.mha) {
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-mha-"));
        loadPath = path.join(tmp, path.basename(modelPath, ".gguf") + "-mha.gguf");
        makeMhaCopy(modelPath, loadPath);
    }

    const llama = await loadPatchedLlama();
    const model = await llama.loadModel({ modelPath: loadPath });
    const tokens = promptTokens(model, text, Number(args.tokens));
    const { results } = await measurePerturbation({
        model, tokens,
        removeFraction: Number(args.remove),
        flashAttention: args["flash-attention"] === "on",
        cacheType: args["cache-type"] as CacheType,
        threshold: Number(args.threshold)
    });

    const out = {
        model: modelPath,
        mha: Boolean(args.mha),
        cacheType: args["cache-type"],
        flashAttention: args["flash-attention"] === "on",
        threshold: Number(args.threshold),
        promptTokens: tokens.length,
        results
    };
    if (args.json)
        process.stdout.write(JSON.stringify(out) + "\n");
    else {
        process.stdout.write(`model ${modelPath}${args.mha ? " (MHA copy)" : ""}, cache ${out.cacheType}, flash attention ${args["flash-attention"]}, T ${out.threshold}, ${tokens.length} prompt tokens\n`);
        process.stdout.write("policy        variant  removed  max|dlogit|   KL           merges  evictions\n");
        for (const r of results)
            process.stdout.write(`${r.policy.padEnd(13)} ${(r.variant ?? "-").padEnd(8)} ${String(r.cellsRemoved).padStart(7)}  ${r.maxAbsLogitDiff.toExponential(3).padEnd(12)} ${r.klDivergence.toExponential(3).padEnd(12)} ${r.merges.toFixed(1).padStart(6)}  ${r.evictions.toFixed(1).padStart(9)}\n`);
    }
    await model.dispose();
    await llama.dispose();
    if (tmp != null)
        fs.rmSync(tmp, { recursive: true, force: true });
}

main().catch((err: unknown) => {
    process.stderr.write(`bench:perturbation: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
});
