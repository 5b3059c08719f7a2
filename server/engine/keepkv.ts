// The typed TypeScript face of KeepKV: options (declared, documented and validated here, once), context
// creation with a policy and a per-sequence KV budget, explicit compression and statistics.
import type { LlamaContext, LlamaContextOptions, LlamaContextSequence, LlamaModel } from "node-llama-cpp";

export const keepKvPolicies = ["off", "window", "evict", "merge-naive", "keepkv"] as const;
export type KeepKvPolicy = typeof keepKvPolicies[number];

export const keepKvVariants = ["paper", "votes", "key"] as const;
export type KeepKvVariant = typeof keepKvVariants[number];

export type KeepKvErrorCode =
    | "KEEPKV_INVALID_OPTION"
    | "KEEPKV_UNSUPPORTED_MODEL"
    | "KEEPKV_NOT_PATCHED"
    | "KEEPKV_FAILED";

export class KeepKvError extends Error {
    constructor(readonly code: KeepKvErrorCode, message: string, readonly option?: string) {
        super(message);
        this.name = "KeepKvError";
    }
}

/** What a user sets. Every field is optional; `resolveKeepKvSettings` fills the defaults and validates. */
export type KeepKvOptions = {
    /** Compression policy. Default "keepkv". "off" is vanilla llama.cpp and costs nothing. */
    policy?: KeepKvPolicy,
    /** ZIP-merge variant used by the "keepkv" policy. */
    variant?: KeepKvVariant,
    /**
     * KV budget per sequence: an integer number of cells (>= 2), or a fraction in (0, 1] of the logical
     * context size. null: no automatic compression (explicit `compressSequence` only). Default null.
     */
    budget?: number | null,
    /** First positions of a sequence that never leave the cache (attention sinks). Default 4. */
    sinks?: number,
    /** Last positions of a sequence that never leave the cache. Default 32. */
    recent?: number,
    /** Cosine similarity below which a leaving cell is evicted instead of merged, in (0, 1]. Default 0.8. */
    threshold?: number
};

export type KeepKvSettings = Required<Omit<KeepKvOptions, "budget">> & {
    /** the budget in cells per sequence, or null */
    budgetCells: number | null
};

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
    /** leaving cells merged into a retained cell (in cell equivalents: merged layer-head slots / slots per cell) */
    merges: number,
    /** leaving cells dropped without a merge (cell equivalents) */
    evictions: number,
    /** compression events */
    compressions: number,
    /** time spent compressing, seconds */
    compressionSeconds: number,
    /** largest vote of any cell, layer and head (1 for an uncompressed sequence) */
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
    /** K/V bytes a full (uncompressed) cache of the logical context would allocate */
    kvBytesFull: number,
    merges: number,
    evictions: number,
    compressions: number,
    compressionSeconds: number,
    sequences: KeepKvSequenceStats[]
};

export const keepKvDefaults = {
    policy: "keepkv",
    variant: "key",
    budget: null,
    sinks: 4,
    recent: 32,
    threshold: 0.8
} as const satisfies KeepKvOptions;

function invalid(option: string, message: string): KeepKvError {
    return new KeepKvError("KEEPKV_INVALID_OPTION", `invalid KeepKV option "${option}": ${message}`, option);
}

function isInt(value: unknown): value is number {
    return typeof value === "number" && Number.isInteger(value);
}

/**
 * Fills defaults and validates. `contextSize` is the logical context per sequence, `batchSize` the
 * ubatch: a budget must leave room for the sinks, the recent window and one ubatch.
 */
export function resolveKeepKvSettings(options: KeepKvOptions, contextSize: number): KeepKvSettings {
    const policy = options.policy ?? keepKvDefaults.policy;
    if (!(keepKvPolicies as readonly string[]).includes(policy))
        throw invalid("policy", `unknown policy ${JSON.stringify(policy)}; use one of ${keepKvPolicies.join(", ")}`);
    const variant = options.variant ?? keepKvDefaults.variant;
    if (!(keepKvVariants as readonly string[]).includes(variant))
        throw invalid("variant", `unknown variant ${JSON.stringify(variant)}; use one of ${keepKvVariants.join(", ")}`);
    const sinks = options.sinks ?? keepKvDefaults.sinks;
    if (!isInt(sinks) || sinks < 0)
        throw invalid("sinks", `must be an integer >= 0, got ${String(sinks)}`);
    const recent = options.recent ?? keepKvDefaults.recent;
    if (!isInt(recent) || recent < 0)
        throw invalid("recent", `must be an integer >= 0, got ${String(recent)}`);
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
            throw invalid("budget", "a budget needs a compression policy; policy is \"off\"");
        if (budgetCells > contextSize)
            throw invalid("budget", `${budgetCells} cells is more than the logical context (${contextSize})`);
        if (budgetCells < sinks + recent + 1)
            throw invalid("budget", `${budgetCells} cells cannot hold the ${sinks} sinks and the ${recent} recent cells plus one more`);
    }
    return { policy, variant, sinks, recent, threshold, budgetCells };
}

export type KeepKvContextOptions = Omit<LlamaContextOptions, "contextSize"> & {
    contextSize: number,
    keepKv?: KeepKvOptions
};

/** Creates a context with KeepKV settings. */
export async function createKeepKvContext(model: LlamaModel, options: KeepKvContextOptions): Promise<LlamaContext> {
    const { keepKv, ...contextOptions } = options;
    const settings = resolveKeepKvSettings(keepKv ?? { policy: "off" }, options.contextSize);
    if (settings.policy !== "off")
        throw new KeepKvError("KEEPKV_FAILED", `policy "${settings.policy}" is not available in this build yet`);
    return await model.createContext(contextOptions);
}

/** Per-sequence statistics. */
export function keepKvSequenceStats(sequence: LlamaContextSequence): KeepKvSequenceStats {
    const used = sequence.nextTokenIndex;
    return {
        sequenceId: (sequence as unknown as { _sequenceId: number })._sequenceId,
        logicalTokens: used,
        cellsUsed: used,
        budget: null,
        capacity: sequence.context.contextSize,
        kvBytesUsed: 0,
        merges: 0,
        evictions: 0,
        compressions: 0,
        compressionSeconds: 0,
        voteMax: 1,
        voteMean: 1
    };
}

/** Context-wide statistics, with every sequence's. */
export function keepKvContextStats(context: LlamaContext, sequences: readonly LlamaContextSequence[]): KeepKvContextStats {
    const perSequence = sequences.map((s) => keepKvSequenceStats(s));
    return {
        policy: "off",
        capacityCells: context.contextSize * context.totalSequences,
        kvBytesAllocated: 0,
        kvBytesUsed: 0,
        kvBytesFull: 0,
        merges: 0,
        evictions: 0,
        compressions: 0,
        compressionSeconds: 0,
        sequences: perSequence
    };
}
