// The supervisor's restart delays: 0.5 s doubling up to 30 s, reset after a minute of good service
// (docs/server.md, "Engine supervision").
import assert from "node:assert/strict";
import { RestartBackoff } from "../../../server/supervisor/restart-backoff.js";

const policy = { initialMs: 500, maxMs: 30_000, stableAfterMs: 60_000 };

describe("RestartBackoff", function () {
    it("doubles the delay with every restart, up to the ceiling", function () {
        const backoff = new RestartBackoff(policy);
        const delays = Array.from({ length: 9 }, () => backoff.afterLoss(10));
        assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]);
    });

    it("starts over after an engine that served longer than stableAfterMs", function () {
        const backoff = new RestartBackoff(policy);
        backoff.afterLoss(10);
        backoff.afterLoss(10);
        assert.equal(backoff.afterLoss(10), 2000);
        assert.equal(backoff.afterLoss(60_001), 500);
        assert.equal(backoff.afterLoss(10), 1000, "the next loss soon after grows again");
    });

    it("keeps growing for an engine lost within stableAfterMs of becoming ready", function () {
        const backoff = new RestartBackoff(policy);
        backoff.afterLoss(10);
        assert.equal(backoff.afterLoss(60_000), 1000, "exactly stableAfterMs is not longer than it");
    });

    it("keeps growing while restart attempts fail, however long the engine served before", function () {
        // an engine that served for ten minutes, then lost its model file: each attempt fails at once
        const backoff = new RestartBackoff(policy);
        const delays = [backoff.afterLoss(600_000)];
        for (let attempt = 0; attempt < 7; attempt++)
            delays.push(backoff.afterFailedStart());
        assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
    });

    it("starts over for the next loss once a restarted engine has served long enough", function () {
        const backoff = new RestartBackoff(policy);
        backoff.afterLoss(10);
        backoff.afterFailedStart();
        backoff.afterFailedStart();
        assert.equal(backoff.afterLoss(120_000), 500);
    });
});
