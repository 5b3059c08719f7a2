// The one place that reaches node-llama-cpp's native objects: a context's addon object, a sequence's id and the
// binding module. Their types come from the .d.ts files that the node-llama-cpp patches extend
// (patches/node-llama-cpp), so the engine, the benchmarks and the tests call the native methods typed, without
// copies of their signatures.
import { withLock } from "lifecycle-utils";
import type { Llama, LlamaContext, LlamaContextSequence, Token } from "node-llama-cpp";
import { KeepKvError } from "../../lib/keepkv-options.js";

export type NativeContext = LlamaContext["_ctx"];

type KeepKvMethodName =
    "keepKvCompress" | "keepKvSelect" | "keepKvReadStats" | "keepKvSetVote" | "keepKvGetCellPositions" |
    "getOutputLogits" | "copySequenceCells" | "keepKvSetParams";

/** The native methods the KeepKV patches add; a vanilla binary has none of them. */
export type NativeKeepKv = Required<Pick<NativeContext, KeepKvMethodName>>;

export type NativeKeepKvStats = Awaited<ReturnType<NativeKeepKv["keepKvReadStats"]>>;
export type NativeSequenceStats = NonNullable<NativeKeepKvStats["sequences"][number]>;
export type NativeContextStats = NonNullable<NativeKeepKvStats["context"]>;

export function nativeContextOf(context: LlamaContext): NativeContext {
    return context._ctx;
}

export function nativeSequenceIdOf(sequence: LlamaContextSequence): number {
    return sequence._sequenceId;
}

const claimedSequences = new WeakMap<LlamaContext, LlamaContextSequence[]>();

/**
 * A sequence of `context` for calls by its native id (decodeRaw, removeCellsRaw, copyCellsRaw), kept alive as
 * long as the context. node-llama-cpp clears the cells of a sequence object that is garbage-collected (its
 * FinalizationRegistry calls disposeSequence), and a call by id does not keep the object reachable: a sequence
 * taken only for its id lost all its cells at whatever moment the collector ran (what bench:longctx once took
 * for an engine fault; results/longctx-dev/shared-context-fault-diagnosis.md).
 */
export function claimSequence(context: LlamaContext): LlamaContextSequence {
    const sequence = context.getSequence();
    const claimed = claimedSequences.get(context) ?? [];
    claimed.push(sequence);
    claimedSequences.set(context, claimed);
    return sequence;
}

/** The KeepKV version string of a loaded binary, or null for a binary without the patches. */
export function keepKvVersionOf(llama: Llama): string | null {
    const bindings = llama._bindings;
    return typeof bindings.keepKvVersion === "function" ? bindings.keepKvVersion() : null;
}

function hasKeepKv(native: NativeContext): native is NativeContext & NativeKeepKv {
    return native.keepKvCompress != null && native.keepKvSelect != null && native.keepKvReadStats != null &&
        native.keepKvSetVote != null && native.keepKvGetCellPositions != null && native.getOutputLogits != null &&
        native.copySequenceCells != null && native.keepKvSetParams != null;
}

/** A context's addon object with the KeepKV methods; KEEPKV_NOT_PATCHED for a binary without them. */
export function nativeKeepKvOf(context: LlamaContext): NativeContext & NativeKeepKv {
    const native = nativeContextOf(context);
    if (!hasKeepKv(native))
        throw new KeepKvError("KEEPKV_NOT_PATCHED", "this llama.cpp binary has no KeepKV: load it with loadPatchedLlama()");
    return native;
}

/** Runs `fn` under node-llama-cpp's own context lock, which its batch dispatch holds while it decodes. */
export async function underContextLock<T>(context: LlamaContext, fn: () => T | Promise<T>): Promise<T> {
    return await withLock([context as object, "context"], async () => await fn());
}

/**
 * One decode, outside node-llama-cpp's sequences (benchmarks and tests): each item puts `tokens` into sequence
 * `seq` from position `pos` and asks for the logits at `outputs` (indexes into its tokens; default its last).
 * Returns the logits of each item's outputs, in order (none with `readLogits` false: what a vanilla binary can
 * do). Runs under the context lock.
 */
export async function decodeRaw(
    context: LlamaContext, items: readonly { seq: number, pos: number, tokens: readonly Token[], outputs?: readonly number[] }[],
    readLogits = true
): Promise<Float32Array[][]> {
    return await underContextLock(context, async () => {
        const native = nativeContextOf(context);
        const keepKv = readLogits ? nativeKeepKvOf(context) : null;
        native.initBatch(items.reduce((n, x) => n + x.tokens.length, 0));
        let offset = 0;
        const batchIndexes: number[][] = [];
        for (const { seq, pos, tokens, outputs = [tokens.length - 1] } of items) {
            native.addToBatch(seq, pos, Uint32Array.from(tokens), Uint32Array.from(outputs));
            batchIndexes.push(outputs.map((i) => offset + i));
            offset += tokens.length;
        }
        await native.decodeBatch();
        if (keepKv == null)
            return [];
        return batchIndexes.map((indexes) => indexes.map((i) => {
            const logits = keepKv.getOutputLogits(i);
            if (logits == null)
                throw new Error(`no logits for output ${i} of the batch`);
            return logits;
        }));
    });
}

/** Removes the cells of sequence `seq` in [p0, p1) (llama_memory_seq_rm), under the context lock. */
export async function removeCellsRaw(context: LlamaContext, seq: number, p0: number, p1: number): Promise<void> {
    await underContextLock(context, () => nativeContextOf(context).removeTokenCellsFromSequence(seq, p0, p1));
}

/** The destination sequence also owns the source's cells in [p0, p1) (llama_memory_seq_cp), under the context lock. */
export async function copyCellsRaw(context: LlamaContext, src: number, dst: number, p0 = -1, p1 = -1): Promise<void> {
    await underContextLock(context, () => nativeKeepKvOf(context).copySequenceCells(src, dst, p0, p1));
}
