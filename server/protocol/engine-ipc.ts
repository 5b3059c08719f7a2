// The protocol between the server and its engine child process (Node IPC, JSON serialisation): the one
// contract of the two processes, so it imports nothing of either (server/supervisor/ speaks it in the
// parent, server/engine/engine-process.ts in the child).
// Timestamps are monoMs(): CLOCK_MONOTONIC, the same clock in both processes, so the server can measure
// how long a message spent crossing the boundary.
import type { KeepKvOptions, KeepKvPolicy } from "../../lib/keepkv-options.js";
import type { ErrorCode } from "./errors.js";
import type { ChatMessage } from "./ws-messages.js";

export const kvCacheTypes = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"] as const;
export type KvCacheType = typeof kvCacheTypes[number];

export const chatTemplateModes = ["auto", "plain", "general"] as const;
export type ChatTemplateMode = typeof chatTemplateModes[number];

export const flashAttentionModes = ["off", "on", "auto"] as const;
export type FlashAttentionMode = typeof flashAttentionModes[number];

/** Milliseconds on the system-wide monotonic clock (comparable between processes on one machine). */
export function monoMs(): number {
    return Number(process.hrtime.bigint()) / 1e6;
}

export type EngineModelSettings = {
    modelPath: string,
    /** logical context per sequence, resolved (never 0) */
    contextSize: number,
    sequences: number,
    batchSize: number,
    threads: number,
    gpuLayers: number,
    flashAttention: FlashAttentionMode,
    cacheTypeK: KvCacheType,
    cacheTypeV: KvCacheType,
    chatTemplate: ChatTemplateMode,
    keepKv: KeepKvOptions
};

export type EngineModelInfo = {
    modelPath: string,
    /** file name: the model id of the API */
    name: string,
    architecture: string,
    trainContextSize: number,
    contextSize: number,
    sequences: number,
    /** what turns messages into a prompt: "plain", "general" or the chat wrapper's name */
    chatFormat: string,
    keepKvVersion: string | null,
    policy: string
};

export type SamplingSettings = {
    temperature: number,
    topK: number,
    topP: number,
    minP: number,
    repeatPenalty: number,
    seed: number
};

export type GenerateJob = {
    job: number,
    slot: number,
    input: { messages: ChatMessage[] } | { prompt: string },
    /** null: until the context is full */
    maxTokens: number | null,
    maxPromptTokens: number,
    sampling: SamplingSettings,
    stop: string[],
    /** the sequence's cache holds another principal's tokens: empty it first, reuse nothing */
    clearCache: boolean,
    /** the conversation whose cache the sequence holds after this job (conversationKey(): principal and id), or null */
    conversationKey: string | null
};

export type EngineFinishReason = "stop" | "length" | "cancel" | "error";

export type ToEngine =
    /** state: where conversation states are saved, or null when they are not */
    | { t: "init", settings: EngineModelSettings, state: StateStoreOptions | null }
    | { t: "generate", job: GenerateJob }
    | { t: "cancel", job: number }
    /** forget a slot's cached tokens (its conversation was evicted) */
    | { t: "release", slot: number }
    | { t: "stats", nonce: number }
    /** load a second model beside the serving one; activate_model swaps it in */
    | { t: "load_model", nonce: number, settings: EngineModelSettings }
    | { t: "activate_model", nonce: number }
    | { t: "discard_model", nonce: number }
    | { t: "shutdown" };

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

/** What the server configures (--state-dir, --state-max-mb, --state-save-idle). */
export type StateStoreOptions = {
    dir: string,
    maxBytes: number,
    /** how long a conversation stays idle before its state is written */
    saveIdleMs: number
};

/** Why a saved state is refused: the metric's label, so a short fixed list. */
export const stateRefusals = ["unreadable", "version", "model", "settings", "checksum", "tokens", "load_failed"] as const;
export type StateRefusal = typeof stateRefusals[number];

export type StateEvent =
    | { event: "saved", bytes: number }
    | { event: "removed", bytes: number }
    | { event: "restored" }
    | { event: "miss" }
    | { event: "refused", reason: StateRefusal, message: string }
    | { event: "save_failed", message: string };

export type EngineStatsSnapshot = {
    context: KeepKvContextStats,
    rssBytes: number
};

export type FromEngine =
    | { t: "ready", info: EngineModelInfo, stats: EngineStatsSnapshot }
    | { t: "init_failed", code: string, message: string }
    | { t: "started", job: number, promptTokens: number, cachedTokens: number, sentAt: number }
    | { t: "tokens", job: number, text: string, n: number, sentAt: number }
    /** a batch of the prompt was evaluated: `evaluated` of its `total` tokens are in the sequence */
    | { t: "progress", job: number, evaluated: number, total: number, sentAt: number }
    | {
        t: "done", job: number, finishReason: EngineFinishReason,
        promptTokens: number, completionTokens: number, cachedTokens: number,
        /** prompt tokens evaluated: all but the cached ones, fewer when the request ended during its prompt */
        promptEvaluated: number,
        /** evaluation of the uncached prompt tokens */
        promptMs: number,
        kv: KeepKvSequenceStats | null,
        error?: { code: ErrorCode, message: string },
        sentAt: number
    }
    | { t: "stats", nonce: number, stats: EngineStatsSnapshot }
    | { t: "heartbeat", rssBytes: number, sentAt: number }
    | { t: "model_loaded", nonce: number, info: EngineModelInfo }
    | { t: "model_load_failed", nonce: number, message: string }
    | { t: "model_activated", nonce: number, info: EngineModelInfo, stats: EngineStatsSnapshot }
    | { t: "model_discarded", nonce: number }
    /** a conversation state was saved, restored, missed, refused or removed; diskBytes: what the folder holds now */
    | ({ t: "state", diskBytes: number } & StateEvent);
