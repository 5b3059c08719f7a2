// JSON schemas of everything a client sends or receives, in one place: the WebSocket messages (both
// directions), the OpenAI-compatible request bodies and the admin body. The server validates with them
// and publishes them at GET /v1/schemas; tests validate the server's own output against them.
import { Ajv, type ErrorObject, type ValidateFunction } from "ajv";
import { errorCodes } from "./errors.js";
import { modelFileErrorCodes } from "./model-file-errors.js";
import { finishReasons } from "./ws-messages.js";

type Schema = Record<string, unknown>;

const idSchema = { type: "string", minLength: 1, maxLength: 128 };

const chatMessageSchema = {
    type: "object",
    properties: {
        role: { enum: ["system", "user", "assistant"] },
        content: { type: "string" }
    },
    required: ["role", "content"],
    additionalProperties: true
};

// Every number bounded on both sides. ajv's "number" refuses Infinity and NaN (JSON.parse makes 1e400
// Infinity) but its "integer" does not, so each integer has a maximum: token counts and top_k fit the
// int32 that llama.cpp takes them as, a seed any safe integer (llama.cpp uses it modulo 2^32).
// repeat_penalty divides positive logits (llama.cpp's penalties sampler): 0 would make them infinite
// and a tiny one overflow the float, so it stays within [0.1, 10] (1 is off).
const int32Max = 2_147_483_647;
const samplingProperties = {
    max_tokens: { type: "integer", minimum: 1, maximum: int32Max },
    temperature: { type: "number", minimum: 0, maximum: 2 },
    top_p: { type: "number", minimum: 0, maximum: 1 },
    top_k: { type: "integer", minimum: 0, maximum: int32Max },
    min_p: { type: "number", minimum: 0, maximum: 1 },
    repeat_penalty: { type: "number", minimum: 0.1, maximum: 10 },
    seed: { type: "integer", minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
    // bounded: the engine looks for every stop string in the text after each token
    stop: {
        anyOf: [
            { type: "string", minLength: 1, maxLength: 256 },
            { type: "array", items: { type: "string", minLength: 1, maxLength: 256 }, maxItems: 8 },
            { type: "null" }
        ]
    }
};

const wsChat = {
    type: "object",
    properties: {
        type: { const: "chat" },
        id: idSchema,
        messages: { type: "array", items: chatMessageSchema, minItems: 1 },
        prompt: { type: "string" },
        conversation_id: idSchema,
        ...samplingProperties
    },
    required: ["type", "id"],
    oneOf: [{ required: ["messages"] }, { required: ["prompt"] }],
    additionalProperties: false
};
const wsCancel = {
    type: "object",
    properties: { type: { const: "cancel" }, id: idSchema },
    required: ["type", "id"],
    additionalProperties: false
};
const wsAuth = {
    type: "object",
    properties: { type: { const: "auth" }, token: { type: "string" } },
    required: ["type", "token"],
    additionalProperties: false
};
const wsPing = {
    type: "object",
    properties: { type: { const: "ping" }, id: idSchema },
    required: ["type"],
    additionalProperties: false
};
const wsNewConversation = {
    type: "object",
    properties: { type: { const: "new_conversation" }, id: idSchema },
    required: ["type"],
    additionalProperties: false
};

const usageSchema = {
    type: "object",
    properties: {
        prompt_tokens: { type: "integer", minimum: 0 },
        completion_tokens: { type: "integer", minimum: 0 },
        total_tokens: { type: "integer", minimum: 0 },
        cached_tokens: { type: "integer", minimum: 0 }
    },
    required: ["prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"],
    additionalProperties: false
};
const timingsSchema = {
    type: "object",
    properties: Object.fromEntries(["queue_ms", "prompt_ms", "ttft_ms", "generation_ms", "total_ms", "tokens_per_second"]
        .map((k) => [k, { type: "number", minimum: 0 }])),
    required: ["queue_ms", "prompt_ms", "ttft_ms", "generation_ms", "total_ms", "tokens_per_second"],
    additionalProperties: false
};
const kvSchema = {
    type: ["object", "null"],
    properties: {
        sequence: { type: "integer", minimum: 0 },
        policy: { type: "string" },
        logical_tokens: { type: "integer", minimum: 0 },
        cells_used: { type: "integer", minimum: 0 },
        budget: { type: ["integer", "null"] },
        capacity: { type: "integer", minimum: 0 },
        kv_bytes_used: { type: "number", minimum: 0 },
        merges: { type: "number", minimum: 0 },
        evictions: { type: "number", minimum: 0 },
        compressions: { type: "number", minimum: 0 },
        compression_seconds: { type: "number", minimum: 0 },
        vote_max: { type: "number" },
        vote_mean: { type: "number" }
    },
    required: ["sequence", "policy", "logical_tokens", "cells_used", "budget", "capacity", "kv_bytes_used",
        "merges", "evictions", "compressions", "compression_seconds", "vote_max", "vote_mean"],
    additionalProperties: false
};
const wireErrorSchema = {
    type: "object",
    properties: { code: { enum: Object.keys(errorCodes) }, message: { type: "string" } },
    required: ["code", "message"],
    additionalProperties: false
};

const serverMessages: Record<string, Schema> = {
    hello: {
        type: "object",
        properties: {
            type: { const: "hello" }, protocol: { type: "integer" }, model: { type: ["string", "null"] },
            auth_required: { type: "boolean" }, max_message_bytes: { type: "integer" }
        },
        required: ["type", "protocol", "model", "auth_required", "max_message_bytes"], additionalProperties: false
    },
    auth_ok: { type: "object", properties: { type: { const: "auth_ok" } }, required: ["type"], additionalProperties: false },
    pong: {
        type: "object", properties: { type: { const: "pong" }, id: { type: ["string", "null"] } },
        required: ["type", "id"], additionalProperties: false
    },
    conversation: {
        type: "object",
        properties: {
            type: { const: "conversation" }, id: { type: ["string", "null"] },
            conversation_id: { type: "string", pattern: "^conv_[0-9a-f]{32}$" }
        },
        required: ["type", "id", "conversation_id"], additionalProperties: false
    },
    start: {
        type: "object",
        properties: {
            type: { const: "start" }, id: idSchema, model: { type: "string" }, conversation_id: { type: ["string", "null"] },
            created: { type: "integer" }, queue_position: { type: "integer", minimum: 0 }
        },
        required: ["type", "id", "model", "conversation_id", "created", "queue_position"], additionalProperties: false
    },
    progress: {
        type: "object",
        properties: {
            type: { const: "progress" }, id: idSchema, evaluated_tokens: { type: "integer", minimum: 0 },
            prompt_tokens: { type: "integer", minimum: 0 }
        },
        required: ["type", "id", "evaluated_tokens", "prompt_tokens"], additionalProperties: false
    },
    delta: {
        type: "object",
        properties: {
            type: { const: "delta" }, id: idSchema, seq: { type: "integer", minimum: 0 }, text: { type: "string" },
            tokens: { type: "integer", minimum: 0 }
        },
        required: ["type", "id", "seq", "text", "tokens"], additionalProperties: false
    },
    final: {
        type: "object",
        properties: {
            type: { const: "final" }, id: idSchema, finish_reason: { enum: finishReasons }, usage: usageSchema,
            timings: timingsSchema, kv: kvSchema, error: wireErrorSchema
        },
        required: ["type", "id", "finish_reason", "usage", "timings", "kv"], additionalProperties: false
    },
    error: {
        type: "object",
        properties: {
            type: { const: "error" }, id: { type: ["string", "null"] }, code: { enum: Object.keys(errorCodes) },
            message: { type: "string" }
        },
        required: ["type", "id", "code", "message"], additionalProperties: false
    }
};

const openAiCommon = {
    model: { type: "string" },
    stream: { type: "boolean" },
    stream_options: { type: ["object", "null"], properties: { include_usage: { type: "boolean" } } },
    n: { type: ["integer", "null"], minimum: 1, maximum: 1 },
    max_completion_tokens: { type: ["integer", "null"], minimum: 1, maximum: int32Max },
    conversation_id: idSchema,
    ...samplingProperties,
    max_tokens: { type: ["integer", "null"], minimum: 1, maximum: int32Max },
    temperature: { type: ["number", "null"], minimum: 0, maximum: 2 },
    top_p: { type: ["number", "null"], minimum: 0, maximum: 1 },
    seed: { type: ["integer", "null"], minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }
};

const chatCompletionBody = {
    type: "object",
    properties: {
        ...openAiCommon,
        messages: {
            type: "array", minItems: 1,
            items: {
                type: "object",
                properties: {
                    role: { enum: ["system", "developer", "user", "assistant"] },
                    content: {
                        anyOf: [
                            { type: "string" },
                            { type: "null" },
                            {
                                type: "array",
                                items: {
                                    type: "object",
                                    properties: { type: { const: "text" }, text: { type: "string" } },
                                    required: ["type", "text"]
                                }
                            }
                        ]
                    }
                },
                required: ["role"]
            }
        }
    },
    required: ["messages"],
    additionalProperties: true
};

const completionBody = {
    type: "object",
    properties: {
        ...openAiCommon,
        prompt: {
            anyOf: [
                { type: "string" },
                { type: "array", items: { type: "string" }, minItems: 1, maxItems: 1 }
            ]
        }
    },
    required: ["prompt"],
    additionalProperties: true
};

const selectModelBody = {
    type: "object",
    properties: { model: { type: "string", minLength: 1 } },
    required: ["model"],
    additionalProperties: false
};

/** Everything published at GET /v1/schemas. */
export const schemas = {
    ws: {
        client: { chat: wsChat, cancel: wsCancel, auth: wsAuth, ping: wsPing, new_conversation: wsNewConversation } as Record<string, Schema>,
        server: serverMessages
    },
    http: {
        chatCompletions: chatCompletionBody,
        completions: completionBody,
        selectModel: selectModelBody
    },
    errorCodes: Object.fromEntries(Object.entries(errorCodes).map(([code, spec]) => [code, { httpStatus: spec.status, type: spec.type, doc: spec.doc }])),
    /** the `error_code` of an invalid entry of GET /v1/models */
    modelFileErrorCodes
};

const ajv = new Ajv({ allErrors: false, strict: false });

function compile(schema: Schema): ValidateFunction {
    return ajv.compile(schema);
}

export const validators = {
    wsClient: Object.fromEntries(Object.entries(schemas.ws.client).map(([k, s]) => [k, compile(s)])) as Record<string, ValidateFunction>,
    wsServer: Object.fromEntries(Object.entries(schemas.ws.server).map(([k, s]) => [k, compile(s)])) as Record<string, ValidateFunction>,
    chatCompletions: compile(chatCompletionBody),
    completions: compile(completionBody),
    selectModel: compile(selectModelBody)
};

/** One readable sentence for the first schema error, naming the field. */
export function describeSchemaError(errors: ErrorObject[] | null | undefined): string {
    const error = errors?.[0];
    if (error == null)
        return "invalid message";
    const field = error.instancePath === "" ? "" : error.instancePath.slice(1).replace(/\//g, ".");
    switch (error.keyword) {
        case "additionalProperties": {
            const name = (error.params as { additionalProperty: string }).additionalProperty;
            return `unknown field ${JSON.stringify(name.length > 64 ? name.slice(0, 64) + "..." : name)}${field === "" ? "" : ` in ${field}`}`;
        }
        case "required":
            return `missing field "${field === "" ? "" : field + "."}${(error.params as { missingProperty: string }).missingProperty}"`;
        case "oneOf":
            return "give exactly one of \"messages\" or \"prompt\"";
        case "enum":
            return `field "${field}" must be one of ${(error.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(", ")}`;
        case "const":
            return `field "${field}" must be ${JSON.stringify((error.params as { allowedValue: unknown }).allowedValue)}`;
        default:
            return field === "" ? `message ${error.message ?? "is invalid"}` : `field "${field}" ${error.message ?? "is invalid"}`;
    }
}
