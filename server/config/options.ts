// Every user-facing server option, declared once: its JSON key, command-line flag, environment variable,
// JSON schema (validated by ajv), default and documentation. The CLI help, the README table and the
// config-file schema are all generated from this table.
import * as path from "node:path";
import {
    keepKvOptionDecls, type KeepKvOptionDecl, type KeepKvPolicy, type KeepKvScoreMode, type KeepKvSelection, type KeepKvVariant
} from "../../lib/keepkv-options.js";
import { defaultModelPath } from "../../lib/model-paths.js";
export { envOf, flagOf } from "../../lib/option-names.js";
import {
    chatTemplateModes, flashAttentionModes, kvCacheTypes, type ChatTemplateMode, type FlashAttentionMode, type KvCacheType
} from "../protocol/engine-ipc.js";

export const logLevels = ["error", "warn", "info", "debug"] as const;
export type LogLevel = typeof logLevels[number];

/** The resolved configuration: every option has a value. */
export type ServerConfig = {
    host: string,
    port: number,
    logLevel: LogLevel,
    model: string,
    modelsDir: string,
    contextSize: number,
    sequences: number,
    batchSize: number,
    threads: number,
    gpuLayers: number,
    flashAttention: FlashAttentionMode,
    cacheTypeK: KvCacheType,
    cacheTypeV: KvCacheType,
    chatTemplate: ChatTemplateMode,
    policy: KeepKvPolicy,
    variant: KeepKvVariant,
    selection: KeepKvSelection,
    budget: number | null,
    sinks: number,
    recent: number,
    threshold: number,
    protect: number,
    valueThreshold: number,
    chunk: number,
    observed: number,
    scoreMode: KeepKvScoreMode,
    scoreDecay: number,
    queryDecay: number,
    maxQueue: number,
    queueTimeout: number,
    maxTokens: number,
    maxPromptTokens: number,
    maxMessageBytes: number,
    maxRequestsPerSocket: number,
    conversationIdle: number,
    stateDir: string,
    stateMaxMb: number,
    stateSaveIdle: number,
    engineStallTimeout: number,
    shutdownGrace: number,
    wsPingInterval: number,
    wsMaxBufferedBytes: number,
    maxConnections: number,
    maxConnectionsPerAddress: number,
    maxHeaderBytes: number,
    rateLimit: number,
    memoryLimit: number,
    apiKey: string | null,
    metricsApiKey: string | null,
    apiKeys: string[],
    apiKeyFile: string | null,
    allowedOrigins: string[],
    allowedHosts: string[],
    trustProxy: boolean,
    insecure: boolean
};

export type OptionGroup = "server" | "model" | "keepkv" | "limits" | "security";

/** A JSON-schema fragment for one option (the subset the loader and the docs understand). */
export type OptionSchema = {
    type: "string" | "integer" | "number" | "boolean" | "array" | ["number", "null"] | ["string", "null"],
    enum?: readonly string[],
    minimum?: number,
    maximum?: number,
    exclusiveMinimum?: number,
    exclusiveMaximum?: number,
    minLength?: number,
    items?: { type: "string", minLength?: number }
};

export type OptionDecl<T> = {
    group: OptionGroup,
    schema: OptionSchema,
    default: T | (() => T),
    /** how the default reads in the docs when it is computed or special */
    defaultDoc?: string,
    /** what the option does, with its unit */
    doc: string,
    /** values the docs should not print (secrets) */
    secret?: boolean
};

/**
 * The budget a new user gets: half the logical context, the smallest fraction measured (0.1, 0.2, 0.3, 0.5)
 * whose 8k perplexity on SmolLM2-135M-Instruct stays within 1% of the full cache (+0.6%; 0.3 is at +1.4%;
 * README, Benchmarks: bench:quality --configs budgets).
 */
export const serverDefaultBudget = 0.5;

const seconds = (doc: string) => `${doc} Seconds.`;
const kkv = keepKvOptionDecls;

/** The JSON schema of a KeepKV option: its declared values or range, as ajv checks it. */
function keepKvSchema(decl: KeepKvOptionDecl): OptionSchema {
    switch (decl.type) {
        case "enum": return { type: "string", enum: decl.values };
        case "integer":
        case "number": return { type: decl.type, ...decl.range };
        // none (null) turns automatic compression off
        case "budget": return { type: ["number", "null"], ...decl.range };
        case "boolean": return { type: "boolean" };
    }
}
const capitalize = (doc: string) => doc.charAt(0).toUpperCase() + doc.slice(1);

/**
 * The declarations. The record type makes the compiler check that every key of ServerConfig is declared
 * exactly once, with a default of the right type.
 */
export const optionDecls: { [K in keyof ServerConfig]: OptionDecl<ServerConfig[K]> } = {
    host: {
        group: "server", schema: { type: "string", minLength: 1 }, default: "127.0.0.1",
        doc: "Address to bind. The default accepts connections from this machine only; use 0.0.0.0 to listen on all interfaces (refused without a user or admin key from `api-key`, `api-keys` or `api-key-file` unless `insecure` is set)."
    },
    port: {
        group: "server", schema: { type: "integer", minimum: 0, maximum: 65535 }, default: 8080,
        doc: "TCP port for HTTP and WebSocket. 0 picks a free port (printed at startup)."
    },
    logLevel: {
        group: "server", schema: { type: "string", enum: logLevels }, default: "info",
        doc: "Least severe log level written to stderr. Prompts and generated text are never logged."
    },
    model: {
        group: "model", schema: { type: "string", minLength: 1 }, default: () => defaultModelPath(),
        defaultDoc: "SmolLM2-135M-Instruct (`~/.cache/keepkv/models/SmolLM2-135M-Instruct.Q4_1.gguf`, fetched by `npm run model:pull`)",
        doc: "GGUF model loaded at startup: a path, or a file name inside the models directory."
    },
    modelsDir: {
        group: "model", schema: { type: "string" }, default: "",
        defaultDoc: "the model's folder",
        doc: "Folder scanned for `.gguf` files (`GET /v1/models`); models selected at runtime must be in it, and so must the real path of a link (a link to a file elsewhere is listed as invalid, `outside_models_dir`)."
    },
    contextSize: {
        group: "model", schema: { type: "integer", minimum: 0 }, default: 0,
        defaultDoc: "0 (the model's training context, at most 8192)",
        doc: "Logical context of each sequence, in tokens (prompt plus generated tokens)."
    },
    sequences: {
        group: "model", schema: { type: "integer", minimum: 1, maximum: 256 }, default: 4,
        doc: "Sequences (parallel slots) in the context: how many requests generate at once. More wait in the queue."
    },
    batchSize: {
        group: "model", schema: { type: "integer", minimum: 1 }, default: 512,
        doc: "Tokens per evaluation batch."
    },
    threads: {
        group: "model", schema: { type: "integer", minimum: 0 }, default: 0,
        defaultDoc: "0 (all cores)",
        doc: "CPU threads for evaluation. On a machine that is busy with other work, 1 can be much faster than oversubscribed cores."
    },
    gpuLayers: {
        group: "model", schema: { type: "integer", minimum: -1 }, default: -1,
        defaultDoc: "-1 (automatic)",
        doc: "Model layers offloaded to the GPU (builds with a GPU backend only)."
    },
    flashAttention: {
        group: "model", schema: { type: "string", enum: flashAttentionModes }, default: "off",
        doc: "Flash attention: off, on or auto. A quantized V cache needs it on."
    },
    cacheTypeK: {
        group: "model", schema: { type: "string", enum: kvCacheTypes }, default: "f16",
        doc: "Data type of the K cache."
    },
    cacheTypeV: {
        group: "model", schema: { type: "string", enum: kvCacheTypes }, default: "f16",
        doc: "Data type of the V cache."
    },
    chatTemplate: {
        group: "model", schema: { type: "string", enum: chatTemplateModes }, default: "auto",
        doc: "How chat messages become a prompt: `auto` uses the model's own chat template when its GGUF has one and `plain` otherwise; "
            + "`plain` joins the message texts with blank lines, for text-continuation models such as TinyStories; "
            + "`general` uses node-llama-cpp's GeneralChatWrapper (`### Human:` / `### Assistant:`)."
    },
    // the KeepKV options: declared once (range, default, doc) in lib/keepkv-options.ts, validated again
    // against the context size by resolveKeepKvSettings
    policy: {
        group: "keepkv", schema: keepKvSchema(kkv.policy), default: kkv.policy.default,
        doc: `KV-cache compression policy of every sequence: ${kkv.policy.doc}`
    },
    variant: { group: "keepkv", schema: keepKvSchema(kkv.variant), default: kkv.variant.default, doc: kkv.variant.doc },
    selection: {
        group: "keepkv", schema: keepKvSchema(kkv.selection), default: "recency",
        doc: `${capitalize(kkv.selection.doc)} The server defaults to recency, the measured best: on SmolLM2 at 8k tokens as good as the scores at 20% and better at 10%, and it tracks no scores, which costs decode speed (README, Benchmarks).`
    },
    budget: {
        group: "keepkv", schema: keepKvSchema(kkv.budget), default: serverDefaultBudget,
        defaultDoc: `${serverDefaultBudget} (none with policy off)`,
        doc: `${kkv.budget.doc} \`none\`: no automatic compression. The default budget applies only to a compressing policy: with \`--policy off\` and no budget given, there is none.`
    },
    sinks: { group: "keepkv", schema: keepKvSchema(kkv.sinks), default: kkv.sinks.default, doc: capitalize(kkv.sinks.doc) },
    recent: { group: "keepkv", schema: keepKvSchema(kkv.recent), default: kkv.recent.default, doc: capitalize(kkv.recent.doc) },
    threshold: { group: "keepkv", schema: keepKvSchema(kkv.threshold), default: kkv.threshold.default, doc: capitalize(kkv.threshold.doc) },
    protect: { group: "keepkv", schema: keepKvSchema(kkv.protect), default: kkv.protect.default, doc: capitalize(kkv.protect.doc) },
    valueThreshold: { group: "keepkv", schema: keepKvSchema(kkv.valueThreshold), default: kkv.valueThreshold.default, doc: capitalize(kkv.valueThreshold.doc) },
    chunk: {
        group: "keepkv", schema: keepKvSchema(kkv.chunk), default: kkv.chunk.default,
        defaultDoc: `0 (${kkv.chunk.defaultDoc})`,
        doc: capitalize(kkv.chunk.doc)
    },
    observed: { group: "keepkv", schema: keepKvSchema(kkv.observed), default: kkv.observed.default, doc: capitalize(kkv.observed.doc) },
    scoreMode: { group: "keepkv", schema: keepKvSchema(kkv.scoreMode), default: kkv.scoreMode.default, doc: capitalize(kkv.scoreMode.doc) },
    scoreDecay: { group: "keepkv", schema: keepKvSchema(kkv.scoreDecay), default: kkv.scoreDecay.default, doc: capitalize(kkv.scoreDecay.doc) },
    queryDecay: { group: "keepkv", schema: keepKvSchema(kkv.queryDecay), default: kkv.queryDecay.default, doc: capitalize(kkv.queryDecay.doc) },
    maxQueue: {
        group: "limits", schema: { type: "integer", minimum: 0 }, default: 64,
        doc: "Requests that may wait for a free sequence; beyond it requests are refused with `queue_full`."
    },
    queueTimeout: {
        group: "limits", schema: { type: "number", exclusiveMinimum: 0 }, default: 60,
        doc: seconds("Longest wait in the queue before a request fails with `queue_timeout`.")
    },
    maxTokens: {
        group: "limits", schema: { type: "integer", minimum: 0 }, default: 0,
        defaultDoc: "0 (up to the context size)",
        doc: "Upper limit of `max_tokens`, and its value when a request leaves it out."
    },
    maxPromptTokens: {
        group: "limits", schema: { type: "integer", minimum: 0 }, default: 0,
        defaultDoc: "0 (context size - 1)",
        doc: "Longest accepted prompt in tokens; longer prompts fail with `prompt_too_long`."
    },
    maxMessageBytes: {
        group: "limits", schema: { type: "integer", minimum: 1024 }, default: 1048576,
        doc: "Largest WebSocket message and HTTP body in bytes. A larger WebSocket frame closes the socket with code 1009."
    },
    maxRequestsPerSocket: {
        group: "limits", schema: { type: "integer", minimum: 1 }, default: 16,
        doc: "Requests one WebSocket may have in flight; more fail with `too_many_requests`."
    },
    conversationIdle: {
        group: "limits", schema: { type: "number", minimum: 0 }, default: 300,
        doc: seconds("How long an idle conversation keeps its sequence (and its cache) reserved. An idle conversation also loses its sequence earlier when a new request needs one and none is free (least recently used first).")
    },
    stateDir: {
        group: "limits", schema: { type: "string" }, default: "",
        defaultDoc: "none (conversation states are not saved)",
        doc: "Folder where conversation states (a conversation's KV cache, with its KeepKV votes and scores) are saved, so that a conversation continues without evaluating its history again after its sequence was needed for another one, an engine restart, a model switch and back, or a server restart. One server per folder."
    },
    stateMaxMb: {
        group: "limits", schema: { type: "number", exclusiveMinimum: 0 }, default: 1024,
        doc: "Disk space the saved conversation states may take, in MiB; beyond it the least recently used are deleted."
    },
    stateSaveIdle: {
        group: "limits", schema: { type: "number", minimum: 0 }, default: 5,
        doc: seconds("How long a conversation stays idle before its state is saved (it is also saved when its sequence is needed, at a model switch and at shutdown). A conversation that had not been idle this long when the engine crashed is evaluated again.")
    },
    engineStallTimeout: {
        group: "limits", schema: { type: "number", minimum: 0 }, default: 120,
        doc: seconds("An engine that sends nothing for this long while it has work is killed and restarted; a prompt being evaluated reports each batch (`--batch-size` tokens), so only one batch must fit in this time, not the whole prompt. 0 disables the check.")
    },
    shutdownGrace: {
        group: "limits", schema: { type: "number", minimum: 0 }, default: 5,
        doc: seconds("On SIGTERM/SIGINT, how long running requests may still finish before they end with finish reason `shutdown`.")
    },
    wsPingInterval: {
        group: "limits", schema: { type: "number", exclusiveMinimum: 0 }, default: 30,
        doc: seconds("WebSocket ping interval; a client that misses a pong for one interval is disconnected.")
    },
    wsMaxBufferedBytes: {
        group: "limits", schema: { type: "integer", minimum: 1024 }, default: 4194304,
        doc: "Bytes a WebSocket client may leave unread. Token deltas are coalesced while it lags; any message that would leave more unread disconnects it (close code 1008)."
    },
    maxConnections: {
        group: "limits", schema: { type: "integer", minimum: 1 }, default: 1024,
        doc: "Open connections (HTTP and WebSocket together) the server accepts; requests on connections beyond it get 503 `too_many_connections` and the connection closes."
    },
    maxConnectionsPerAddress: {
        group: "limits", schema: { type: "integer", minimum: 1 }, default: 128,
        doc: "Open connections from one client address (HTTP and WebSocket together); beyond it as `max-connections`. With `trust-proxy` the proxy's own connections are not counted per address; WebSockets are counted by the forwarded address instead."
    },
    maxHeaderBytes: {
        group: "limits", schema: { type: "integer", minimum: 1024, maximum: 1048576 }, default: 16384,
        doc: "Largest HTTP request head (request line and headers) in bytes; a larger one gets 431 and the connection closes."
    },
    rateLimit: {
        group: "limits", schema: { type: "number", minimum: 0 }, default: 0,
        defaultDoc: "0 (no limit)",
        doc: "Chat and completion requests per minute per client address and per API key (counted by the key's name, whatever address uses it; WebSocket and HTTP together); a client may send this many at once, then one every 60/N seconds. A request with a missing or wrong token counts against its address too, and while an address has used up its allowance its tokens are not checked. More fail with `rate_limited`."
    },
    memoryLimit: {
        group: "limits", schema: { type: "integer", minimum: 0 }, default: 0,
        defaultDoc: "0 (the memory available when the model loads)",
        doc: "Bytes the engine may use for model weights, KV cache and compute buffers, estimated from the GGUF header before anything loads. A start that would need more stops with a message naming the options to lower; a model switch is refused with `insufficient_memory` (the new model loads beside the serving one, so the engine's current memory counts too)."
    },
    apiKey: {
        group: "security", schema: { type: ["string", "null"], minLength: 1 }, default: null, secret: true,
        defaultDoc: "none",
        doc: "Bearer token required by every endpoint except `/health` (HTTP `Authorization: Bearer ...`; WebSocket upgrades: the same header, or for a browser page, which cannot set it, a first `auth` message). It is one key of role admin named `admin` (see `api-keys` for several keys and roles). Prefer the environment variable or the config file: a command-line value is visible to other local users in the process list."
    },
    metricsApiKey: {
        group: "security", schema: { type: ["string", "null"], minLength: 1 }, default: null, secret: true,
        defaultDoc: "none (`/metrics` takes admin keys)",
        doc: "Separate bearer token for `/metrics`, so that Prometheus does not need the API key: one key of role metrics named `metrics`."
    },
    apiKeys: {
        group: "security", schema: { type: "array", items: { type: "string", minLength: 1 } }, default: [], secret: true,
        defaultDoc: "none",
        doc: "API keys as `name:role:key` entries (comma-separated on the command line and in the environment, a list in the config file). The name is the caller's identity (its conversations are its own); the role is `user` (chat and read APIs, its own conversations only), `admin` (everything, `/admin/*` included, every conversation) or `metrics` (`/metrics` only). Keys have at least 16 characters; names and keys must be unique across `api-key`, `metrics-api-key`, `api-keys` and `api-key-file`."
    },
    apiKeyFile: {
        group: "security", schema: { type: ["string", "null"], minLength: 1 }, default: null,
        defaultDoc: "none",
        doc: "JSON file of API keys: `{\"keys\": [{\"name\": \"alice\", \"role\": \"user\", \"key\": \"...\"}, ...]}`, with the same rules as `api-keys`. Read at startup; a file that is not valid JSON, has unknown fields, a bad role, a short key or a duplicate name or key stops startup with a message that names the entry (never the key)."
    },
    allowedOrigins: {
        group: "security", schema: { type: "array", items: { type: "string", minLength: 1 } }, default: [],
        defaultDoc: "none (same origin only)",
        doc: "Browser origins allowed to call the API and open WebSockets (comma-separated on the command line; `*` allows all). Requests without an Origin header are always allowed."
    },
    allowedHosts: {
        group: "security", schema: { type: "array", items: { type: "string", minLength: 1 } }, default: [],
        defaultDoc: "none (loopback names, the bind address, and IP literals when bound beyond loopback)",
        doc: "Host names the server answers to besides localhost, 127.0.0.1, [::1] and the bind address (comma-separated; `*` allows any). Stops DNS rebinding: a web page whose name resolves to this machine is refused with `forbidden_host`. A server bound to a non-loopback address also answers to any IP address literal (a rebinding page always has a name), but to no other name unless it is listed here."
    },
    trustProxy: {
        group: "security", schema: { type: "boolean" }, default: false,
        doc: "Behind a reverse proxy: take the client address (for `rate-limit` and `max-connections-per-address`) from the last entry of X-Forwarded-For instead of the connection."
    },
    insecure: {
        group: "security", schema: { type: "boolean" }, default: false,
        doc: "Allow binding a non-loopback `host` without a user or admin key (`api-key`, `api-keys` or `api-key-file`; a `metrics-api-key` alone guards `/metrics` only). Without it such a start is refused: anyone who can reach the port could use the server."
    }
};

export const optionKeys = Object.keys(optionDecls) as (keyof ServerConfig)[];

export function defaultOf<K extends keyof ServerConfig>(key: K): ServerConfig[K] {
    const value = optionDecls[key].default;
    return typeof value === "function" ? (value as () => ServerConfig[K])() : value;
}

/** The option that names the JSON config file: command line or environment only. */
export const configFileFlag = "--config";
export const configFileEnv = "KEEPKV_CONFIG";

/** The models folder in effect: the option, or the model's own folder. */
export function effectiveModelsDir(config: Pick<ServerConfig, "model" | "modelsDir">): string {
    return config.modelsDir !== "" ? path.resolve(config.modelsDir) : path.dirname(path.resolve(config.model));
}
