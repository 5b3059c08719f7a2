// Scoring text with a context: the negative log-likelihood of every next token, decoding in chunks so that
// a context with a KeepKV budget compresses as it goes (a streaming evaluation).
import { withLock } from "lifecycle-utils";
import type { LlamaContext, Token } from "node-llama-cpp";

type RawAddon = {
    initBatch(size: number): void,
    addToBatch(sequenceId: number, firstTokenSequenceIndex: number, tokens: Uint32Array, logitIndexes: Uint32Array): Uint32Array,
    decodeBatch(): Promise<void>,
    getOutputLogits(index: number): Float32Array | null,
    removeTokenCellsFromSequence(sequenceId: number, startPos: number, endPos: number): boolean
};

function addonOf(context: LlamaContext): RawAddon {
    return (context as unknown as { _ctx: RawAddon })._ctx;
}

export function logSoftmaxAt(logits: Float32Array, token: number): number {
    let max = -Infinity;
    for (const v of logits)
        max = Math.max(max, v);
    let sum = 0;
    for (const v of logits)
        sum += Math.exp(v - max);
    return logits[token]! - max - Math.log(sum);
}

export function argmax(logits: Float32Array): number {
    let best = 0;
    for (let i = 1; i < logits.length; i++)
        if (logits[i]! > logits[best]!)
            best = i;
    return best;
}

/**
 * Decodes `tokens` into sequence `seq` (from position 0; the sequence is cleared first), `chunk` tokens at a
 * time, and returns nll[i] = -ln p(tokens[i + 1] | tokens[0..i]) for i >= scoreFrom.
 */
export async function streamingNll(context: LlamaContext, seq: number, tokens: Token[], chunk: number, scoreFrom = 0): Promise<number[]> {
    return await withLock([context as object, "context"], async () => {
        const a = addonOf(context);
        a.removeTokenCellsFromSequence(seq, 0, -1);
        const nll: number[] = [];
        for (let start = 0; start < tokens.length - 1; start += chunk) {
            const part = tokens.slice(start, Math.min(start + chunk, tokens.length - 1));
            const wanted: number[] = [];
            for (let i = 0; i < part.length; i++)
                if (start + i >= scoreFrom)
                    wanted.push(i);
            a.initBatch(part.length);
            a.addToBatch(seq, start, Uint32Array.from(part), Uint32Array.from(wanted));
            await a.decodeBatch();
            for (let k = 0; k < wanted.length; k++) {
                const logits = a.getOutputLogits(wanted[k]!);
                if (logits == null)
                    throw new Error("no logits");
                const i = start + wanted[k]!;
                nll.push(-logSoftmaxAt(logits, tokens[i + 1]!));
            }
        }
        return nll;
    });
}

/**
 * Perplexity of a text under a full cache of at most `window` tokens: sliding windows with a stride of
 * window/2, each scoring its second half (the first window scores everything).
 */
export async function windowedPerplexity(context: LlamaContext, tokens: Token[], window: number): Promise<number> {
    const stride = Math.floor(window / 2);
    let total = 0;
    let count = 0;
    for (let start = 0; ; start += stride) {
        const part = tokens.slice(start, start + window);
        const nll = await streamingNll(context, 0, part, window, start === 0 ? 0 : stride - 1);
        for (const v of nll)
            total += v;
        count += nll.length;
        if (start + window >= tokens.length)
            break;
    }
    return Math.exp(total / count);
}

/** Evaluates a prompt into sequence `seq` (cleared first), `chunk` tokens at a time; returns the last logits. */
export async function evaluatePrompt(context: LlamaContext, seq: number, prompt: Token[], chunk: number): Promise<Float32Array> {
    return await withLock([context as object, "context"], async () => {
        const a = addonOf(context);
        a.removeTokenCellsFromSequence(seq, 0, -1);
        let logits: Float32Array | null = null;
        for (let start = 0; start < prompt.length; start += chunk) {
            const part = prompt.slice(start, start + chunk);
            a.initBatch(part.length);
            a.addToBatch(seq, start, Uint32Array.from(part), Uint32Array.from([part.length - 1]));
            await a.decodeBatch();
            logits = a.getOutputLogits(part.length - 1);
        }
        if (logits == null)
            throw new Error("no logits");
        return logits;
    });
}

/** Greedy continuation of sequence `seq` from position `pos`, where `logits` are the last token's. */
export async function continueGreedy(context: LlamaContext, seq: number, pos: number, logits: Float32Array, n: number): Promise<Token[]> {
    return await withLock([context as object, "context"], async () => {
        const a = addonOf(context);
        const out: Token[] = [];
        let last: Float32Array | null = logits;
        for (let i = 0; i < n; i++) {
            if (last == null)
                throw new Error("no logits");
            const token = argmax(last) as Token;
            out.push(token);
            a.initBatch(1);
            a.addToBatch(seq, pos + i, Uint32Array.from([token]), Uint32Array.from([0]));
            await a.decodeBatch();
            last = a.getOutputLogits(0);
        }
        return out;
    });
}

/**
 * Greedy generation by direct decoding (deterministic, no sampler): the prompt in chunks, then one token at a
 * time. Returns the generated tokens.
 */
export async function greedyGenerate(context: LlamaContext, seq: number, prompt: Token[], n: number, chunk: number): Promise<Token[]> {
    return await continueGreedy(context, seq, prompt.length, await evaluatePrompt(context, seq, prompt, chunk), n);
}
