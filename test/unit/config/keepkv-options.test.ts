// The KeepKV options are declared once (lib/keepkv-options.ts); the server's config schema (ajv, in
// loadConfig) and the TypeScript check (resolveKeepKvSettings) both read the declaration. This drives both
// with the values at and around every declared bound and asks that they agree with each other and with
// the declaration.
import assert from "node:assert/strict";
import {
    inRange, keepKvOptionDecls, resolveKeepKvSettings, type KeepKvOptions, type KeepKvRange
} from "../../../lib/keepkv-options.js";
import { ConfigError, loadConfig } from "../../../server/config/load-config.js";
import { flagOf, optionDecls } from "../../../server/config/options.js";

type RangedKey = "sinks" | "recent" | "chunk" | "observed" | "threshold" | "protect" | "valueThreshold" | "scoreDecay" | "queryDecay";
const ranged: RangedKey[] = ["sinks", "recent", "chunk", "observed", "threshold", "protect", "valueThreshold", "scoreDecay", "queryDecay"];

/** Each bound of a range and its neighbours on both sides (integers: ±1; numbers: ±1e-6). */
function probes(range: KeepKvRange, integer: boolean): number[] {
    const step = integer ? 1 : 1e-6;
    const bounds = [range.minimum, range.maximum, range.exclusiveMinimum, range.exclusiveMaximum].filter((b) => b != null);
    return [...new Set(bounds.flatMap((b) => [b - step, b, b + step]))].sort((a, b) => a - b);
}

function configAccepts(key: RangedKey, value: number): boolean {
    try {
        loadConfig([flagOf(key), String(value)], {});
        return true;
    } catch (err) {
        if (err instanceof ConfigError && err.option === key)
            return false;
        throw err;
    }
}

function checkAccepts(key: RangedKey, value: number): boolean {
    try {
        resolveKeepKvSettings({ [key]: value } as KeepKvOptions, 512);
        return true;
    } catch (err) {
        if (err instanceof Error && "option" in err && err.option === key)
            return false;
        throw err;
    }
}

describe("KeepKV options (lib/keepkv-options.ts)", function () {
    it("the server's schema of each option is its declaration: the same values, range and default", function () {
        for (const key of ["policy", "variant", "selection", "scoreMode"] as const) {
            assert.deepEqual(optionDecls[key].schema.enum, keepKvOptionDecls[key].values, key);
            if (key !== "selection")
                assert.equal(optionDecls[key].default, keepKvOptionDecls[key].default, key);
        }
        for (const key of ranged) {
            const { type, range, default: fallback } = keepKvOptionDecls[key];
            assert.deepEqual(optionDecls[key].schema, { type, ...range }, key);
            assert.equal(optionDecls[key].default, fallback, key);
        }
        assert.deepEqual(optionDecls.budget.schema, { type: ["number", "null"], ...keepKvOptionDecls.budget.range });
    });

    it("the config schema and resolveKeepKvSettings accept and refuse the same values at every bound", function () {
        for (const key of ranged) {
            const { type, range } = keepKvOptionDecls[key];
            const values = probes(range, type === "integer");
            assert.ok(values.length >= 3, `${key} has a bound`);
            for (const value of values) {
                const declared = inRange(value, range);
                assert.equal(configAccepts(key, value), declared, `config schema, ${key} = ${value}`);
                assert.equal(checkAccepts(key, value), declared, `resolveKeepKvSettings, ${key} = ${value}`);
            }
        }
    });

    it("resolveKeepKvSettings names the declared range when it refuses a value", function () {
        assert.throws(() => resolveKeepKvSettings({ observed: 0 }, 512), /"observed": must be an integer >= 1, got 0/);
        assert.throws(() => resolveKeepKvSettings({ scoreDecay: 1 }, 512), /"scoreDecay": must be in \[0, 1\), got 1/);
        assert.throws(() => resolveKeepKvSettings({ threshold: 0 }, 512), /"threshold": must be in \(0, 1\], got 0/);
        assert.throws(() => resolveKeepKvSettings({ sinks: 1.5 }, 512), /"sinks": must be an integer >= 0, got 1.5/);
        assert.throws(() => resolveKeepKvSettings({ policy: "lru" as never }, 512), /unknown policy "lru"; use one of off, window, evict, merge-naive, keepkv/);
        assert.throws(() => resolveKeepKvSettings({ scoreMode: "max" as never }, 512), /unknown scoreMode "max"; use one of ema, sum/);
        assert.throws(() => loadConfig(["--score-mode", "max"], {}), (err: unknown) => err instanceof ConfigError && err.option === "scoreMode");
    });

    it("fills the declared defaults", function () {
        const settings = resolveKeepKvSettings({}, 512);
        for (const key of [...ranged, "policy", "variant", "selection", "scoreMode", "unifiedKvCache"] as const)
            assert.equal(settings[key], keepKvOptionDecls[key].default, key);
        assert.equal(settings.budgetCells, null);
    });
});
