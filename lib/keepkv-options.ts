// The KeepKV options, declared once: each one's values or range, its default and what it does. The server's
// option table (server/config/options.ts: its ajv schema, --help and docs/server.md) and the TypeScript
// check below (resolveKeepKvSettings) read these declarations; the README table is checked against them.
// llama_keepkv_check in the patched llama.cpp checks the same ranges again, as the last line of defence.
// Side effect free: the parent process reads it without loading the engine or the native addon.

export const keepKvPolicies = ["off", "window", "evict", "merge-naive", "keepkv"] as const;
export type KeepKvPolicy = typeof keepKvPolicies[number];

export const keepKvVariants = ["paper", "votes", "key"] as const;
export type KeepKvVariant = typeof keepKvVariants[number];

export const keepKvSelections = ["policy", "score", "recency"] as const;
export type KeepKvSelection = typeof keepKvSelections[number];

export const keepKvScoreModes = ["ema", "sum"] as const;
export type KeepKvScoreMode = typeof keepKvScoreModes[number];

export type KeepKvErrorCode =
    | "KEEPKV_INVALID_OPTION"
    | "KEEPKV_UNSUPPORTED_MODEL"
    | "KEEPKV_NOT_PATCHED"
    | "KEEPKV_NOT_ENABLED"
    | "KEEPKV_FAILED";

export class KeepKvError extends Error {
    constructor(readonly code: KeepKvErrorCode, message: string, readonly option?: string) {
        super(message);
        this.name = "KeepKvError";
    }
}

/** What a user sets. Every field is optional; `resolveKeepKvSettings` fills the defaults and validates. */
export type KeepKvOptions = {
    /** Compression policy. "off" is vanilla llama.cpp: nothing allocated, nothing computed. */
    policy?: KeepKvPolicy,
    /** How the "keepkv" policy places a merged key (all are exact for the representative query). */
    variant?: KeepKvVariant,
    /** Which cells leave: "policy" (recency for window, score for the others), "score" or "recency". */
    selection?: KeepKvSelection,
    /**
     * KV budget per sequence: an integer number of cells (>= 2), or a fraction in (0, 1] of the logical
     * context size. null: no automatic compression (explicit compression only).
     */
    budget?: number | null,
    /** First cells of a sequence that never leave the cache (attention sinks). */
    sinks?: number,
    /** Last cells of a sequence that never leave the cache. */
    recent?: number,
    /** Cosine similarity of keys below which a leaving cell is evicted instead of merged, in (0, 1]. */
    threshold?: number,
    /**
     * keepkv with score selection: fraction of the retained cells, the best attended, that receive no
     * merges, in [0, 1); 0 = any retained cell may receive one.
     */
    protect?: number,
    /**
     * keepkv with score selection: cosine similarity of the values below which a leaving cell is evicted
     * instead of merged into the cell its key chose, in [-1, 1]; -1 = the keys alone decide.
     */
    valueThreshold?: number,
    /** Cells removed at least per automatic compression; 0 = budget/4. Larger: fewer, bigger compressions. */
    chunk?: number,
    /** Queries per sequence and batch observed to score the cells (the last ones). */
    observed?: number,
    /**
     * How a cell's score follows the attention it receives: "ema" (a moving average, scoreDecay per batch)
     * or "sum" (accumulated over every batch, H2O).
     */
    scoreMode?: KeepKvScoreMode,
    /** Decay of the exponential moving average of the scores, per batch, in [0, 1) (scoreMode "ema"). */
    scoreDecay?: number,
    /** Decay of the representative query's moving average, in [0, 1); 0 = the last query. */
    queryDecay?: number,
    /**
     * One KV stream shared by all sequences of the context instead of one per sequence. With per-sequence
     * streams (the default) a token attends only its own sequence's cells.
     */
    unifiedKvCache?: boolean
};

export type KeepKvSettings = Required<Omit<KeepKvOptions, "budget">> & {
    /** the budget in cells per sequence, or null */
    budgetCells: number | null
};

/** Bounds of a numeric option, in JSON-schema terms (so that the server's schema takes them as they are). */
export type KeepKvRange = { minimum?: number, maximum?: number, exclusiveMinimum?: number, exclusiveMaximum?: number };

type Described = {
    /** what it does, and what it costs */
    doc: string,
    /** how the default reads in the docs, where it is not the value itself */
    defaultDoc?: string
};

export type KeepKvOptionDecl =
    | Described & { type: "enum", values: readonly string[], default: string }
    | Described & { type: "integer" | "number", range: KeepKvRange, default: number }
    | Described & { type: "budget", range: KeepKvRange, default: null }
    | Described & { type: "boolean", default: boolean };

/** One declaration per option. */
export const keepKvOptionDecls = {
    policy: {
        type: "enum", values: keepKvPolicies, default: "keepkv",
        doc: "off, window (StreamingLLM), evict (H2O/SnapKV), merge-naive (convex merge, votes summed), keepkv (votes + ZIP merge). off allocates nothing and adds no work."
    },
    selection: {
        type: "enum", values: keepKvSelections, default: "policy",
        doc: "which cells leave: the policy's own (recency for window, attention score for evict, merge-naive and keepkv), score (the least attended, H2O) or recency (the oldest, StreamingLLM); merging policies merge whichever leave."
    },
    variant: {
        type: "enum", values: keepKvVariants, default: "key",
        doc: "ZIP merge variant of the keepkv policy: paper (k = C sum w k, guarded), votes (convex key, the vote absorbs the mass), key (convex key moved along the query)."
    },
    budget: {
        // a number of cells above 1 (an integer), a fraction of the context up to 1: resolveKeepKvSettings tells them apart
        type: "budget", range: { exclusiveMinimum: 0 }, default: null, defaultDoc: "none",
        doc: "KV cells per sequence (integer) or fraction of the context (0-1]. The cache allocates the budget per sequence and compresses a sequence before a batch would take it over; batches are cut to a chunk (at most budget - sinks - recent tokens), so that each compression chooses what leaves."
    },
    sinks: { type: "integer", range: { minimum: 0 }, default: 4, doc: "first cells of a sequence that never leave (attention sinks)." },
    recent: { type: "integer", range: { minimum: 0 }, default: 32, doc: "last cells of a sequence that never leave." },
    threshold: {
        type: "number", range: { exclusiveMinimum: 0, maximum: 1 }, default: 0.8,
        doc: "cosine similarity below which a leaving cell is evicted instead of merged."
    },
    protect: {
        type: "number", range: { minimum: 0, exclusiveMaximum: 1 }, default: 0.5,
        doc: "fraction of the retained cells, the best attended, that no leaving cell merges into (keepkv policy, score selection: a merge changes what later queries read there); 0 = any."
    },
    valueThreshold: {
        type: "number", range: { minimum: -1, maximum: 1 }, default: 0.8,
        doc: "cosine similarity of the values below which a leaving cell is evicted instead of merged into the cell its key chose (keepkv policy, score selection: the merged value is a mix that only the representative query reads unchanged, and alike keys, such as two digits', often carry unlike values); -1 = keys alone decide."
    },
    chunk: {
        type: "integer", range: { minimum: 0 }, default: 0, defaultDoc: "budget/4",
        doc: "cells removed at least per automatic compression: larger means fewer compressions, each bigger, and a cache that runs further below its budget."
    },
    observed: {
        type: "integer", range: { minimum: 1 }, default: 8,
        doc: "last queries of each sequence per batch that score the cells (cost: one extra K·q product of this many rows per layer)."
    },
    scoreMode: {
        type: "enum", values: keepKvScoreModes, default: "ema",
        doc: "how a cell's attention score follows the attention it gets: ema (moving average, scoreDecay per batch: what was attended lately) or sum (accumulated over every batch, H2O: what was ever attended much, such as a fact a chat's first turn gave and the reply repeated)."
    },
    scoreDecay: {
        type: "number", range: { minimum: 0, exclusiveMaximum: 1 }, default: 0.9,
        doc: "decay of the attention-score moving average, per batch (scoreMode ema)."
    },
    queryDecay: {
        type: "number", range: { minimum: 0, exclusiveMaximum: 1 }, default: 0,
        doc: "decay of the representative query's moving average; 0 = the last query, for which merges are exact."
    },
    unifiedKvCache: {
        type: "boolean", default: false,
        doc: "one KV stream for all sequences (llama.cpp's kv_unified) instead of one per sequence: every token then attends over all sequences' cells (masked)."
    }
} as const satisfies Record<keyof KeepKvOptions, KeepKvOptionDecl>;

type Decls = typeof keepKvOptionDecls;

export const keepKvDefaults = Object.fromEntries(Object.entries(keepKvOptionDecls).map(([k, d]) => [k, d.default])) as
    { readonly [K in keyof Decls]: Decls[K]["default"] };

/** Each option's default as the docs print it, and what it does. The README table is checked against it. */
export const keepKvOptionDocs = Object.fromEntries(Object.entries(keepKvOptionDecls).map(([k, d]) =>
    [k, { default: "defaultDoc" in d ? d.defaultDoc : String(d.default), doc: d.doc }])) as
    Record<keyof KeepKvOptions, { default: string, doc: string }>;

/** `[0, 1)`, `(0, 1]`, `>= 4`: a range as the check's messages say it. */
export function describeRange(range: KeepKvRange): string {
    const low = range.minimum ?? range.exclusiveMinimum;
    const high = range.maximum ?? range.exclusiveMaximum;
    if (low != null && high != null)
        return `in ${range.minimum != null ? "[" : "("}${low}, ${high}${range.maximum != null ? "]" : ")"}`;
    if (low != null)
        return `${range.minimum != null ? ">=" : ">"} ${low}`;
    if (high != null)
        return `${range.maximum != null ? "<=" : "<"} ${high}`;
    return "any number";
}

export function inRange(value: number, range: KeepKvRange): boolean {
    return !(range.minimum != null && !(value >= range.minimum)) &&
        !(range.exclusiveMinimum != null && !(value > range.exclusiveMinimum)) &&
        !(range.maximum != null && !(value <= range.maximum)) &&
        !(range.exclusiveMaximum != null && !(value < range.exclusiveMaximum));
}

function invalid(option: string, message: string): KeepKvError {
    return new KeepKvError("KEEPKV_INVALID_OPTION", `invalid KeepKV option "${option}": ${message}`, option);
}

function isInt(value: unknown): value is number {
    return typeof value === "number" && Number.isInteger(value);
}

function enumOption<K extends "policy" | "variant" | "selection" | "scoreMode">(options: KeepKvOptions, name: K): Decls[K]["values"][number] {
    const decl = keepKvOptionDecls[name];
    const value = options[name] ?? decl.default;
    if (!(decl.values as readonly string[]).includes(value))
        throw invalid(name, `unknown ${name} ${JSON.stringify(value)}; use one of ${decl.values.join(", ")}`);
    return value as Decls[K]["values"][number];
}

function intOption(options: KeepKvOptions, name: "sinks" | "recent" | "chunk" | "observed"): number {
    const { range, default: fallback } = keepKvOptionDecls[name];
    const value = options[name] ?? fallback;
    if (!isInt(value) || !inRange(value, range))
        throw invalid(name, `must be an integer ${describeRange(range)}, got ${String(value)}`);
    return value;
}

function numberOption(options: KeepKvOptions, name: "threshold" | "protect" | "valueThreshold" | "scoreDecay" | "queryDecay"): number {
    const { range, default: fallback } = keepKvOptionDecls[name];
    const value = options[name] ?? fallback;
    if (typeof value !== "number" || !inRange(value, range))
        throw invalid(name, `must be ${describeRange(range)}, got ${String(value)}`);
    return value;
}

/**
 * Fills defaults and validates. `contextSize` is the logical context per sequence: a budget must fit in
 * it and hold the sinks and the recent window plus one more cell.
 */
export function resolveKeepKvSettings(options: KeepKvOptions, contextSize: number): KeepKvSettings {
    const policy = enumOption(options, "policy");
    const variant = enumOption(options, "variant");
    const selection = enumOption(options, "selection");
    const sinks = intOption(options, "sinks");
    const recent = intOption(options, "recent");
    const chunk = intOption(options, "chunk");
    const observed = intOption(options, "observed");
    const scoreMode = enumOption(options, "scoreMode");
    const scoreDecay = numberOption(options, "scoreDecay");
    const queryDecay = numberOption(options, "queryDecay");
    const unifiedKvCache = options.unifiedKvCache ?? keepKvDefaults.unifiedKvCache;
    if (typeof unifiedKvCache !== "boolean")
        throw invalid("unifiedKvCache", `must be true or false, got ${String(unifiedKvCache)}`);
    const threshold = numberOption(options, "threshold");
    const protect = numberOption(options, "protect");
    const valueThreshold = numberOption(options, "valueThreshold");

    let budgetCells: number | null = null;
    const budget = options.budget ?? keepKvDefaults.budget;
    if (budget != null) {
        if (typeof budget !== "number" || !Number.isFinite(budget) || !inRange(budget, keepKvOptionDecls.budget.range))
            throw invalid("budget", `must be a number of cells (integer >= 2) or a fraction in (0, 1], got ${String(budget)}`);
        if (budget <= 1)
            budgetCells = Math.floor(budget * contextSize);
        else if (isInt(budget))
            budgetCells = budget;
        else
            throw invalid("budget", `a budget above 1 is a number of cells and must be an integer, got ${budget}`);
        if (policy === "off")
            throw invalid("budget", "a budget needs a compression policy; the policy is \"off\"");
        if (budgetCells > contextSize)
            throw invalid("budget", `${budgetCells} cells is more than the logical context of a sequence (${contextSize})`);
        if (budgetCells < sinks + recent + 1)
            throw invalid("budget", `${budgetCells} cells cannot hold the ${sinks} sinks and the ${recent} recent cells plus one more`);
        if (chunk > budgetCells - sinks - recent)
            throw invalid("chunk", `${chunk} cells is more than a full sequence can give (${budgetCells - sinks - recent})`);
    }
    return { policy, variant, selection, sinks, recent, threshold, protect, valueThreshold, chunk, observed, scoreMode, scoreDecay, queryDecay, unifiedKvCache, budgetCells };
}
