// One WebSocket client: parses and validates its messages, runs its requests (several at once), and
// streams their output with backpressure: while the client lags, deltas of a request are coalesced
// into one; a client that leaves more than `wsMaxBufferedBytes` unread (deltas or any other message) is
// disconnected.
import type { WebSocket, RawData } from "ws";
import type { Logger } from "../logger.js";
import type { ServerMetrics } from "../metrics/metrics.js";
import { ApiError, toWireError, type ErrorCode, type WireError } from "../protocol/errors.js";
import { describeSchemaError, validators } from "../protocol/schemas.js";
import {
    wsProtocolVersion, type WsChatMessage, type WsFinalMessage, type WsServerMessage
} from "../protocol/ws-messages.js";
import { newConversationId, requestSpec } from "../scheduler/request-spec.js";
import type { ScheduledRequest, Scheduler } from "../scheduler/scheduler.js";
import type { KeyRing, Principal } from "../security/api-keys.js";
import { addressBucket, principalBucket, type RateLimiter } from "../security/rate-limit.js";

/** above this many unsent bytes, deltas are coalesced instead of sent one by one */
const coalesceAboveBytes = 64 * 1024;
const flushEveryMs = 20;
const authTimeoutMs = 10_000;

export const wsCloseCodes = {
    normal: 1000,
    goingAway: 1001,
    policyViolation: 1008,
    messageTooBig: 1009
} as const;

export type WsSessionOptions = {
    keys: KeyRing,
    /** who authenticated at the upgrade (anonymous when the API is open), or null: an `auth` message must */
    principal: Principal | null,
    maxRequestsPerSocket: number,
    maxMessageBytes: number,
    maxBufferedBytes: number,
    modelName: () => string | null,
    /** per-client request rate (shared with HTTP), and this socket's client address */
    rateLimiter?: RateLimiter,
    client?: string
};

/** A client-chosen string quoted in an error message, cut short (the message must not echo megabytes). */
function quote(value: string): string {
    return JSON.stringify(value.length > 64 ? value.slice(0, 64) + "..." : value);
}

type InFlight = {
    request: ScheduledRequest | null,
    seq: number,
    pendingText: string,
    pendingTokens: number
};

export class WsSession {
    private readonly inFlight = new Map<string, InFlight>();
    private principal: Principal | null;
    private closed = false;
    private flushTimer: NodeJS.Timeout | null = null;
    private authTimer: NodeJS.Timeout | null = null;

    constructor(
        private readonly ws: WebSocket,
        private readonly scheduler: Scheduler,
        private readonly metrics: ServerMetrics,
        private readonly log: Logger,
        private readonly opts: WsSessionOptions
    ) {
        this.principal = opts.principal;
        ws.on("message", (data, isBinary) => this.onMessage(data, isBinary));
        ws.on("close", () => this.onClose());
        ws.on("error", (err) => this.log.debug("websocket error", { error: err.message }));
        // nothing about the server before authentication, not even the model's name
        this.send({
            type: "hello", protocol: wsProtocolVersion, model: this.principal != null ? opts.modelName() : null,
            auth_required: this.principal == null, max_message_bytes: opts.maxMessageBytes
        });
        if (this.principal == null) {
            this.authTimer = setTimeout(() => this.refuse("no auth message within 10 s"), authTimeoutMs);
            this.authTimer.unref();
        }
    }

    get requestsInFlight(): number {
        return this.inFlight.size;
    }

    /** Server shutdown: the scheduler has sent every final; say goodbye. */
    close(code: number, reason: string): void {
        if (!this.closed)
            this.ws.close(code, reason);
    }

    private onMessage(data: RawData, isBinary: boolean): void {
        if (this.closed)
            return;
        // whatever a message holds, it must not take the server down: a bug answers internal_error
        try {
            this.handleMessage(data, isBinary);
        } catch (err) {
            this.log.error("websocket message handler failed", { error: (err as Error).message });
            this.sendError(null, "internal_error", "the server failed to handle this message");
        }
    }

    private handleMessage(data: RawData, isBinary: boolean): void {
        if (this.principal == null) {
            this.handleFirstMessage(data, isBinary);
            return;
        }
        if (isBinary) {
            this.sendError(null, "invalid_message", "binary frames are not supported; send JSON text");
            return;
        }
        let message: unknown;
        try {
            message = JSON.parse(data.toString());
        } catch (err) {
            this.sendError(null, "invalid_json", `the message is not valid JSON: ${(err as Error).message}`);
            return;
        }
        if (message == null || typeof message !== "object" || Array.isArray(message)) {
            this.sendError(null, "invalid_message", "a message must be a JSON object with a \"type\"");
            return;
        }
        const record = message as Record<string, unknown>;
        const id = typeof record.id === "string" ? record.id : null;
        if (typeof record.type !== "string") {
            this.sendError(id, "invalid_message", "field \"type\" must be a string");
            return;
        }
        // own properties only: "constructor" or "__proto__" must not find Object's methods
        const validate = Object.hasOwn(validators.wsClient, record.type) ? validators.wsClient[record.type] : undefined;
        if (validate == null) {
            this.sendError(id, "unknown_type", `unknown message type ${quote(record.type)}; known: chat, cancel, new_conversation, auth, ping`);
            return;
        }
        if ((record.type === "chat" || record.type === "cancel") && !("id" in record)) {
            this.sendError(null, "missing_id", `a "${record.type}" message needs an "id"`);
            return;
        }
        if (!validate(message)) {
            this.sendError(id, "invalid_message", describeSchemaError(validate.errors));
            return;
        }
        switch (record.type) {
            case "auth":
                this.onAuth(record.token as string);
                return;
            case "ping":
                this.send({ type: "pong", id });
                return;
            case "new_conversation":
                this.send({ type: "conversation", id, conversation_id: newConversationId() });
                return;
            case "cancel":
                this.onCancel(record.id as string);
                return;
            case "chat":
                this.onChat(message as WsChatMessage);
                return;
        }
    }

    /**
     * Before authentication the only acceptable message is a valid `auth`: anything else (another type,
     * bad JSON, a binary frame) closes the socket, so that an unauthenticated client cannot make the
     * server parse, validate and answer at will.
     */
    private handleFirstMessage(data: RawData, isBinary: boolean): void {
        let message: unknown = null;
        if (!isBinary) {
            try {
                message = JSON.parse(data.toString());
            } catch {
                // refused below
            }
        }
        if (validators.wsClient.auth!(message)) {
            this.onAuth((message as { token: string }).token);
            return;
        }
        this.refuse("authenticate first: send {\"type\":\"auth\",\"token\":\"...\"} or connect with an Authorization header");
    }

    private onAuth(token: string): void {
        const keys = this.opts.keys;
        if (!keys.apiOpen) {
            const limiter = this.opts.rateLimiter;
            const address = addressBucket(this.opts.client ?? "unknown");
            // as at the upgrade: an address out of allowance learns nothing about its token, and a wrong one costs
            if (limiter != null && limiter.exhausted(address)) {
                this.metrics.requestRefused("rate_limited");
                this.sendError(null, "rate_limited", `more than ${limiter.perMinute} requests per minute from this client (rate-limit); retry later`);
                this.closed = true;
                this.ws.close(wsCloseCodes.policyViolation, "rate limited");
                return;
            }
            const principal = keys.identify(token);
            if (principal == null) {
                limiter?.take(address);
                this.refuse("wrong token");
                return;
            }
            if (principal.role === "metrics") {
                this.refuse(`the key "${principal.name}" (role metrics) may read /metrics only`, "forbidden");
                return;
            }
            // a socket belongs to the principal that authenticated it: its requests, conversations and
            // allowance; switching keys on one socket would mix two principals' requests on it
            if (this.principal != null && this.principal.name !== principal.name) {
                this.sendError(null, "forbidden", `this connection is authenticated as "${this.principal.name}"; open another connection for the key "${principal.name}"`);
                this.metrics.requestRefused("forbidden");
                return;
            }
            this.principal = principal;
        }
        if (this.authTimer != null)
            clearTimeout(this.authTimer);
        this.send({ type: "auth_ok" });
    }

    private refuse(why: string, code: "unauthorized" | "forbidden" = "unauthorized"): void {
        this.sendError(null, code, why);
        this.metrics.requestRefused(code);
        this.closed = true;
        this.ws.close(wsCloseCodes.policyViolation, code);
    }

    private onCancel(id: string): void {
        const entry = this.inFlight.get(id);
        if (entry?.request == null) {
            this.sendError(id, "not_found", `no request "${id}" is in flight on this socket`);
            return;
        }
        this.scheduler.cancel(entry.request);
    }

    private onChat(message: WsChatMessage): void {
        const id = message.id;
        if (this.inFlight.has(id)) {
            this.sendError(id, "duplicate_id", `request "${id}" is already in flight on this socket; use a new id`);
            return;
        }
        if (this.inFlight.size >= this.opts.maxRequestsPerSocket) {
            this.metrics.requestRefused("too_many_requests");
            this.sendError(id, "too_many_requests", `this socket already has ${this.inFlight.size} requests in flight (max-requests-per-socket)`);
            return;
        }
        // the key's own bucket is its principal's name, shared by every address that uses the key
        const keyed = !this.opts.keys.apiOpen && this.principal != null;
        const buckets = [addressBucket(this.opts.client ?? "unknown"), ...(keyed ? [principalBucket(this.principal!.name)] : [])];
        const rate = this.opts.rateLimiter?.takeAll(buckets);
        if (rate != null && !rate.ok) {
            this.metrics.requestRefused("rate_limited");
            this.sendError(id, "rate_limited", `more than ${this.opts.rateLimiter!.perMinute} requests per minute from this client address or key (rate-limit); retry in ${rate.retryAfterS} s`);
            return;
        }
        const input = message.messages != null
            ? { messages: message.messages.map((m) => ({ role: m.role, content: m.content })) }
            : { prompt: message.prompt! };
        const entry: InFlight = { request: null, seq: 0, pendingText: "", pendingTokens: 0 };
        this.inFlight.set(id, entry);
        try {
            entry.request = this.scheduler.submit(requestSpec(input, message, message.conversation_id, this.principal!.name), {
                onProgress: (evaluated, total) => {
                    // advisory: not worth queueing behind a backed-up socket
                    if (!this.closed && this.ws.bufferedAmount <= coalesceAboveBytes)
                        this.send({ type: "progress", id, evaluated_tokens: evaluated, prompt_tokens: total });
                },
                onDelta: (text, tokens) => this.delta(id, entry, text, tokens),
                onFinal: (result) => {
                    this.flushEntry(id, entry);
                    this.inFlight.delete(id);
                    const final: WsFinalMessage = {
                        type: "final", id, finish_reason: result.finishReason, usage: result.usage, timings: result.timings, kv: result.kv,
                        ...(result.error != null ? { error: result.error } : {})
                    };
                    this.send(final);
                }
            });
        } catch (err) {
            this.inFlight.delete(id);
            const wire = toWireError(err);
            if (err instanceof ApiError)
                this.metrics.requestRefused(wire.code);
            this.sendError(id, wire.code, wire.message);
            return;
        }
        this.send({
            type: "start", id, model: entry.request.model, conversation_id: message.conversation_id ?? null,
            created: entry.request.created, queue_position: entry.request.queuePosition
        });
    }

    // ---- output with backpressure

    private delta(id: string, entry: InFlight, text: string, tokens: number): void {
        if (this.closed)
            return;
        entry.pendingText += text;
        entry.pendingTokens += tokens;
        if (this.ws.bufferedAmount <= coalesceAboveBytes)
            this.flushEntry(id, entry);
        else
            this.scheduleFlush();
        this.checkBackpressure();
    }

    private flushEntry(id: string, entry: InFlight): void {
        if (entry.pendingText === "" && entry.pendingTokens === 0)
            return;
        this.send({ type: "delta", id, seq: entry.seq++, text: entry.pendingText, tokens: entry.pendingTokens });
        entry.pendingText = "";
        entry.pendingTokens = 0;
    }

    private scheduleFlush(): void {
        if (this.flushTimer != null)
            return;
        this.flushTimer = setTimeout(() => {
            this.flushTimer = null;
            if (this.closed)
                return;
            if (this.ws.bufferedAmount > coalesceAboveBytes) {
                if (this.checkBackpressure())
                    this.scheduleFlush();
                return;
            }
            for (const [id, entry] of this.inFlight)
                this.flushEntry(id, entry);
        }, flushEveryMs);
    }

    /** false when the client was dropped */
    private checkBackpressure(): boolean {
        let pending = 0;
        for (const entry of this.inFlight.values())
            pending += entry.pendingText.length;
        if (this.ws.bufferedAmount + pending <= this.opts.maxBufferedBytes)
            return true;
        this.dropSlowClient();
        return false;
    }

    private dropSlowClient(): void {
        this.log.warn("dropping a websocket client that does not read", { buffered: this.ws.bufferedAmount });
        this.metrics.clientDropped("ws", "slow_consumer");
        this.closed = true;
        this.ws.close(wsCloseCodes.policyViolation, "client too slow");
        // the close frame waits behind the unread data: do not wait for the handshake
        setTimeout(() => this.ws.terminate(), 1000).unref();
        this.cancelAll();
    }

    /**
     * Every message goes out here, under the same bound as the deltas: a client that sends pings or bad
     * messages without reading the answers is disconnected once they pile up past wsMaxBufferedBytes.
     */
    private send(message: WsServerMessage): void {
        if (this.ws.readyState !== this.ws.OPEN)
            return;
        this.ws.send(JSON.stringify(message));
        if (!this.closed && this.ws.bufferedAmount > this.opts.maxBufferedBytes)
            this.dropSlowClient();
    }

    private sendError(id: string | null, code: ErrorCode, message: string): void {
        const error: WireError = { code, message };
        this.send({ type: "error", id, ...error });
    }

    private cancelAll(): void {
        for (const entry of this.inFlight.values())
            if (entry.request != null)
                this.scheduler.cancel(entry.request);
    }

    private onClose(): void {
        this.closed = true;
        if (this.flushTimer != null)
            clearTimeout(this.flushTimer);
        if (this.authTimer != null)
            clearTimeout(this.authTimer);
        this.cancelAll();
        this.metrics.websocketClosed();
    }
}
