// Wire types of the HTTP API's own routes (health, readiness, slots, KV statistics, models,
// conversations, admin, dashboard config), beside the WebSocket ones (./ws-messages.ts). The OpenAI
// routes answer in OpenAI's shapes, and every error in the one shape of ./errors.ts.
import type { EngineModelInfo } from "./engine-ipc.js";
import type { ModelFileErrorCode } from "./model-file-errors.js";
import type { WireSequenceKv } from "./ws-messages.js";

/** The engine process as the supervisor sees it. */
export type EngineState = "starting" | "ready" | "restarting" | "stopping" | "stopped";

/** The serving model's file compared with what the engine loaded: a file replaced or deleted on disk
 *  keeps serving from memory until the next engine start, which needs the file again. */
export type ModelFileState = "ok" | "missing" | "changed";

/** llama-server's body for a server that cannot serve (503). */
export type UnavailableBody = { error: { code: 503, message: string, type: "unavailable_error" } };

/** The engine's details in /health and /admin/model. */
export type EngineReport = {
    state: EngineState,
    pid: number | null,
    restarts: number,
    rss_bytes: number,
    last_exit: { reason: string, code: number | null, signal: string | null, at: string } | null,
    /** why the engine cannot start again (a restart failed), until it can */
    last_start_error: { message: string, at: string } | null,
    /** the serving model's file on disk: ok, missing or changed since the engine loaded it */
    model_file: ModelFileState | null
};

/** GET /health: 200 when serving, 503 otherwise; `model` and `engine` only for callers allowed the details. */
export type HealthResponse =
    | { status: "ok", model?: string, engine?: EngineReport }
    | UnavailableBody & { engine?: EngineReport };

/** GET /ready and GET /slots?fail_on_no_slot=1 (503 when not ready, or when no sequence is available). */
export type Readiness = { ready: boolean, sequences: number, available: number, running: number, waiting: number };
export type ReadinessResponse = ({ status: "ok" } | UnavailableBody) & Readiness;

/** GET /slots: one entry per sequence. */
export type SlotEntry = {
    id: number,
    is_processing: boolean,
    /** shown only to the conversation's principal and to admins */
    conversation_id: string | null
};

/** A sequence in GET /v1/kv. */
export type KvSequenceEntry = {
    sequence: number,
    /** a request runs on it */
    busy: boolean,
    /** a conversation holds it (and its cache) */
    held: boolean,
    /** shown only to the conversation's principal and to admins */
    conversation_id: string | null
} & WireSequenceKv;

/** GET /v1/kv: the KV statistics of the context right now (the same numbers as the keepkv_kv_* metrics). */
export type KvResponse = {
    policy: string,
    capacity_cells: number,
    kv_bytes_allocated: number,
    kv_bytes_used: number,
    kv_bytes_full: number,
    merges: number,
    evictions: number,
    compressions: number,
    compression_seconds: number,
    engine_rss_bytes: number,
    sequences: KvSequenceEntry[]
};

/** An entry of GET /v1/models (OpenAI's model object, and what the catalog knows of the file). */
export type ModelEntry = {
    id: string,
    object: "model",
    created: number,
    owned_by: "keepkv",
    /** the engine serves this file now */
    loaded: boolean,
    valid: boolean,
    /** why the file cannot be used (when valid is false) */
    error: string | null,
    error_code: ModelFileErrorCode | null,
    size_bytes: number,
    architecture: string | null,
    name: string | null,
    context_length: number | null,
    parameters: number | null,
    has_chat_template: boolean,
    keepkv_supported: boolean,
    keepkv_reason: string | null
};

/** GET /v1/models */
export type ModelList = { object: "list", data: ModelEntry[] };

/** POST /v1/conversations: a server-issued conversation id. */
export type ConversationCreated = { id: string, object: "conversation", created_at: number };

/** GET /admin/model */
export type AdminModelResponse = { model: EngineModelInfo | null, engine: EngineReport };

/** POST /admin/model: the switch happened. */
export type AdminModelSwitched = { status: "ok", model: EngineModelInfo, previous: string | null };

/** GET /v1/config: the model and KeepKV settings that serve now (no secrets), for the dashboard. */
export type ServingConfig = {
    model: { id: string, architecture: string, train_context_size: number, chat_format: string } | null,
    keepkv_version: string | null,
    context_size: number | null,
    sequences: number,
    batch_size: number,
    threads: number,
    flash_attention: string,
    cache_type_k: string,
    cache_type_v: string,
    keepkv: {
        policy: string,
        variant: string,
        selection: string,
        budget: number | null,
        sinks: number,
        recent: number,
        threshold: number,
        protect: number,
        value_threshold: number,
        chunk: number,
        observed: number,
        score_mode: string,
        score_decay: number,
        query_decay: number
    },
    limits: {
        max_tokens: number,
        max_prompt_tokens: number,
        max_requests_per_socket: number,
        max_message_bytes: number,
        conversation_idle_s: number
    }
};
