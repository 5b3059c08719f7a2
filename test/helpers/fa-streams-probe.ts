// Child process for the per-stream flash attention test: decodes 4 sequences in one batch with flash
// attention and prints each sequence's last logits as JSON. Run with LLAMA_KEEPKV_FA_PER_STREAM=1 to take the
// per-stream path (the one CUDA needs) on the CPU.
import * as fs from "node:fs";
import { createKeepKvContext, setVote } from "../../server/engine/keepkv.js";
import { loadPatchedLlama } from "../../server/engine/llama-loader.js";
import { claimSequence } from "../../server/engine/native-context.js";
import { corpusPath, testModelPath } from "../../lib/model-paths.js";
import { rawDecodeMany } from "../../bench/lib/raw-decode.js";

const llama = await loadPatchedLlama();
const model = await llama.loadModel({ modelPath: process.env.KKV_PROBE_MODEL ?? testModelPath() });
const text = fs.readFileSync(corpusPath(), "utf8");
const prompts = text.split("\n").filter((l) => model.tokenize(l).length >= 40).map((l) => model.tokenize(l).slice(0, 40));
const context = await createKeepKvContext(model, {
    contextSize: 512, batchSize: 160, sequences: 4, threads: 1, flashAttention: process.env.KKV_PROBE_FA !== "0", keepKv: { policy: "keepkv" }
});
const sequences = [0, 1, 2, 3].map(() => claimSequence(context));
await rawDecodeMany(context, prompts.slice(0, 4).map((tokens, seq) => ({ seq, pos: 0, tokens: tokens.slice(0, 39) })));
// votes that differ per sequence and per KV head, so that a wrong mapping of either shows
for (const [seq, sequence] of sequences.entries())
    for (let pos = 5; pos < 15; pos++)
        for (let layer = 0; layer < 6; layer++) {
            await setVote(sequence, pos, layer, 0, 2 + seq);
            await setVote(sequence, pos, layer, 1, 1 / (2 + seq));
        }
const logits = await rawDecodeMany(context, prompts.slice(0, 4).map((tokens, seq) => ({ seq, pos: 39, tokens: [tokens[39]!] })));
process.stdout.write(JSON.stringify(logits.map((l) => Array.from(l))) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
