// Long-context retrieval on the real chat model (SmolLM2-135M-Instruct): a fact in the middle of a 2048-token
// text, asked for after it, greedy and scored exactly. The full cache answers; a sliding window of 20% of the
// prompt loses it; keepkv at the same budget answers when it compresses at the end of the prompt, where the
// question's queries score the cells (SnapKV's setting, with keepkv's merging). The same cases as
// `npm run bench:longctx`, which measures every policy, budget and depth.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import type { Llama, LlamaModel } from "node-llama-cpp";
import { longctxConfigs, runLongctx, runPromptEnd, type LongctxConfig } from "../../bench/lib/longctx-run.js";
import { needleCase, needleSeed, type NeedleCase } from "../../bench/lib/longctx-tasks.js";
import { ensureKjvText } from "../../scripts/lib/long-text.js";
import { loadPatchedLlama } from "../../server/engine/llama-loader.js";
import { smolModelPath } from "../helpers/smollm2.js";

describe("long-context retrieval on SmolLM2 (a fact in a 2048-token text, 20% budget)", function () {
    let llama: Llama;
    let model: LlamaModel;
    let needle: NeedleCase;

    before(async function () {
        llama = await loadPatchedLlama();
        model = await llama.loadModel({ modelPath: smolModelPath() });
        needle = needleCase(model, fs.readFileSync(ensureKjvText(), "utf8"), "needle", 2048, 0.5, needleSeed(2048, 0.5));
    });
    after(async function () {
        await model?.dispose();
        await llama?.dispose();
    });

    const config = (label: string) => {
        const found = longctxConfigs("compact", [0.2], ["streaming", "prompt-end"]).find((c) => c.label === label);
        assert.ok(found != null, label);
        return found;
    };
    const answer = async (c: LongctxConfig) => (await runLongctx(model, c, [needle], { threads: 2, generate: 8 }))[0]!;

    it("the full cache retrieves it, a 20% window loses it, keepkv at 20% compressing at the prompt's end retrieves it", async function () {
        this.timeout(300_000);
        const full = await answer(config("full cache"));
        assert.ok(full.correct, `the full cache answered ${JSON.stringify(full.reply)} for ${needle.answer}`);
        const window = await answer(config("window"));
        assert.ok(!window.correct, `the window answered ${JSON.stringify(window.reply)}: the fact is not outside it`);
        const keepkv = await answer(config("keepkv prompt-end"));
        assert.ok(keepkv.correct, `keepkv answered ${JSON.stringify(keepkv.reply)} for ${needle.answer}`);
        assert.equal(keepkv.budgetCells, 410);

        // bench:longctx evaluates the prompt once and compresses a copy of it per policy: the same replies
        const shared = await runPromptEnd(model, [config("full cache"), config("evict prompt-end"), config("keepkv prompt-end")], [needle],
            { threads: 2, generate: 8 });
        assert.deepEqual(shared.map((r) => r.config), ["full cache", "evict prompt-end", "keepkv prompt-end"]);
        assert.equal(shared[0]!.reply, full.reply);
        assert.equal(shared[2]!.reply, keepkv.reply);
        assert.ok(shared[1]!.correct, `evict answered ${JSON.stringify(shared[1]!.reply)} for ${needle.answer}`);
    });
});
