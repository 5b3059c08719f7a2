// A WebSocket test client for /v1/ws: records every server message, checks each against the schemas
// the server publishes, and runs chat requests to their final message.
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

let nextRequest = 0;

export class WsTestClient {
    readonly messages: WsServerMessage[] = [];
    /** server messages that do not match the published schemas */
    readonly schemaViolations: string[] = [];
    readonly closed: Promise<{ code: number, reason: string }>;
    private waiters: { match: (m: WsServerMessage) => boolean, resolve: (m: WsServerMessage) => void }[] = [];

    private constructor(readonly ws: WebSocket) {
        this.closed = new Promise((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
        ws.on("message", (data) => {
            const message = JSON.parse(data.toString()) as WsServerMessage;
            const validate = validators.wsServer[message.type];
            if (validate == null)
                this.schemaViolations.push(`unknown type ${(message as { type: string }).type}`);
            else if (!validate(message as unknown))
                this.schemaViolations.push(`${message.type}: ${describeSchemaError(validate.errors)} in ${JSON.stringify(message)}`);
            this.messages.push(message);
            this.waiters = this.waiters.filter((w) => {
                if (!w.match(message))
                    return true;
                w.resolve(message);
                return false;
            });
        });
    }

    /** Connects and waits for the hello message. */
    static async connect(url: string, opts: { headers?: Record<string, string>, maxPayload?: number } = {}): Promise<WsTestClient> {
        const ws = new WebSocket(url, { headers: opts.headers, maxPayload: opts.maxPayload ?? 100 * 1024 * 1024 });
        const client = new WsTestClient(ws);
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
        return this.messages.find((m): m is WsHelloMessage => m.type === "hello")!;
    }

    send(message: object | string): void {
        this.ws.send(typeof message === "string" ? message : JSON.stringify(message));
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
