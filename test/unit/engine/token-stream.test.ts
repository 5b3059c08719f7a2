// Streaming text out of generated tokens: TokenTextStream with stories3M's real tokenizer (its byte
// tokens split a character over several tokens), StopStringMatcher on plain text.
import assert from "node:assert/strict";
import type { Llama, LlamaModel, Token } from "node-llama-cpp";
import { loadPatchedLlama } from "../../../server/engine/llama-loader.js";
import { requireFile, testModelPath } from "../../../lib/model-paths.js";
import { StopStringMatcher, TokenTextStream } from "../../../server/engine/token-stream.js";

describe("TokenTextStream (stories3M tokenizer)", function () {
    let llama: Llama;
    let model: LlamaModel;

    before(async function () {
        this.timeout(120_000);
        llama = await loadPatchedLlama();
        model = await llama.loadModel({ modelPath: requireFile(testModelPath(), "model", "KEEPKV_TEST_MODEL") });
    });
    after(async function () {
        await model?.dispose();
        await llama?.dispose();
    });

    function stream(tokens: readonly Token[], previous: readonly Token[] = []): string[] {
        const text = new TokenTextStream(model, previous);
        return [...tokens.map((t) => text.push(t)), text.flush()];
    }

    it("streams exactly the text of the whole sequence, never half a character", function () {
        const sentence = "Once upon a time, café 🙂 naïve 日本";
        const tokens = model.tokenize(sentence);
        const pieces = stream(tokens);
        assert.equal(pieces.join(""), model.detokenize(tokens));
        assert.equal(pieces.join(""), sentence);
        for (const piece of pieces)
            assert.ok(!piece.includes("\uFFFD"), `a piece with a broken character: ${JSON.stringify(pieces)}`);
    });

    it("holds the byte tokens of a character until its last byte", function () {
        const tokens = model.tokenize("🙂");
        const bytes = tokens.filter((t) => model.detokenize([t]) !== "");
        assert.equal(bytes.length, 4, "stories3M spells the emoji in four byte tokens");
        const text = new TokenTextStream(model, []);
        assert.deepEqual(bytes.map((t) => text.push(t)), ["", "", "", "🙂"]);
    });

    it("uses the tokens before the stream for the leading space of its first word", function () {
        const [once, upon] = model.tokenize("Once upon");
        assert.deepEqual(stream([upon!], [once!]), [" upon", ""]);
        assert.deepEqual(stream([upon!]), ["upon", ""], "at the start of a text there is no space to keep");
    });

    it("gives up on bytes that never make a character after four tokens", function () {
        const [lead, cont] = model.tokenize("🙂").filter((t) => model.detokenize([t]) !== "").slice(0, 2);
        const text = new TokenTextStream(model, []);
        const pieces = [cont!, cont!, cont!, cont!].map((t) => text.push(t));
        assert.deepEqual(pieces.slice(0, 3), ["", "", ""]);
        assert.match(pieces[3]!, /^\uFFFD+$/);
        assert.equal(text.push(lead!), "");
        assert.match(text.flush(), /\uFFFD/, "flush releases an incomplete character at the very end");
        assert.equal(text.flush(), "");
    });
});

describe("StopStringMatcher", function () {
    it("passes text through when there are no stop strings", function () {
        const stops = new StopStringMatcher([]);
        assert.deepEqual(stops.push("END of it"), { text: "END of it", stopped: false });
    });

    it("cuts at a stop string inside one piece", function () {
        const stops = new StopStringMatcher(["\n\n"]);
        assert.deepEqual(stops.push("The end.\n\nNext"), { text: "The end.", stopped: true });
    });

    it("holds back what could be the start of a stop string, and finds one across pieces", function () {
        const stops = new StopStringMatcher(["world"]);
        assert.deepEqual(stops.push("Hello wor"), { text: "Hello ", stopped: false });
        assert.deepEqual(stops.push("ld!"), { text: "", stopped: true });
    });

    it("releases held text once it can no longer begin a stop string", function () {
        const stops = new StopStringMatcher(["END"]);
        assert.deepEqual(stops.push("The EN"), { text: "The ", stopped: false });
        assert.deepEqual(stops.push("ough"), { text: "ENough", stopped: false });
        assert.deepEqual(stops.push("E"), { text: "", stopped: false });
        assert.equal(stops.flush(), "E", "the end of the stream releases what was held");
        assert.equal(stops.flush(), "");
    });

    it("stops at the earliest of several stop strings", function () {
        const stops = new StopStringMatcher(["zz", "b"]);
        assert.deepEqual(stops.push("a b zz"), { text: "a ", stopped: true });
    });

    it("holds the longest prefix of any stop string", function () {
        const stops = new StopStringMatcher(["xy", "abcd"]);
        assert.deepEqual(stops.push("--abc"), { text: "--", stopped: false });
        assert.deepEqual(stops.push("x"), { text: "abc", stopped: false });
        assert.deepEqual(stops.push("y"), { text: "", stopped: true });
    });
});
