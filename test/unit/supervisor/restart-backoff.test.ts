// The supervisor's restart delays: 0.5 s doubling up to 30 s, reset after a minute of good service
// (docs/server.md, "Engine supervision").
import assert from "node:assert/strict";
import { RestartBackoff } from "../../../server/engine/restart-backoff.js";

const policy = { initialMs: 500, maxMs: 30_000, stableAfterMs: 60_000 };

describe("RestartBackoff", function () {
    it("doubles the delay with every restart, up to the ceiling", function () {
        const backoff = new RestartBackoff(policy);
        const delays = Array.from({ length: 9 }, (_, i) => backoff.delay(1000 + i, 1000));
        assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
    });

    it("starts over after an engine that served longer than stableAfterMs", function () {
        const backoff = new RestartBackoff(policy);
        backoff.delay(10, 1);
        backoff.delay(20, 1);
        assert.equal(backoff.delay(30, 1), 2000);
        const readyAt = 100_000;
        assert.equal(backoff.delay(readyAt + 60_001, readyAt), 500);
        assert.equal(backoff.delay(readyAt + 60_002, readyAt + 60_001), 1000, "the next loss soon after grows again");
    });

    it("keeps growing for an engine lost within stableAfterMs of becoming ready", function () {
        const backoff = new RestartBackoff(policy);
        backoff.delay(10, 1);
        assert.equal(backoff.delay(60_000, 1), 1000, "exactly stableAfterMs is not longer than it");
    });

    it("keeps growing for an engine that never became ready", function () {
        const backoff = new RestartBackoff(policy);
        backoff.delay(500_000, 0);
        assert.equal(backoff.delay(1_000_000, 0), 1000);
    });
});
