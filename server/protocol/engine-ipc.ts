// The protocol between the server and its engine child process (Node IPC, JSON serialisation).
// Timestamps are monoMs(): CLOCK_MONOTONIC, the same clock in both processes, so the server can measure
// how long a message spent crossing the boundary.
import type { ChatTemplateMode, FlashAttentionMode, KvCacheType } from "../config/options.js";
import type { ErrorCode } from "./errors.js";
import type { ChatMessage } from "./ws-messages.js";
import type { KeepKvContextStats, KeepKvOptions, KeepKvSequenceStats } from "../engine/keepkv.js";
import type { StateEvent, StateStoreOptions } from "../engine/sequence-state-store.js";

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
