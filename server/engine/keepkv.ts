// The typed TypeScript face of KeepKV: options (declared, documented and validated here, once), context
// creation with a policy and a per-sequence KV budget, explicit compression and statistics.
//
// The operations that change or read the cells take node-llama-cpp's own context lock, so they never run while
// a batch of that context is being decoded. The statistics do not: the native side answers them between the
// workers that use the memory (see keepKvReadStats in the node-llama-cpp patches).
import type { LlamaContext, LlamaContextOptions, LlamaContextSequence, LlamaModel } from "node-llama-cpp";
import {
    keepKvVersionOf, nativeKeepKvOf, nativeSequenceIdOf, underContextLock,
    type NativeContextStats, type NativeKeepKv, type NativeSequenceStats
} from "./native-context.js";

export const keepKvPolicies = ["off", "window", "evict", "merge-naive", "keepkv"] as const;
export type KeepKvPolicy = typeof keepKvPolicies[number];

export const keepKvVariants = ["paper", "votes", "key"] as const;
export type KeepKvVariant = typeof keepKvVariants[number];

export const keepKvSelections = ["policy", "score", "recency"] as const;
export type KeepKvSelection = typeof keepKvSelections[number];

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
    /** Cells removed at least per automatic compression; 0 = budget/4. Larger: fewer, bigger compressions. */
    chunk?: number,
    /** Queries per sequence and batch observed to score the cells (the last ones). */
    observed?: number,
    /** Decay of the exponential moving average of the scores, per batch, in [0, 1). */
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

/** One declaration per option: the default, the unit and what it costs. The README table is checked against it. */
export const keepKvOptionDocs: Record<keyof KeepKvOptions, { default: string, doc: string }> = {
    policy: { default: "keepkv", doc: "off, window (StreamingLLM), evict (H2O/SnapKV), merge-naive (convex merge, votes summed), keepkv (votes + ZIP merge). off allocates nothing and adds no work." },
    selection: { default: "policy", doc: "which cells leave: the policy's own (recency for window, attention score for evict, merge-naive and keepkv), score (the least attended, H2O) or recency (the oldest, StreamingLLM); merging policies merge whichever leave." },
    variant: { default: "key", doc: "ZIP merge variant of the keepkv policy: paper (k = C sum w k, guarded), votes (convex key, the vote absorbs the mass), key (convex key moved along the query)." },
    budget: { default: "none", doc: "KV cells per sequence (integer) or fraction of the context (0-1]. The cache allocates the budget per sequence and compresses a sequence before a batch would take it over; batches are cut to a chunk (at most budget - sinks - recent tokens), so that each compression chooses what leaves." },
    sinks: { default: "4", doc: "first cells of a sequence that never leave (attention sinks)." },
    recent: { default: "32", doc: "last cells of a sequence that never leave." },
    threshold: { default: "0.8", doc: "cosine similarity below which a leaving cell is evicted instead of merged." },
    chunk: { default: "budget/4", doc: "cells removed at least per automatic compression: larger means fewer compressions, each bigger, and a cache that runs further below its budget." },
    observed: { default: "8", doc: "last queries of each sequence per batch that score the cells (cost: one extra K·q product of this many rows per layer)." },
    scoreDecay: { default: "0.9", doc: "decay of the attention-score moving average, per batch." },
    queryDecay: { default: "0", doc: "decay of the representative query's moving average; 0 = the last query, for which merges are exact." },
    unifiedKvCache: { default: "false", doc: "one KV stream for all sequences (llama.cpp's kv_unified) instead of one per sequence: every token then attends over all sequences' cells (masked)." }
};

export const keepKvDefaults = {
    policy: "keepkv",
    variant: "key",
    selection: "policy",
    budget: null,
    sinks: 4,
    recent: 32,
    threshold: 0.8,
    chunk: 0,
    observed: 8,
    scoreDecay: 0.9,
    queryDecay: 0,
    unifiedKvCache: false
} as const satisfies KeepKvOptions;

function invalid(option: string, message: string): KeepKvError {
    return new KeepKvError("KEEPKV_INVALID_OPTION", `invalid KeepKV option "${option}": ${message}`, option);
}

function isInt(value: unknown): value is number {
    return typeof value === "number" && Number.isInteger(value);
}

function intOption(options: KeepKvOptions, name: "sinks" | "recent" | "chunk" | "observed", min: number): number {
    const value = options[name] ?? keepKvDefaults[name];
    if (!isInt(value) || value < min)
        throw invalid(name, `must be an integer >= ${min}, got ${String(value)}`);
    return value;
}

function unitOption(options: KeepKvOptions, name: "scoreDecay" | "queryDecay"): number {
    const value = options[name] ?? keepKvDefaults[name];
    if (typeof value !== "number" || !(value >= 0 && value < 1))
        throw invalid(name, `must be in [0, 1), got ${String(value)}`);
    return value;
}

/**
 * Fills defaults and validates. `contextSize` is the logical context per sequence: a budget must fit in
 * it and hold the sinks and the recent window plus one more cell.
 */
export function resolveKeepKvSettings(options: KeepKvOptions, contextSize: number): KeepKvSettings {
    const policy = options.policy ?? keepKvDefaults.policy;
    if (!(keepKvPolicies as readonly string[]).includes(policy))
        throw invalid("policy", `unknown policy ${JSON.stringify(policy)}; use one of ${keepKvPolicies.join(", ")}`);
    const variant = options.variant ?? keepKvDefaults.variant;
    if (!(keepKvVariants as readonly string[]).includes(variant))
        throw invalid("variant", `unknown variant ${JSON.stringify(variant)}; use one of ${keepKvVariants.join(", ")}`);
    const selection = options.selection ?? keepKvDefaults.selection;
    if (!(keepKvSelections as readonly string[]).includes(selection))
        throw invalid("selection", `unknown selection ${JSON.stringify(selection)}; use one of ${keepKvSelections.join(", ")}`);
    const sinks = intOption(options, "sinks", 0);
    const recent = intOption(options, "recent", 0);
    const chunk = intOption(options, "chunk", 0);
    const observed = intOption(options, "observed", 1);
    const scoreDecay = unitOption(options, "scoreDecay");
    const queryDecay = unitOption(options, "queryDecay");
    const unifiedKvCache = options.unifiedKvCache ?? keepKvDefaults.unifiedKvCache;
    if (typeof unifiedKvCache !== "boolean")
        throw invalid("unifiedKvCache", `must be true or false, got ${String(unifiedKvCache)}`);
    const threshold = options.threshold ?? keepKvDefaults.threshold;
    if (typeof threshold !== "number" || !(threshold > 0 && threshold <= 1))
        throw invalid("threshold", `must be in (0, 1], got ${String(threshold)}`);

    let budgetCells: number | null = null;
    const budget = options.budget ?? keepKvDefaults.budget;
    if (budget != null) {
        if (typeof budget !== "number" || !Number.isFinite(budget) || budget <= 0)
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
    return { policy, variant, selection, sinks, recent, threshold, chunk, observed, scoreDecay, queryDecay, unifiedKvCache, budgetCells };
}

/**
 * The most tokens llama.cpp puts in one ubatch under a budget (llama_keepkv_max_ubatch): a compression chunk
 * (budget/4 unless set), so that each compression chooses which cells leave instead of emptying the sequence
 * down to its sinks and recent window; a larger batch buys nothing.
 */
export function keepKvMaxBatch(settings: Pick<KeepKvSettings, "budgetCells" | "sinks" | "recent" | "chunk">): number | null {
    if (settings.budgetCells == null)
        return null;
    const chunk = settings.chunk > 0 ? settings.chunk : Math.max(1, Math.floor(settings.budgetCells / 4));
    return Math.max(1, Math.min(settings.budgetCells - settings.sinks - settings.recent, chunk));
}

/** The option object the patched addon reads (see patches/node-llama-cpp). */
function toAddonParams(settings: KeepKvSettings) {
    return {
        policy: keepKvPolicies.indexOf(settings.policy),
        variant: keepKvVariants.indexOf(settings.variant),
        select: keepKvSelections.indexOf(settings.selection),
        sinks: settings.sinks,
        recent: settings.recent,
        budget: settings.budgetCells ?? 0,
        chunk: settings.chunk,
        observed: settings.observed,
        threshold: settings.threshold,
        scoreDecay: settings.scoreDecay,
        queryDecay: settings.queryDecay,
        unifiedKvCache: settings.unifiedKvCache
    };
}

export type KeepKvContextOptions = Omit<LlamaContextOptions, "contextSize" | "keepKv"> & {
    /** logical context per sequence, in tokens */
    contextSize: number,
    keepKv?: KeepKvOptions
};

const contextSettings = new WeakMap<LlamaContext, KeepKvSettings>();

function nativeOf(context: LlamaContext): NativeKeepKv {
    const native = nativeKeepKvOf(context);
    if (native == null)
        throw new KeepKvError("KEEPKV_NOT_PATCHED", "this llama.cpp binary has no KeepKV: load it with loadPatchedLlama()");
    return native;
}

const unsupportedModel = /not supported|no KV cache|recurrent|hybrid/;

/** Creates a context with KeepKV settings; the policy applies to every sequence of the context. */
export async function createKeepKvContext(model: LlamaModel, options: KeepKvContextOptions): Promise<LlamaContext> {
    const { keepKv, ...contextOptions } = options;
    const settings = resolveKeepKvSettings(keepKv ?? { policy: "off" }, options.contextSize);

    const maxBatch = keepKvMaxBatch(settings);
    if (maxBatch != null && contextOptions.batchSize == null)
        contextOptions.batchSize = Math.min(512, maxBatch);

    if (settings.policy === "off") {
        const context = await model.createContext(settings.unifiedKvCache
            ? { ...contextOptions, keepKv: { policy: 0, unifiedKvCache: true } }
            : contextOptions);
        contextSettings.set(context, settings);
        return context;
    }

    if (keepKvVersionOf(model.llama) == null)
        throw new KeepKvError("KEEPKV_NOT_PATCHED", "this llama.cpp binary has no KeepKV: load it with loadPatchedLlama()");

    let context: LlamaContext;
    try {
        context = await model.createContext({
            ...contextOptions,
            // node-llama-cpp sizes its memory checks for a full cache of the logical context; with a budget the
            // cache is a fraction of that, and llama.cpp itself fails cleanly when memory runs out
            ignoreMemorySafetyChecks: settings.budgetCells != null ? true : contextOptions.ignoreMemorySafetyChecks,
            keepKv: toAddonParams(settings)
        });
    } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        if (message.startsWith("KeepKV: "))
            throw new KeepKvError(unsupportedModel.test(message) ? "KEEPKV_UNSUPPORTED_MODEL" : "KEEPKV_INVALID_OPTION", message);
        throw err;
    }
    contextSettings.set(context, settings);
    return context;
}

/** The settings a context was created with ("off" for a context not made by createKeepKvContext). */
export function keepKvSettingsOf(context: LlamaContext): KeepKvSettings {
    return contextSettings.get(context) ?? resolveKeepKvSettings({ policy: "off" }, context.contextSize);
}

function requireEnabled(context: LlamaContext): void {
    if (keepKvSettingsOf(context).policy === "off")
        throw new KeepKvError("KEEPKV_NOT_ENABLED", "KeepKV is off on this context");
}

/**
 * Removes `what` cells of a sequence now (a number: the policy chooses them), or exactly the cells at the
 * given positions, with the context's policy. Returns how many cells left.
 */
export async function compressSequence(sequence: LlamaContextSequence, what: number | readonly number[]): Promise<number> {
    requireEnabled(sequence.context);
    if (typeof what === "number" && (!isInt(what) || what < 0))
        throw new KeepKvError("KEEPKV_INVALID_OPTION", `the number of cells to remove must be an integer >= 0, got ${what}`);
    return await underContextLock(sequence.context, async () => {
        try {
            return await nativeOf(sequence.context).keepKvCompress(nativeSequenceIdOf(sequence),
                typeof what === "number" ? what : Int32Array.from(what));
        } catch (err) {
            throw new KeepKvError("KEEPKV_FAILED", err instanceof Error ? err.message : String(err));
        }
    });
}

/** The positions the policy would remove if `n` cells had to leave now, without removing them. */
export async function selectForCompression(sequence: LlamaContextSequence, n: number): Promise<number[]> {
    requireEnabled(sequence.context);
    return await underContextLock(sequence.context, () => Array.from(nativeOf(sequence.context).keepKvSelect(nativeSequenceIdOf(sequence), n)));
}

/** The raw logits of an output of the last decoded batch (-1: the last one). For tests and tools. */
export async function lastOutputLogits(context: LlamaContext, index = -1): Promise<Float32Array> {
    return await underContextLock(context, () => {
        const logits = nativeOf(context).getOutputLogits(index);
        if (logits == null)
            throw new KeepKvError("KEEPKV_FAILED", `no logits for output ${index} of the last batch`);
        return logits;
    });
}

/** Sets the vote of the cell at `pos` of a sequence, in one layer and KV head. For tests and tools. */
export async function setVote(sequence: LlamaContextSequence, pos: number, layer: number, headKv: number, vote: number): Promise<void> {
    requireEnabled(sequence.context);
    const ok = await underContextLock(sequence.context, () =>
        nativeOf(sequence.context).keepKvSetVote(nativeSequenceIdOf(sequence), pos, layer, headKv, vote));
    if (!ok)
        throw new KeepKvError("KEEPKV_FAILED", `no cell at position ${pos} of sequence ${nativeSequenceIdOf(sequence)}, or no layer ${layer} / KV head ${headKv}, or vote ${vote} <= 0`);
}

/** The positions of the cells a sequence holds, sorted (a merged cell: the latest token merged into it). */
export async function cellPositions(sequence: LlamaContextSequence): Promise<number[]> {
    requireEnabled(sequence.context);
    return await underContextLock(sequence.context, () =>
        Array.from(nativeOf(sequence.context).keepKvGetCellPositions(nativeSequenceIdOf(sequence)) ?? []));
}

export type KeepKvSequenceStats = {
    sequenceId: number,
    /** tokens the sequence has seen (its next position) */
    logicalTokens: number,
    /** KV cells the sequence holds now */
    cellsUsed: number,
    /** its budget in cells, or null when there is none */
    budget: number | null,
    /** physical cells available to it (its stream) */
    capacity: number,
    /** K/V bytes its cells occupy */
    kvBytesUsed: number,
    /** cells that left by compression */
    cellsRemoved: number,
    /** leaving cells merged into a retained cell, in cell equivalents (merged layer-head slots / slots per cell) */
    merges: number,
    /** leaving cells dropped without a merge, in cell equivalents */
    evictions: number,
    /** compression events */
    compressions: number,
    /** time spent compressing, seconds */
    compressionSeconds: number,
    /** largest vote of any of its cells, layers and heads (1 for an uncompressed sequence) */
    voteMax: number,
    /** mean vote over its cells, layers and heads */
    voteMean: number
};

export type KeepKvContextStats = {
    policy: KeepKvPolicy,
    /** physical KV cells of the context (all streams) */
    capacityCells: number,
    /** K/V bytes allocated */
    kvBytesAllocated: number,
    /** K/V bytes in use by cells that hold tokens */
    kvBytesUsed: number,
    /** K/V bytes a full cache of the logical context would allocate */
    kvBytesFull: number,
    /** bytes of the votes, scores and representative queries */
    keepKvBytes: number,
    cellsRemoved: number,
    merges: number,
    evictions: number,
    compressions: number,
    compressionSeconds: number,
    sequences: KeepKvSequenceStats[]
};

function toSequenceStats(sequence: LlamaContextSequence, native: NativeSequenceStats | null, context: NativeContextStats | null): KeepKvSequenceStats {
    const slotsPerCell = context?.slotsPerCell ?? 0;
    if (native == null) {
        const used = sequence.nextTokenIndex;
        return {
            sequenceId: nativeSequenceIdOf(sequence), logicalTokens: used, cellsUsed: used, budget: null, capacity: sequence.context.contextSize,
            kvBytesUsed: 0, cellsRemoved: 0, merges: 0, evictions: 0, compressions: 0, compressionSeconds: 0, voteMax: 1, voteMean: 1
        };
    }
    return {
        sequenceId: nativeSequenceIdOf(sequence),
        logicalTokens: native.posMax + 1,
        cellsUsed: native.cells,
        budget: native.budget > 0 ? native.budget : null,
        capacity: native.capacity,
        kvBytesUsed: native.kvBytesUsed,
        cellsRemoved: native.removed,
        merges: slotsPerCell > 0 ? native.mergedSlots / slotsPerCell : 0,
        evictions: slotsPerCell > 0 ? native.evictedSlots / slotsPerCell : 0,
        compressions: native.compressions,
        compressionSeconds: native.compressMs / 1000,
        voteMax: native.voteMax,
        voteMean: native.voteMean
    };
}

/**
 * The native statistics of a context and of some of its sequences, without the context lock: node-llama-cpp's
 * batch dispatch holds that lock for as long as decodes stay queued, so a request that read its statistics
 * under it waited, before its first token, until the sequences generating beside it had finished (25.6 s for a
 * 3-token reply behind two 200-token ones). The native side answers between two decodes instead.
 */
async function readNativeStats(context: LlamaContext, sequences: readonly LlamaContextSequence[]) {
    if (keepKvSettingsOf(context).policy === "off")
        return { context: null, sequences: sequences.map(() => null) };
    return await nativeOf(context).keepKvReadStats(Int32Array.from(sequences, nativeSequenceIdOf));
}

/** Per-sequence statistics (host-side data only: cheap), read between two decodes of its context. */
export async function keepKvSequenceStats(sequence: LlamaContextSequence): Promise<KeepKvSequenceStats> {
    const native = await readNativeStats(sequence.context, [sequence]);
    return toSequenceStats(sequence, native.sequences[0] ?? null, native.context);
}

/** Context-wide statistics, with the given sequences', read between two decodes of the context. */
export async function keepKvContextStats(context: LlamaContext, sequences: readonly LlamaContextSequence[]): Promise<KeepKvContextStats> {
    const settings = keepKvSettingsOf(context);
    const live = sequences.filter((s) => !s.disposed);
    const native = await readNativeStats(context, live);
    const perSequence = live.map((s, i) => toSequenceStats(s, native.sequences[i] ?? null, native.context));
    const sum = (f: (s: KeepKvSequenceStats) => number) => perSequence.reduce((a, s) => a + f(s), 0);
    const ctx = native.context;
    return {
        policy: settings.policy,
        capacityCells: ctx != null ? ctx.streams * ctx.cellsPerStream : context.contextSize * context.totalSequences,
        kvBytesAllocated: ctx?.kvBytes ?? 0,
        kvBytesUsed: sum((s) => s.kvBytesUsed),
        kvBytesFull: (ctx?.kvBytesPerCell ?? 0) * context.contextSize * context.totalSequences,
        keepKvBytes: ctx?.keepKvBytes ?? 0,
        cellsRemoved: sum((s) => s.cellsRemoved),
        merges: sum((s) => s.merges),
        evictions: sum((s) => s.evictions),
        compressions: sum((s) => s.compressions),
        compressionSeconds: sum((s) => s.compressionSeconds),
        sequences: perSequence
    };
}
