// Direct use of the native context for low-level tests and benchmarks: decode tokens at chosen positions of chosen
// sequences and read the raw logits, under node-llama-cpp's own context lock.
import type { LlamaContext, Token } from "node-llama-cpp";
import { decodeRaw } from "../../server/engine/native-context.js";

/** Decodes `tokens` into sequence `seq` from position `pos`, returning the logits of the last token. */
export async function rawDecode(context: LlamaContext, seq: number, pos: number, tokens: Token[]): Promise<Float32Array> {
    const [[logits]] = await decodeRaw(context, [{ seq, pos, tokens }]);
    return logits!;
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
    let m = 0;
    for (let i = 0; i < a.length; i++)
        m = Math.max(m, Math.abs(a[i]! - b[i]!));
    return m;
}

/** One decode of several sequences at once: each gets `tokens` from `pos`; returns each one's last logits. */
export async function rawDecodeMany(context: LlamaContext, items: { seq: number, pos: number, tokens: Token[] }[]): Promise<Float32Array[]> {
    return (await decodeRaw(context, items)).map(([logits]) => logits!);
}
