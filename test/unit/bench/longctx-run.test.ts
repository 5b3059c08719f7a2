// The prompt-end configurations of bench:longctx share one context and switch its compression per
// configuration: each switch must name every setting, or the previous configuration's carries over.
import assert from "node:assert/strict";
import { compressionOf, extraConfigs, longctxConfigs } from "../../../bench/lib/longctx-run.js";
import { keepKvDefaults } from "../../../lib/keepkv-options.js";

describe("bench:longctx compressionOf", function () {
    const standard = longctxConfigs("all", [0.1], ["prompt-end"]).filter((c) => c.policy !== "off");
    const extras = extraConfigs([
        { label: "keepkv T0.95", policy: "keepkv", threshold: 0.95 },
        { label: "keepkv P0.9", policy: "keepkv", protect: 0.9 },
        { label: "keepkv/votes (recency)", policy: "keepkv", variant: "votes", selection: "recency" },
        { label: "keepkv V-1", policy: "keepkv", valueThreshold: -1 }
    ], [0.1]);

    it("names every setting a live context can change, the defaults where the configuration is silent", function () {
        for (const config of [...standard, ...extras]) {
            const change = compressionOf(config, undefined, 2048);
            for (const [field, value] of Object.entries(change))
                assert.ok(value !== undefined, `${config.label}: ${field} is left to the live context`);
        }
        const keepkv = compressionOf(standard.find((c) => c.label === "keepkv prompt-end")!, undefined, 2048);
        assert.deepEqual(keepkv, {
            policy: "keepkv", variant: "key", selection: "policy", threshold: keepKvDefaults.threshold, protect: keepKvDefaults.protect,
            valueThreshold: keepKvDefaults.valueThreshold
        });
        const naive = compressionOf(standard.find((c) => c.label === "merge-naive prompt-end")!, undefined, 2048);
        assert.equal(naive.threshold, keepKvDefaults.threshold);
        assert.equal(naive.variant, keepKvDefaults.variant);
    });

    it("takes an --extra configuration's own settings, and --keepkv's for every configuration", function () {
        assert.equal(compressionOf(extras[0]!, undefined, 2048).threshold, 0.95);
        assert.equal(compressionOf(extras[0]!, undefined, 2048).protect, keepKvDefaults.protect);
        assert.equal(compressionOf(extras[1]!, undefined, 2048).protect, 0.9);
        assert.deepEqual([compressionOf(extras[2]!, undefined, 2048).variant, compressionOf(extras[2]!, undefined, 2048).selection], ["votes", "recency"]);
        assert.equal(compressionOf(extras[3]!, undefined, 2048).valueThreshold, -1);
        assert.equal(compressionOf(extras[3]!, { valueThreshold: 0.5 }, 2048).valueThreshold, -1);
        assert.equal(compressionOf(extras[0]!, { valueThreshold: 0.5 }, 2048).valueThreshold, 0.5);
        // the extra's own setting wins over --keepkv's
        assert.equal(compressionOf(extras[0]!, { threshold: 0.5, protect: 0.2 }, 2048).threshold, 0.95);
        assert.equal(compressionOf(extras[0]!, { threshold: 0.5, protect: 0.2 }, 2048).protect, 0.2);
    });
});
