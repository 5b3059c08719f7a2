// A sequence used through calls by its native id (decodeRaw, copyCellsRaw, ...) must outlive the collector:
// node-llama-cpp clears the cells of a LlamaContextSequence object that is garbage-collected. This cleared the
// prompt of bench:longctx in the middle of its configurations once, and was taken for an engine fault.
import assert from "node:assert/strict";
import v8 from "node:v8";
import vm from "node:vm";
import type { Llama, LlamaModel } from "node-llama-cpp";
import { createKeepKvContext, cellPositions } from "../../server/engine/keepkv.js";
import { loadPatchedLlama } from "../../server/engine/llama-loader.js";
import { claimSequence, decodeRaw, nativeKeepKvOf, nativeSequenceIdOf } from "../../server/engine/native-context.js";
import { requireFile, testModelPath } from "../../lib/model-paths.js";

v8.setFlagsFromString("--expose-gc");
const collectGarbage = vm.runInNewContext("gc") as () => void;

describe("sequences used by their native id", function () {
    let llama: Llama;
    let model: LlamaModel;

    before(async function () {
        llama = await loadPatchedLlama();
        model = await llama.loadModel({ modelPath: requireFile(testModelPath(), "model", "KEEPKV_TEST_MODEL") });
    });

    after(async function () {
        await model?.dispose();
        await llama?.dispose();
    });

    it("a claimed sequence keeps its cells through garbage collection, where one taken only for its id loses them", async function () {
        const context = await createKeepKvContext(model, { contextSize: 256, sequences: 2, threads: 1, keepKv: { policy: "keepkv" } });
        try {
            const claimed = claimSequence(context);
            const [dropped, kept] = [nativeSequenceIdOf(context.getSequence()), nativeSequenceIdOf(claimed)];
            const tokens = model.tokenize("Once upon a time there was a little girl");
            await decodeRaw(context, [dropped, kept].map((seq) => ({ seq, pos: 0, tokens })), false);
            const cellsOf = (seq: number) => (nativeKeepKvOf(context).keepKvGetCellPositions(seq) ?? []).length;
            assert.deepEqual([cellsOf(dropped), cellsOf(kept)], [tokens.length, tokens.length]);

            // the collector runs when it will: until it has reclaimed the dropped sequence (else this test shows nothing)
            for (let round = 0; round < 50 && cellsOf(dropped) > 0; round++) {
                collectGarbage();
                await new Promise((resolve) => setTimeout(resolve, 20));
            }
            assert.equal(cellsOf(dropped), 0, "the collector never reclaimed the sequence taken only for its id: nothing to compare");
            assert.equal(cellsOf(kept), tokens.length);
            assert.deepEqual(await cellPositions(claimed), tokens.map((_, i) => i));
        } finally {
            await context.dispose();
        }
    });
});
