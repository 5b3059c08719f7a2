// The engine's stderr as the supervisor keeps it: lines across chunks, the tail reported with an exit,
// the lines since a mark, and the reason appended to a failed load's message.
import assert from "node:assert/strict";
import { LineSplitter, StderrLog, withStderrReason } from "../../../server/supervisor/engine-stderr.js";

describe("engine stderr", function () {
    it("splits chunks into complete, non-blank lines, keeping a partial line for the next chunk", function () {
        const lines = new LineSplitter();
        assert.deepEqual(lines.push("first\nsec"), ["first"]);
        assert.deepEqual(lines.push("ond\n\n  \nthird"), ["second"]);
        assert.deepEqual(lines.push("\n"), ["third"]);
    });

    it("keeps the last 20 lines, and the first 50 since the mark", function () {
        const log = new StderrLog();
        for (let i = 0; i < 60; i++)
            log.add(`line ${i}`);
        assert.equal(log.tail.length, 20);
        assert.equal(log.tail[0], "line 40");
        assert.equal(log.tail.at(-1), "line 59");
        assert.equal(log.sinceMark.length, 50);
        assert.equal(log.sinceMark.at(-1), "line 49");
        log.mark();
        log.add("after the mark");
        assert.deepEqual(log.sinceMark, ["after the mark"]);
        log.clearTail();
        assert.deepEqual(log.tail, []);
        assert.deepEqual(log.sinceMark, ["after the mark"], "a new process does not clear the lines since the mark");
    });

    it("appends the last two distinct reasons, without node-llama-cpp's prefix", function () {
        assert.equal(withStderrReason("load failed", []), "load failed");
        assert.equal(withStderrReason("load failed", [
            "[node-llama-cpp] a", "[node-llama-cpp] failed to allocate buffer for kv cache", "failed to allocate buffer for kv cache", "b"
        ]), "load failed (failed to allocate buffer for kv cache; b)");
    });
});
