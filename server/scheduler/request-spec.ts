// From API parameters (WebSocket or OpenAI names) to a scheduler RequestSpec, with the sampling defaults
// in one place (llama-server's defaults).
import { randomBytes, randomInt } from "node:crypto";
import type { ChatMessage, SamplingParams } from "../protocol/ws-messages.js";
import type { SamplingSettings } from "../protocol/engine-ipc.js";
import type { RequestSpec } from "./scheduler.js";

export const samplingDefaults = {
    temperature: 0.8,
    top_k: 40,
    top_p: 0.95,
    min_p: 0.05,
    repeat_penalty: 1
} as const;

type Nullable<T> = { [K in keyof T]?: T[K] | null };

export function samplingFrom(params: Nullable<SamplingParams>): SamplingSettings {
    return {
        temperature: params.temperature ?? samplingDefaults.temperature,
        topK: params.top_k ?? samplingDefaults.top_k,
        topP: params.top_p ?? samplingDefaults.top_p,
        minP: params.min_p ?? samplingDefaults.min_p,
        repeatPenalty: params.repeat_penalty ?? samplingDefaults.repeat_penalty,
        seed: params.seed ?? randomInt(0, 2 ** 31)
    };
}

export function stopsFrom(stop: string | string[] | null | undefined): string[] {
    if (stop == null)
        return [];
    return (Array.isArray(stop) ? stop : [stop]).filter((s) => s !== "");
}

/**
 * A server-issued conversation id (POST /v1/conversations, the WebSocket `new_conversation`): `conv_` and
 * 128 random bits in hex, which nobody can guess, not even a client that shares the principal.
 */
export function newConversationId(): string {
    return `conv_${randomBytes(16).toString("hex")}`;
}

export function requestSpec(
    input: { messages: ChatMessage[] } | { prompt: string },
    params: Nullable<SamplingParams>,
    conversationId: string | null | undefined,
    principal: string
): RequestSpec {
    return {
        input,
        principal,
        maxTokens: params.max_tokens ?? null,
        sampling: samplingFrom(params),
        stop: stopsFrom(params.stop),
        conversationId: conversationId ?? null
    };
}
