// Wire types of the WebSocket API (/v1/ws). The JSON schemas in ./schemas.ts describe the same shapes;
// both are kept here side by side so that a change to one is seen next to the other.
import type { ErrorCode, WireError } from "./errors.js";

export const wsProtocolVersion = 1;

export type ChatRole = "system" | "user" | "assistant";
export type ChatMessage = { role: ChatRole, content: string };

/** Sampling parameters, in OpenAI / llama-server names. */
export type SamplingParams = {
    max_tokens?: number,
    temperature?: number,
    top_p?: number,
    top_k?: number,
    min_p?: number,
    repeat_penalty?: number,
    seed?: number,
    stop?: string | string[]
};

// ---- client -> server

export type WsChatMessage = SamplingParams & {
    type: "chat",
    /** chosen by the client, unique among its requests in flight on this socket */
    id: string,
    messages?: ChatMessage[],
    prompt?: string,
    /** continue a conversation: the server reuses the sequence that holds its cache while it is held */
    conversation_id?: string
};
export type WsCancelMessage = { type: "cancel", id: string };
export type WsAuthMessage = { type: "auth", token: string };
export type WsPingMessage = { type: "ping", id?: string };
/** asks for a server-issued conversation id (answered with `conversation`) */
export type WsNewConversationMessage = { type: "new_conversation", id?: string };
export type WsClientMessage = WsChatMessage | WsCancelMessage | WsAuthMessage | WsPingMessage | WsNewConversationMessage;

// ---- server -> client

export type FinishReason = "stop" | "length" | "cancel" | "error" | "shutdown";
export const finishReasons: readonly FinishReason[] = ["stop", "length", "cancel", "error", "shutdown"];

export type Usage = {
    prompt_tokens: number,
    completion_tokens: number,
    total_tokens: number,
    /** prompt tokens whose KV state was reused from the conversation's cache */
    cached_tokens: number
};

export type Timings = {
    /** waiting for a sequence */
    queue_ms: number,
    /** evaluating the prompt (the tokens not found in the cache) */
    prompt_ms: number,
    /** from acceptance to the first generated token */
    ttft_ms: number,
    /** from the first to the last generated token */
    generation_ms: number,
    /** from acceptance to the end */
    total_ms: number,
    /** generated tokens per second after the first one */
    tokens_per_second: number
};

/**
 * The KV statistics of one sequence (see KeepKvSequenceStats), in a final message and in GET /v1/kv:
 * its state (cells, budget, capacity, bytes, votes) and what the compression did (merges, evictions,
 * compressions, compression_seconds).
 */
export type WireSequenceKv = {
    logical_tokens: number,
    cells_used: number,
    budget: number | null,
    capacity: number,
    kv_bytes_used: number,
    merges: number,
    evictions: number,
    compressions: number,
    compression_seconds: number,
    vote_max: number,
    vote_mean: number
};

/** The KV statistics of the request's sequence when it finished: its state at the end, and what the
 *  compression did during this request. */
export type WireKvStats = { sequence: number, policy: string } & WireSequenceKv;

export type WsHelloMessage = {
    type: "hello",
    protocol: number,
    model: string | null,
    auth_required: boolean,
    max_message_bytes: number
};
export type WsStartMessage = {
    type: "start",
    id: string,
    model: string,
    conversation_id: string | null,
    created: number,
    /** its place in the queue when it was accepted, from 1 (the next to run); 0: it runs at once */
    queue_position: number
};
export type WsDeltaMessage = {
    type: "delta",
    id: string,
    /** 0, 1, 2, ... per request; a gap never happens (deltas are coalesced, not dropped) */
    seq: number,
    text: string,
    /** generated tokens this delta completes (more than one when deltas were coalesced; 0 when the text
     *  was held back from tokens already counted, e.g. a possible stop string that did not match) */
    tokens: number
};
/**
 * How far the evaluation of a long prompt is: sent after each batch of the prompt but the last (a prompt
 * of one batch sends none), before the first delta. Advisory: skipped while the socket is backed up.
 */
export type WsProgressMessage = {
    type: "progress",
    id: string,
    /** prompt tokens evaluated so far, counting those the conversation's cache already held */
    evaluated_tokens: number,
    /** tokens of the whole prompt */
    prompt_tokens: number
};
export type WsFinalMessage = {
    type: "final",
    id: string,
    finish_reason: FinishReason,
    usage: Usage,
    timings: Timings,
    kv: WireKvStats | null,
    /** present when finish_reason is "error" */
    error?: WireError
};
export type WsErrorMessage = {
    type: "error",
    /** the request the error is about, when there is one */
    id: string | null,
    code: ErrorCode,
    message: string
};
export type WsPongMessage = { type: "pong", id: string | null };
export type WsConversationMessage = { type: "conversation", id: string | null, conversation_id: string };
export type WsAuthOkMessage = { type: "auth_ok" };
export type WsServerMessage = WsHelloMessage | WsStartMessage | WsProgressMessage | WsDeltaMessage | WsFinalMessage | WsErrorMessage | WsPongMessage | WsAuthOkMessage
    | WsConversationMessage;
