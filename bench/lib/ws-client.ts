// A WebSocket client for /v1/ws, shared by the tests (test/helpers/ws-client.ts) and the load test. By
// default it records every server message, checks each against the schemas the server publishes, and runs
// chat requests to their final message. The load test turns recording off (a long run would keep millions
// of messages, and validating them would take the client's CPU from the server on a small machine) and
// routes each request's messages by id instead.
import WebSocket from "ws";
import { describeSchemaError, validators } from "../../server/protocol/schemas.js";
import type {
    WsChatMessage, WsDeltaMessage, WsErrorMessage, WsFinalMessage, WsHelloMessage, WsServerMessage, WsStartMessage
} from "../../server/protocol/ws-messages.js";

export type ChatRun = {
    id: string,
    /** resolves with the start message, or rejects with the error message when the request is refused */
    start: Promise<WsStartMessage>,
    deltas: WsDeltaMessage[],
    /** resolves with the final message, or with the error message when the request is refused */
    done: Promise<WsFinalMessage | WsErrorMessage>,
    text(): string
};

/** What a route sees: the messages with its request id, then "closed" if the socket closes first. */
export type RoutedMessage = WsServerMessage | { type: "closed" };

export type ConnectOptions = {
    headers?: Record<string, string>,
    maxPayload?: number,
    /** keep every message in `messages` and check it against the schemas (default true) */
    record?: boolean
};

let nextRequest = 0;

export class WsClient {
    /** every server message, when recording */
    readonly messages: WsServerMessage[] = [];
    /** server messages that do not match the published schemas (checked when recording) */
    readonly schemaViolations: string[] = [];
    readonly closed: Promise<{ code: number, reason: string }>;
    /** this client terminated the socket on purpose (the load test's disconnects) */
    hungUp = false;
    private isClosed = false;
    private hello_: WsHelloMessage | null = null;
    private waiters: { match: (m: WsServerMessage) => boolean, resolve: (m: WsServerMessage) => void }[] = [];
    private readonly routes = new Map<string, (m: RoutedMessage) => void>();

    private constructor(readonly ws: WebSocket, private readonly record: boolean) {
        this.closed = new Promise((resolve) => ws.once("close", (code, reason) => {
            this.isClosed = true;
            for (const route of [...this.routes.values()])
                route({ type: "closed" });
            this.routes.clear();
            resolve({ code, reason: reason.toString() });
        }));
        ws.on("message", (data) => {
            const message = JSON.parse(data.toString()) as WsServerMessage;
            if (message.type === "hello")
                this.hello_ ??= message;
            const id = "id" in message ? message.id : null;
            if (id != null)
                this.routes.get(id)?.(message);
            if (!this.record) {
                this.resolveWaiters(message);
                return;
            }
            const validate = validators.wsServer[message.type];
            if (validate == null)
                this.schemaViolations.push(`unknown type ${(message as { type: string }).type}`);
            else if (!validate(message as unknown))
                this.schemaViolations.push(`${message.type}: ${describeSchemaError(validate.errors)} in ${JSON.stringify(message)}`);
            this.messages.push(message);
            this.resolveWaiters(message);
        });
    }

    private resolveWaiters(message: WsServerMessage): void {
        if (this.waiters.length === 0)
            return;
        this.waiters = this.waiters.filter((w) => {
            if (!w.match(message))
                return true;
            w.resolve(message);
            return false;
        });
    }

    /** Connects and waits for the hello message. */
    static async connect(url: string, opts: ConnectOptions = {}): Promise<WsClient> {
        const ws = new WebSocket(url, { headers: opts.headers, maxPayload: opts.maxPayload ?? 100 * 1024 * 1024 });
        // errors after the upgrade end in "close", which is what callers wait for
        ws.on("error", () => undefined);
        const client = new WsClient(ws, opts.record ?? true);
        const hello = client.next((m) => m.type === "hello");
        await new Promise<void>((resolve, reject) => {
            ws.once("open", () => resolve());
            ws.once("error", reject);
            ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
        });
        await hello;
        return client;
    }

    /** The status code of a refused upgrade (or 101 when it was accepted). */
    static async upgradeStatus(url: string, headers: Record<string, string> = {}): Promise<number> {
        const ws = new WebSocket(url, { headers });
        return await new Promise((resolve, reject) => {
            ws.once("open", () => { ws.close(); resolve(101); });
            ws.once("unexpected-response", (_req, res) => { resolve(res.statusCode ?? 0); ws.terminate(); });
            ws.once("error", (err) => { if (!/Unexpected server response/.test(err.message)) reject(err); });
        });
    }

    get hello(): WsHelloMessage {
        return this.hello_!;
    }

    /** The socket is open (not closing, not closed). */
    get open(): boolean {
        return !this.isClosed && this.ws.readyState === WebSocket.OPEN;
    }

    send(message: object | string): void {
        this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
    }

    /**
     * Sends `handler` every later message whose id is `id`, and { type: "closed" } when the socket closes
     * (at once when it is closed already) until `unroute(id)`.
     */
    route(id: string, handler: (m: RoutedMessage) => void): void {
        if (this.isClosed) {
            handler({ type: "closed" });
            return;
        }
        this.routes.set(id, handler);
    }

    unroute(id: string): void {
        this.routes.delete(id);
    }

    /** Drops the connection without a close handshake, as a client that goes away does. */
    hangUp(): void {
        this.hungUp = true;
        this.ws.terminate();
    }

    /** The next message received from now on that `match` accepts (register before sending). */
    next<T extends WsServerMessage = WsServerMessage>(match: (m: WsServerMessage) => boolean, timeoutMs = 120_000): Promise<T> {
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`no matching message within ${timeoutMs} ms; got ${JSON.stringify(this.messages.slice(-5))}`)), timeoutMs);
            this.waiters.push({
                match, resolve: (m) => {
                    clearTimeout(timer);
                    resolve(m as T);
                }
            });
        });
    }

    /** The next error message with this id (or without one when id is null). */
    nextError(id: string | null): Promise<WsErrorMessage> {
        return this.next<WsErrorMessage>((m) => m.type === "error" && m.id === id);
    }

    /** `timeoutMs`: how long start and final may take (default 120 s; long prompts on a small machine take more) */
    chat(params: Omit<WsChatMessage, "type" | "id"> & { id?: string }, opts: { onDelta?: (d: WsDeltaMessage) => void, timeoutMs?: number } = {}): ChatRun {
        const id = params.id ?? `r${++nextRequest}`;
        const deltas: WsDeltaMessage[] = [];
        const start = this.next<WsStartMessage | WsErrorMessage>((m) => (m.type === "start" || m.type === "error") && m.id === id, opts.timeoutMs)
            .then((m) => {
                if (m.type === "error")
                    throw Object.assign(new Error(`${m.code}: ${m.message}`), { wsError: m });
                return m;
            });
        start.catch(() => undefined);
        const onMessage = (data: WebSocket.RawData) => {
            const message = JSON.parse(data.toString()) as WsServerMessage;
            if (message.type === "delta" && message.id === id) {
                deltas.push(message);
                opts.onDelta?.(message);
            }
        };
        this.ws.on("message", onMessage);
        const done = this.next<WsFinalMessage | WsErrorMessage>((m) => (m.type === "final" || m.type === "error") && m.id === id, opts.timeoutMs)
            .finally(() => this.ws.off("message", onMessage));
        this.send({ type: "chat", id, ...params });
        return { id, start, deltas, done, text: () => deltas.map((d) => d.text).join("") };
    }

    async close(): Promise<void> {
        if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)
            this.ws.close();
        await this.closed;
    }
}
