// The typed TypeScript face of KeepKV: context creation with a policy and a per-sequence KV budget, explicit
// compression and statistics. The options are declared and validated in lib/keepkv-options.ts (re-exported
// here), so that the parent process checks them without loading the native addon.
//
// The operations that change or read the cells take node-llama-cpp's own context lock, so they never run while
// a batch of that context is being decoded. The statistics do not: the native side answers them between the
// workers that use the memory (see keepKvReadStats in the node-llama-cpp patches).
import type { LlamaContext, LlamaContextOptions, LlamaContextSequence, LlamaModel } from "node-llama-cpp";
import {
    KeepKvError, keepKvPolicies, keepKvScoreModes, keepKvSelections, keepKvVariants, resolveKeepKvSettings, type KeepKvErrorCode, type KeepKvOptions,
    type KeepKvPolicy, type KeepKvScoreMode, type KeepKvSelection, type KeepKvSettings, type KeepKvVariant
} from "../../lib/keepkv-options.js";
import type { KeepKvContextStats, KeepKvSequenceStats } from "../protocol/engine-ipc.js";
import {
    keepKvVersionOf, nativeKeepKvOf, nativeSequenceIdOf, underContextLock,
    type NativeContextStats, type NativeSequenceStats
} from "./native-context.js";
import { errorMessage } from "../../lib/error-message.js";

export {
    KeepKvError, keepKvPolicies, keepKvScoreModes, keepKvSelections, keepKvVariants, resolveKeepKvSettings, type KeepKvErrorCode, type KeepKvOptions,
    type KeepKvPolicy, type KeepKvScoreMode, type KeepKvSelection, type KeepKvSettings, type KeepKvVariant
};
export type { KeepKvContextStats, KeepKvSequenceStats };

function isInt(value: unknown): value is number {
    return typeof value === "number" && Number.isInteger(value);
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
        protect: settings.protect,
        valueThreshold: settings.valueThreshold,
        score: keepKvScoreModes.indexOf(settings.scoreMode),
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
        const message = errorMessage(err);
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
            return await nativeKeepKvOf(sequence.context).keepKvCompress(nativeSequenceIdOf(sequence),
                typeof what === "number" ? what : Int32Array.from(what));
        } catch (err) {
            throw new KeepKvError("KEEPKV_FAILED", errorMessage(err));
        }
    });
}

/** What a live context's compression can change to (llama_keepkv_set_params): what acts when cells leave. */
export type KeepKvCompressionChange = Pick<KeepKvOptions, "policy" | "variant" | "selection" | "threshold" | "protect" | "valueThreshold">;

/**
 * Changes how a live context compresses: its policy (not to or from "off"), variant, selection, thresholds and
 * protected fraction. The other settings size the cache or shape its graphs and stay. A selection by score is
 * refused where the context keeps no scores (its selection is by recency). For tools that compress the same
 * prompt by several policies (a copy of the sequence each); the server never changes them.
 */
export async function setKeepKvCompression(context: LlamaContext, change: KeepKvCompressionChange): Promise<KeepKvSettings> {
    requireEnabled(context);
    const current = keepKvSettingsOf(context);
    const { budgetCells, ...rest } = current;
    const given = Object.fromEntries(Object.entries(change).filter(([, v]) => v !== undefined));
    const next = resolveKeepKvSettings({ ...rest, budget: budgetCells ?? undefined, ...given }, context.contextSize);
    if (next.policy === "off")
        throw new KeepKvError("KEEPKV_INVALID_OPTION", "the policy of a live context cannot be turned off");
    await underContextLock(context, () => {
        try {
            nativeKeepKvOf(context).keepKvSetParams(toAddonParams(next));
        } catch (err) {
            throw new KeepKvError("KEEPKV_INVALID_OPTION", errorMessage(err));
        }
    });
    contextSettings.set(context, next);
    return next;
}

/** The positions the policy would remove if `n` cells had to leave now, without removing them. */
export async function selectForCompression(sequence: LlamaContextSequence, n: number): Promise<number[]> {
    requireEnabled(sequence.context);
    return await underContextLock(sequence.context, () => Array.from(nativeKeepKvOf(sequence.context).keepKvSelect(nativeSequenceIdOf(sequence), n)));
}

/** The raw logits of an output of the last decoded batch (-1: the last one). For tests and tools. */
export async function lastOutputLogits(context: LlamaContext, index = -1): Promise<Float32Array> {
    return await underContextLock(context, () => {
        const logits = nativeKeepKvOf(context).getOutputLogits(index);
        if (logits == null)
            throw new KeepKvError("KEEPKV_FAILED", `no logits for output ${index} of the last batch`);
        return logits;
    });
}

/** Sets the vote of the cell at `pos` of a sequence, in one layer and KV head. For tests and tools. */
export async function setVote(sequence: LlamaContextSequence, pos: number, layer: number, headKv: number, vote: number): Promise<void> {
    requireEnabled(sequence.context);
    const ok = await underContextLock(sequence.context, () =>
        nativeKeepKvOf(sequence.context).keepKvSetVote(nativeSequenceIdOf(sequence), pos, layer, headKv, vote));
    if (!ok)
        throw new KeepKvError("KEEPKV_FAILED", `no cell at position ${pos} of sequence ${nativeSequenceIdOf(sequence)}, or no layer ${layer} / KV head ${headKv}, or vote ${vote} <= 0`);
}

/** The positions of the cells a sequence holds, sorted (a merged cell: the latest token merged into it). */
export async function cellPositions(sequence: LlamaContextSequence): Promise<number[]> {
    requireEnabled(sequence.context);
    return await underContextLock(sequence.context, () =>
        Array.from(nativeKeepKvOf(sequence.context).keepKvGetCellPositions(nativeSequenceIdOf(sequence)) ?? []));
}

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
    return await nativeKeepKvOf(context).keepKvReadStats(Int32Array.from(sequences, nativeSequenceIdOf));
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
