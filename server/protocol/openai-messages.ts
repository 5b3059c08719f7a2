// Wire types of the OpenAI-compatible endpoints (POST /v1/chat/completions and /v1/completions):
// OpenAI's shapes, with llama-server's `timings` and our `keepkv` (the request's KV statistics) beside
// them. The request bodies are validated by the schemas in ./schemas.ts; errors have the shape of
// openAiErrorBody() in ./errors.ts.
import type { FinishReason, SamplingParams, Timings, WireKvStats } from "./ws-messages.js";

export type OpenAiContentPart = { type: "text", text: string };
export type OpenAiMessage = { role: "system" | "developer" | "user" | "assistant", content?: string | null | OpenAiContentPart[] };

export type OpenAiRequestBody = SamplingParams & {
    /** accepted and ignored: the loaded model answers */
    model?: string,
    stream?: boolean,
    stream_options?: { include_usage?: boolean } | null,
    max_completion_tokens?: number | null,
    conversation_id?: string,
    /** chat completions */
    messages?: OpenAiMessage[],
    /** text completions (of a list, the first) */
    prompt?: string | string[]
};

export type OpenAiUsage = {
    prompt_tokens: number,
    completion_tokens: number,
    total_tokens: number,
    prompt_tokens_details: { cached_tokens: number }
};

export type ChatChoice = {
    index: 0,
    message: { role: "assistant", content: string, refusal: null },
    logprobs: null,
    finish_reason: FinishReason
};
export type TextChoice = { index: 0, text: string, logprobs: null, finish_reason: FinishReason };

/** The answer of a request without `stream`. */
export type CompletionResponse = {
    id: string,
    object: "chat.completion" | "text_completion",
    created: number,
    model: string,
    choices: (ChatChoice | TextChoice)[],
    usage: OpenAiUsage,
    timings: Timings,
    keepkv: WireKvStats | null
};

export type ChatChunkChoice = {
    index: 0,
    /** the first chunk says the role; the last one has no content */
    delta: { role?: "assistant", content?: string },
    logprobs: null,
    finish_reason: FinishReason | null
};
export type TextChunkChoice = { index: 0, text: string, logprobs: null, finish_reason: FinishReason | null };

/** One `data:` event of a streamed answer (which ends with `data: [DONE]`). */
export type CompletionChunk = {
    id: string,
    object: "chat.completion.chunk" | "text_completion",
    created: number,
    model: string,
    /** empty in the usage chunk (stream_options.include_usage) */
    choices: (ChatChunkChoice | TextChunkChoice)[],
    /** in the chunk with the finish reason */
    timings?: Timings,
    keepkv?: WireKvStats | null,
    /** in the last chunk, when stream_options.include_usage asks for it */
    usage?: OpenAiUsage
};
