// Scoring text with a context: the negative log-likelihood of every next token, decoding in chunks so that
// a context with a KeepKV budget compresses as it goes (a streaming evaluation).
import type { LlamaContext, Token } from "node-llama-cpp";
import { decodeRaw, removeCellsRaw } from "../../server/engine/native-context.js";

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
    await removeCellsRaw(context, seq, 0, -1);
    const nll: number[] = [];
    for (let start = 0; start < tokens.length - 1; start += chunk) {
        const part = tokens.slice(start, Math.min(start + chunk, tokens.length - 1));
        const wanted: number[] = [];
        for (let i = 0; i < part.length; i++)
            if (start + i >= scoreFrom)
                wanted.push(i);
        const [outputs] = await decodeRaw(context, [{ seq, pos: start, tokens: part, outputs: wanted }]);
        outputs!.forEach((logits, k) => {
            const i = start + wanted[k]!;
            nll.push(-logSoftmaxAt(logits, tokens[i + 1]!));
        });
    }
    return nll;
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
    await removeCellsRaw(context, seq, 0, -1);
    let logits: Float32Array | null = null;
    for (let start = 0; start < prompt.length; start += chunk) {
        const [[last]] = await decodeRaw(context, [{ seq, pos: start, tokens: prompt.slice(start, start + chunk) }]);
        logits = last!;
    }
    if (logits == null)
        throw new Error("no logits");
    return logits;
}

/** Greedy continuation of sequence `seq` from position `pos`, where `logits` are the last token's. */
export async function continueGreedy(context: LlamaContext, seq: number, pos: number, logits: Float32Array, n: number): Promise<Token[]> {
    const out: Token[] = [];
    let last = logits;
    for (let i = 0; i < n; i++) {
        const token = argmax(last) as Token;
        out.push(token);
        const [[next]] = await decodeRaw(context, [{ seq, pos: pos + i, tokens: [token] }]);
        last = next!;
    }
    return out;
}

/**
 * Greedy generation by direct decoding (deterministic, no sampler): the prompt in chunks, then one token at a
 * time. Returns the generated tokens.
 */
export async function greedyGenerate(context: LlamaContext, seq: number, prompt: Token[], n: number, chunk: number): Promise<Token[]> {
    return await continueGreedy(context, seq, prompt.length, await evaluatePrompt(context, seq, prompt, chunk), n);
}
