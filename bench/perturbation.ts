// npm run bench:perturbation -- [--json] [--model PATH] [--flash-attention on|off] [--cache-type f16|q8_0|q4_0]
//                               [--threshold T] [--tokens N] [--remove FRACTION]
//
// Evaluates a prompt from the corpus, records the logits of its last token, removes the same cells with
// every policy, recomputes the last token on the compressed cache and prints how far its logits moved.
import * as fs from "node:fs";
import { loadPatchedLlama } from "../server/engine/llama-loader.js";
import { corpusPath, defaultModelPath, requireFile } from "../server/engine/model-paths.js";
import { parseArgs } from "./lib/args.js";
import { CacheType, measurePerturbation, promptTokens } from "./lib/perturbation.js";

async function main(): Promise<void> {
    const args = parseArgs(process.argv.slice(2), {
        json: { type: "boolean", default: false },
        model: { type: "string", default: defaultModelPath() },
        corpus: { type: "string", default: corpusPath() },
        "flash-attention": { type: "enum", values: ["on", "off"], default: "off" },
        "cache-type": { type: "enum", values: ["f16", "q8_0", "q4_0"], default: "f16" },
        threshold: { type: "number", default: 0.8 },
        tokens: { type: "number", default: 300 },
        remove: { type: "number", default: 0.25 }
    });
    const modelPath = requireFile(String(args.model), "model", "--model or KEEPKV_MODEL");
    const text = fs.readFileSync(requireFile(String(args.corpus), "corpus", "--corpus or KEEPKV_CORPUS"), "utf8");

    const llama = await loadPatchedLlama();
    const model = await llama.loadModel({ modelPath });
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
        cacheType: args["cache-type"],
        flashAttention: args["flash-attention"] === "on",
        threshold: Number(args.threshold),
        promptTokens: tokens.length,
        results
    };
    if (args.json)
        process.stdout.write(JSON.stringify(out) + "\n");
    else {
        process.stdout.write(`model ${modelPath}, cache ${out.cacheType}, flash attention ${args["flash-attention"]}, T ${out.threshold}, ${tokens.length} prompt tokens\n`);
        process.stdout.write("policy        variant  removed  max|dlogit|   KL           merges  evictions\n");
        for (const r of results)
            process.stdout.write(`${r.policy.padEnd(13)} ${(r.variant ?? "-").padEnd(8)} ${String(r.cellsRemoved).padStart(7)}  ${r.maxAbsLogitDiff.toExponential(3).padEnd(12)} ${r.klDivergence.toExponential(3).padEnd(12)} ${r.merges.toFixed(1).padStart(6)}  ${r.evictions.toFixed(1).padStart(9)}\n`);
    }
    await model.dispose();
    await llama.dispose();
}

main().catch((err: unknown) => {
    process.stderr.write(`bench:perturbation: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
});
