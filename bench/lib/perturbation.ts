// The paper's central claim, measured directly: evaluate a prompt, keep the logits of its last token,
// remove the same cells with every policy, recompute the last token on the compressed cache (its own cell
// is removed and the token decoded again) and compare the logits.
import type { Llama, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import {
    compressSequence, createKeepKvContext, KeepKvPolicy, KeepKvVariant, keepKvSequenceStats, lastOutputLogits,
    selectForCompression
} from "../../server/engine/keepkv.js";

export type CacheType = "f16" | "q8_0" | "q4_0";

export type PerturbationCase = { policy: Exclude<KeepKvPolicy, "off">, variant: KeepKvVariant };

export const allCases: PerturbationCase[] = [
    { policy: "window", variant: "key" },
    { policy: "evict", variant: "key" },
    { policy: "merge-naive", variant: "key" },
    { policy: "keepkv", variant: "paper" },
    { policy: "keepkv", variant: "votes" },
    { policy: "keepkv", variant: "key" }
];

export type PerturbationResult = {
    policy: string,
    variant: string | null,
    cellsRemoved: number,
    maxAbsLogitDiff: number,
    klDivergence: number,
    /** KL against the recomputation with nothing removed (the same kernels): the compression's own part */
    klVsRecomputed: number,
    merges: number,
    evictions: number
};

export type PerturbationOptions = {
    model: LlamaModel,
    tokens: Token[],
    /** fraction of the prompt's cells removed (the same cells for every policy) */
    removeFraction: number,
    flashAttention: boolean,
    cacheType: CacheType,
    /** the K and V cache types where they differ (default: cacheType) */
    cacheTypeK?: CacheType,
    cacheTypeV?: CacheType,
    threshold: number,
    cases?: PerturbationCase[],
    /** CPU threads (default: node-llama-cpp's) */
    threads?: number
};

const ggmlTypeName: Record<CacheType, "F16" | "Q8_0" | "Q4_0"> = { f16: "F16", q8_0: "Q8_0", q4_0: "Q4_0" };

function logSumExp(x: Float32Array): number {
    let m = -Infinity;
    for (const v of x)
        m = Math.max(m, v);
    let s = 0;
    for (const v of x)
        s += Math.exp(v - m);
    return m + Math.log(s);
}

/** max |a - b| and KL(softmax(a) || softmax(b)) */
export function compareLogits(a: Float32Array, b: Float32Array): { maxAbs: number, kl: number } {
    const la = logSumExp(a);
    const lb = logSumExp(b);
    let maxAbs = 0;
    let kl = 0;
    for (let i = 0; i < a.length; i++) {
        maxAbs = Math.max(maxAbs, Math.abs(a[i]! - b[i]!));
        const pa = a[i]! - la;
        kl += Math.exp(pa) * (pa - (b[i]! - lb));
    }
    return { maxAbs, kl: Math.max(0, kl) };
}

async function evaluateLast(sequence: LlamaContextSequence, tokens: Token[]): Promise<Float32Array> {
    await sequence.controlledEvaluate(tokens.map((t, i) => i === tokens.length - 1 ? [t, { generateNext: { probabilities: true } }] : t));
    return await lastOutputLogits(sequence.context);
}

export type PerturbationMeasurement = {
    positions: number[],
    /** the recomputation alone, with nothing removed: decoding the last token again instead of in the prompt's
     *  batch takes other kernels (and, for F16 weights, other roundings), so this is the floor of every row */
    floor: { maxAbsLogitDiff: number, klDivergence: number },
    results: PerturbationResult[]
};

export async function measurePerturbation(opts: PerturbationOptions): Promise<PerturbationMeasurement> {
    const { model, tokens } = opts;
    const n = tokens.length;
    const nRemove = Math.floor(n * opts.removeFraction);
    const contextOptions = {
        contextSize: Math.max(512, n + 16),
        batchSize: Math.max(512, n),
        sequences: 1,
        flashAttention: opts.flashAttention,
        experimentalKvCacheKeyType: ggmlTypeName[opts.cacheTypeK ?? opts.cacheType],
        experimentalKvCacheValueType: ggmlTypeName[opts.cacheTypeV ?? opts.cacheType],
        ...(opts.threads != null ? { threads: opts.threads } : {})
    };

    // the cells to remove: what the score-based policies pick, the same for every policy; and the floor
    let positions: number[];
    let floor: PerturbationMeasurement["floor"];
    let recomputed: Float32Array;
    {
        const context = await createKeepKvContext(model, { ...contextOptions, keepKv: { policy: "evict" } });
        const sequence = context.getSequence();
        const before = await evaluateLast(sequence, tokens);
        positions = await selectForCompression(sequence, nRemove);
        await sequence.eraseContextTokenRanges([{ start: n - 1, end: n }]);
        recomputed = await evaluateLast(sequence, [tokens[n - 1]!]);
        const { maxAbs, kl } = compareLogits(before, recomputed);
        floor = { maxAbsLogitDiff: maxAbs, klDivergence: kl };
        await context.dispose();
    }

    const results: PerturbationResult[] = [];
    for (const c of opts.cases ?? allCases) {
        // merges where the keys allow, whatever the values: this measures what a merge perturbs, not how many
        const context = await createKeepKvContext(model, {
            ...contextOptions, keepKv: { policy: c.policy, variant: c.variant, threshold: opts.threshold, valueThreshold: -1 }
        });
        const sequence = context.getSequence();
        const before = await evaluateLast(sequence, tokens);
        const removed = await compressSequence(sequence, positions);
        await sequence.eraseContextTokenRanges([{ start: n - 1, end: n }]);
        const after = await evaluateLast(sequence, [tokens[n - 1]!]);
        const { maxAbs, kl } = compareLogits(before, after);
        const stats = await keepKvSequenceStats(sequence);
        results.push({
            policy: c.policy,
            variant: c.policy === "keepkv" ? c.variant : null,
            cellsRemoved: removed,
            maxAbsLogitDiff: maxAbs,
            klDivergence: kl,
            klVsRecomputed: compareLogits(recomputed, after).kl,
            merges: stats.merges,
            evictions: stats.evictions
        });
        await context.dispose();
    }
    return { positions, floor, results };
}

/** The first `count` tokens of a text, tokenized by the model. */
export function promptTokens(model: LlamaModel, text: string, count: number): Token[] {
    const tokens = model.tokenize(text.slice(0, count * 12));
    if (tokens.length < count)
        throw new Error(`the text gives ${tokens.length} tokens, ${count} needed`);
    return tokens.slice(0, count);
}

export type { Llama };
