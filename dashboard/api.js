// @ts-check
// The browser side of keepkv's APIs: one WebSocket (/v1/ws) per conversation, opened with
// ?conversation_id=... so that a load balancer can route it to the replica holding the conversation's
// cache (see docs/deploy.md), and HTTP calls with the API key when one is needed.

/**
 * @typedef {import("../server/protocol/ws-messages.js").WsServerMessage} WsServerMessage
 * @typedef {import("../server/protocol/ws-messages.js").WsChatMessage} WsChatMessage
 * @typedef {import("../server/protocol/ws-messages.js").WsStartMessage} WsStartMessage
 * @typedef {import("../server/protocol/ws-messages.js").WsDeltaMessage} WsDeltaMessage
 * @typedef {import("../server/protocol/ws-messages.js").WsProgressMessage} WsProgressMessage
 * @typedef {import("../server/protocol/ws-messages.js").WsFinalMessage} WsFinalMessage
 * @typedef {import("../server/protocol/ws-messages.js").WsErrorMessage} WsErrorMessage
 * @typedef {"connecting" | "open" | "auth_required" | "auth_failed" | "closed"} ConnectionState
 * @typedef {{
 *   onStart?: (m: WsStartMessage) => void,
 *   onProgress?: (m: WsProgressMessage) => void,
 *   onDelta?: (m: WsDeltaMessage) => void,
 *   onFinal?: (m: WsFinalMessage) => void,
 *   onError?: (m: { code: string, message: string }) => void
 * }} ChatHandlers
 */

const tokenKey = "keepkv.apiKey";

export function storedToken() {
    try {
        return sessionStorage.getItem(tokenKey);
    } catch {
        return null;
    }
}

/** @param {string | null} token */
export function storeToken(token) {
    try {
        if (token == null || token === "")
            sessionStorage.removeItem(tokenKey);
        else
            sessionStorage.setItem(tokenKey, token);
    } catch {
        // storage disabled: the key lives until the page is closed
    }
}

export class ApiError extends Error {
    /** @param {number} status @param {string} code @param {string} message */
    constructor(status, code, message) {
        super(message);
        this.status = status;
        this.code = code;
    }
}

/**
 * GET a JSON endpoint of this server. The conversation id goes in X-Conversation-Id so that a load
 * balancer routes the call to the replica that holds the conversation (the one its WebSocket talks to).
 * @param {string} path
 * @param {{ token: string | null, conversationId?: string }} opts
 */
export async function getJson(path, opts) {
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    if (opts.token != null && opts.token !== "")
        headers.Authorization = `Bearer ${opts.token}`;
    if (opts.conversationId != null)
        headers["X-Conversation-Id"] = opts.conversationId;
    const res = await fetch(path, { headers, cache: "no-store" });
    const body = await res.json().catch(() => null);
    if (!res.ok) {
        const error = body?.error ?? {};
        throw new ApiError(res.status, String(error.code ?? res.status), String(error.message ?? res.statusText));
    }
    return body;
}

let nextId = 0;

export class ChatSocket {
    /**
     * @param {{ conversationId: string, token: string | null, onState: (s: ConnectionState, detail?: string) => void, onModel?: (m: string | null) => void }} opts
     */
    constructor(opts) {
        this.conversationId = opts.conversationId;
        this.token = opts.token;
        this.onState = opts.onState;
        this.onModel = opts.onModel;
        /** @type {Map<string, ChatHandlers>} */
        this.inFlight = new Map();
        /** @type {ConnectionState} */
        this.state = "connecting";
        this.closedByUs = false;
        this.retryMs = 500;
        /** @type {WebSocket | null} */
        this.ws = null;
        this.open();
    }

    /** @param {ConnectionState} state @param {string} [detail] */
    setState(state, detail) {
        this.state = state;
        this.onState(state, detail);
    }

    open() {
        const scheme = location.protocol === "https:" ? "wss:" : "ws:";
        const url = `${scheme}//${location.host}/v1/ws?conversation_id=${encodeURIComponent(this.conversationId)}`;
        const ws = new WebSocket(url);
        this.ws = ws;
        this.setState("connecting");
        ws.addEventListener("message", (event) => this.onMessage(JSON.parse(String(event.data))));
        ws.addEventListener("close", (event) => {
            if (this.ws !== ws)
                return;
            for (const [, handlers] of this.inFlight)
                handlers.onError?.({ code: "disconnected", message: `the connection closed (${event.code})` });
            this.inFlight.clear();
            if (this.closedByUs || this.state === "auth_failed")
                return;
            this.setState("closed", `reconnecting in ${Math.round(this.retryMs / 1000)} s`);
            setTimeout(() => { if (!this.closedByUs) this.open(); }, this.retryMs);
            this.retryMs = Math.min(this.retryMs * 2, 10_000);
        });
    }

    /** @param {WsServerMessage} m */
    onMessage(m) {
        switch (m.type) {
            case "hello":
                this.retryMs = 500;
                this.onModel?.(m.model);
                if (!m.auth_required)
                    this.setState("open");
                else if (this.token != null && this.token !== "")
                    this.send({ type: "auth", token: this.token });
                else
                    this.setState("auth_required");
                return;
            case "auth_ok":
                this.setState("open");
                return;
            case "start":
                this.inFlight.get(m.id)?.onStart?.(m);
                return;
            case "progress":
                this.inFlight.get(m.id)?.onProgress?.(m);
                return;
            case "delta":
                this.inFlight.get(m.id)?.onDelta?.(m);
                return;
            case "final": {
                const handlers = this.inFlight.get(m.id);
                this.inFlight.delete(m.id);
                handlers?.onFinal?.(m);
                return;
            }
            case "error": {
                if (m.code === "unauthorized") {
                    this.setState("auth_failed", m.message);
                    return;
                }
                const handlers = m.id == null ? undefined : this.inFlight.get(m.id);
                if (m.id != null)
                    this.inFlight.delete(m.id);
                handlers?.onError?.({ code: m.code, message: m.message });
                return;
            }
            default:
                return;
        }
    }

    /** @param {object} message */
    send(message) {
        this.ws?.send(JSON.stringify(message));
    }

    /**
     * Starts a chat request on this conversation; returns its id.
     * @param {Omit<WsChatMessage, "type" | "id" | "conversation_id">} params
     * @param {ChatHandlers} handlers
     */
    chat(params, handlers) {
        const id = `d${Date.now().toString(36)}-${++nextId}`;
        if (this.state !== "open") {
            handlers.onError?.({ code: "not_connected", message: `not connected (${this.state})` });
            return id;
        }
        this.inFlight.set(id, handlers);
        this.send({ type: "chat", id, conversation_id: this.conversationId, ...params });
        return id;
    }

    /** @param {string} id */
    cancel(id) {
        if (this.inFlight.has(id))
            this.send({ type: "cancel", id });
    }

    close() {
        // requests still in flight are abandoned with the socket (the server cancels them): no callbacks
        this.inFlight.clear();
        this.closedByUs = true;
        this.ws?.close(1000, "bye");
    }
}
