// Direct use of the native context for low-level tests and benchmarks: decode tokens at chosen positions of chosen
// sequences and read the raw logits, under node-llama-cpp's own context lock.
import { withLock } from "lifecycle-utils";
import type { LlamaContext, Token } from "node-llama-cpp";

type RawAddon = {
    initBatch(size: number): void,
    addToBatch(sequenceId: number, firstTokenSequenceIndex: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array,
    decodeBatch(): Promise<void>,
    getOutputLogits(index: number): Float32Array | null,
    copySequenceCells(src: number, dst: number, p0: number, p1: number): void,
    removeTokenCellsFromSequence(sequenceId: number, startPos: number, endPos: number): boolean
};

function addon(context: LlamaContext): RawAddon {
    return (context as unknown as { _ctx: RawAddon })._ctx;
}

/** Decodes `tokens` into sequence `seq` from position `pos`, returning the logits of the last token. */
export async function rawDecode(context: LlamaContext, seq: number, pos: number, tokens: Token[]): Promise<Float32Array> {
    return await withLock([context as object, "context"], async () => {
        const a = addon(context);
        a.initBatch(tokens.length);
        a.addToBatch(seq, pos, Uint32Array.from(tokens), Uint32Array.from([tokens.length - 1]));
        await a.decodeBatch();
        const logits = a.getOutputLogits(-1);
        if (logits == null)
            throw new Error("no logits");
        return logits;
    });
}

/** The destination sequence also owns the source's cells in [p0, p1) (llama_memory_seq_cp). */
export async function rawCopyCells(context: LlamaContext, src: number, dst: number, p0 = -1, p1 = -1): Promise<void> {
    await withLock([context as object, "context"], () => addon(context).copySequenceCells(src, dst, p0, p1));
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
    let m = 0;
    for (let i = 0; i < a.length; i++)
        m = Math.max(m, Math.abs(a[i]! - b[i]!));
    return m;
}

/** Removes the cells of sequence `seq` in [p0, p1) (llama_memory_seq_rm). */
export async function rawRemoveCells(context: LlamaContext, seq: number, p0: number, p1: number): Promise<void> {
    await withLock([context as object, "context"], () => addon(context).removeTokenCellsFromSequence(seq, p0, p1));
}

/** One decode of several sequences at once: each gets `tokens` from `pos`; returns each one's last logits. */
export async function rawDecodeMany(context: LlamaContext, items: { seq: number, pos: number, tokens: Token[] }[]): Promise<Float32Array[]> {
    return await withLock([context as object, "context"], async () => {
        const a = addon(context);
        a.initBatch(items.reduce((n, x) => n + x.tokens.length, 0));
        let offset = 0;
        const last: number[] = [];
        for (const { seq, pos, tokens } of items) {
            a.addToBatch(seq, pos, Uint32Array.from(tokens), Uint32Array.from([tokens.length - 1]));
            offset += tokens.length;
            last.push(offset - 1);
        }
        await a.decodeBatch();
        return last.map((i) => {
            const logits = a.getOutputLogits(i);
            if (logits == null)
                throw new Error("no logits");
            return logits;
        });
    });
}
