// Error codes that clients may rely on, shared by the WebSocket and HTTP APIs. Each code has a fixed
// HTTP status and OpenAI error type; the message is for humans and may change.
import { errorMessage } from "../../lib/error-message.js";

export const errorCodes = {
    invalid_json: { status: 400, type: "invalid_request_error", doc: "The message or body is not valid JSON." },
    invalid_message: { status: 400, type: "invalid_request_error", doc: "The message does not match its schema; the message names the field." },
    unknown_type: { status: 400, type: "invalid_request_error", doc: "A WebSocket message with a `type` the server does not know." },
    missing_id: { status: 400, type: "invalid_request_error", doc: "A `chat` or `cancel` WebSocket message without an `id`." },
    duplicate_id: { status: 400, type: "invalid_request_error", doc: "A `chat` whose `id` is already in flight on this socket." },
    not_found: { status: 404, type: "not_found_error", doc: "`cancel` of an id that is not in flight, or an unknown route." },
    prompt_too_long: { status: 400, type: "invalid_request_error", doc: "The prompt has more tokens than the context (or `max-prompt-tokens`) allows." },
    unauthorized: { status: 401, type: "authentication_error", doc: "Missing or wrong bearer token." },
    forbidden: { status: 403, type: "permission_error", doc: "The key is valid but its role may not use this endpoint: `/admin/*` takes admin keys, `/metrics` metrics and admin keys, the rest of the API user and admin keys. On a WebSocket, also an `auth` with another principal's key than the one the socket is authenticated as (nothing changes)." },
    forbidden_origin: { status: 403, type: "permission_error", doc: "The browser Origin is not in `allowed-origins`." },
    forbidden_host: { status: 403, type: "permission_error", doc: "The Host header names neither this machine nor an `allowed-hosts` entry (DNS rebinding protection)." },
    model_not_found: { status: 404, type: "invalid_request_error", doc: "No such model in the models directory." },
    insufficient_memory: { status: 400, type: "invalid_request_error", doc: "The model's weights and KV cache (`sequences` x the budget or context) need more memory than is available (`memory-limit`); the previous model keeps serving." },
    invalid_model: { status: 400, type: "invalid_request_error", doc: "The model file is not a usable GGUF (not GGUF, truncated, unsupported architecture, failed to load); the previous model keeps serving." },
    conversation_busy: { status: 409, type: "invalid_request_error", doc: "Another request of the same conversation is in flight." },
    too_many_requests: { status: 429, type: "rate_limit_error", doc: "This socket has `max-requests-per-socket` requests in flight." },
    rate_limited: { status: 429, type: "rate_limit_error", doc: "This client address or API key sent more than `rate-limit` requests in the last minute (wrong tokens count); the message (and HTTP `Retry-After`) says when to retry." },
    too_many_connections: { status: 503, type: "unavailable_error", doc: "The server has `max-connections` connections open, or this client address has `max-connections-per-address`; the connection closes after this answer." },
    queue_full: { status: 503, type: "unavailable_error", doc: "All sequences are busy and the wait queue is full." },
    queue_timeout: { status: 503, type: "unavailable_error", doc: "The request waited `queue-timeout` seconds without getting a sequence." },
    engine_restarted: { status: 503, type: "unavailable_error", doc: "The engine process died or hung and was restarted; the request was lost. Retrying is safe." },
    engine_unavailable: { status: 503, type: "unavailable_error", doc: "The engine is loading or cannot serve." },
    model_switching: { status: 503, type: "unavailable_error", doc: "Another model switch is in progress." },
    shutting_down: { status: 503, type: "unavailable_error", doc: "The server is shutting down." },
    message_too_large: { status: 413, type: "invalid_request_error", doc: "HTTP body over `max-message-bytes` (a WebSocket frame over it closes the socket with 1009)." },
    internal_error: { status: 500, type: "server_error", doc: "A bug or an unexpected engine failure; the message says what happened." }
} as const;

export type ErrorCode = keyof typeof errorCodes;

export class ApiError extends Error {
    constructor(readonly code: ErrorCode, message: string) {
        super(message);
        this.name = "ApiError";
    }
    get status(): number {
        return errorCodes[this.code].status;
    }
}

export type WireError = { code: ErrorCode, message: string };

export function toWireError(err: unknown): WireError {
    if (err instanceof ApiError)
        return { code: err.code, message: err.message };
    return { code: "internal_error", message: errorMessage(err) };
}

/**
 * The OpenAI error body: `code` is our stable string code (OpenAI also uses string codes), `type` the
 * OpenAI error class. Only /health keeps llama-server's numeric `code`, because probes match it exactly.
 */
export function openAiErrorBody(error: WireError): { error: { message: string, type: string, param: string | null, code: ErrorCode } } {
    return { error: { message: error.message, type: errorCodes[error.code].type, param: null, code: error.code } };
}
