// The WebSocket endpoint (/v1/ws): checks the origin and the bearer token at the upgrade, then hands
// each connection to a WsSession; pings every client and drops the ones that stop answering.
import type { IncomingMessage, Server } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket } from "ws";
import type { Logger } from "../logger.js";
import type { ServerMetrics } from "../metrics/metrics.js";
import { errorCodes, openAiErrorBody, type ErrorCode } from "../protocol/errors.js";
import type { Scheduler } from "../scheduler/scheduler.js";
import { bearerToken, originAllowed, setPrincipal } from "../http/auth.js";
import { anonymous, type KeyRing, type Principal } from "../security/api-keys.js";
import { clientAddress, hostAllowed, type HostPolicy } from "../security/hosts.js";
import type { ConnectionLimiter } from "../security/connection-limit.js";
import { addressBucket, type RateLimiter } from "../security/rate-limit.js";
import { wsCloseCodes, WsSession } from "./ws-session.js";

export const wsPath = "/v1/ws";

export type WsGatewayOptions = {
    keys: KeyRing,
    allowedOrigins: readonly string[],
    maxMessageBytes: number,
    maxRequestsPerSocket: number,
    maxBufferedBytes: number,
    pingIntervalMs: number,
    /** Host names accepted (null: any); see security/hosts.ts */
    allowedHosts?: HostPolicy | null,
    rateLimiter?: RateLimiter,
    trustProxy?: boolean,
    /** why this connection is over the connection caps (server.ts decides when it opens), or null */
    connectionRefusal?: (socket: Duplex) => string | null,
    /** behind a trusted proxy: WebSockets counted per forwarded client address */
    forwardedConnections?: ConnectionLimiter
};

function refuseUpgrade(socket: Duplex, code: ErrorCode, message: string): void {
    const status = errorCodes[code].status;
    const body = JSON.stringify(openAiErrorBody({ code, message }));
    socket.end(`HTTP/1.1 ${status} ${code}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

export class WsGateway {
    private readonly wss: WebSocketServer;
    private readonly sessions = new Set<WsSession>();
    private readonly alive = new WeakMap<WebSocket, boolean>();
    private readonly pinger: NodeJS.Timeout;
    private accepting = true;

    constructor(
        server: Server,
        private readonly scheduler: Scheduler,
        private readonly metrics: ServerMetrics,
        private readonly log: Logger,
        private readonly opts: WsGatewayOptions
    ) {
        // maxPayload: ws closes a connection with 1009 when a frame is larger
        this.wss = new WebSocketServer({ noServer: true, maxPayload: opts.maxMessageBytes, perMessageDeflate: false });
        server.on("upgrade", (req, socket, head) => this.onUpgrade(req, socket, head));
        this.pinger = setInterval(() => this.ping(), opts.pingIntervalMs);
        this.pinger.unref();
    }

    get connections(): number {
        return this.sessions.size;
    }

    private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
        socket.on("error", () => socket.destroy());
        const url = new URL(req.url ?? "/", "http://localhost");
        if (url.pathname !== wsPath) {
            refuseUpgrade(socket, "not_found", `no WebSocket endpoint at ${url.pathname}; use ${wsPath}`);
            return;
        }
        if (!this.accepting) {
            refuseUpgrade(socket, "shutting_down", "the server is shutting down");
            return;
        }
        const overCap = this.opts.connectionRefusal?.(socket) ?? null;
        if (overCap != null) {
            this.metrics.requestRefused("too_many_connections");
            refuseUpgrade(socket, "too_many_connections", overCap);
            return;
        }
        if (!hostAllowed(req.headers.host, this.opts.allowedHosts ?? null)) {
            this.metrics.requestRefused("forbidden_host");
            refuseUpgrade(socket, "forbidden_host", "this Host is not allowed (allowed-hosts)");
            return;
        }
        if (!originAllowed(req.headers.origin, req.headers.host, this.opts.allowedOrigins)) {
            this.metrics.requestRefused("forbidden_origin");
            refuseUpgrade(socket, "forbidden_origin", `origin ${req.headers.origin} is not allowed (allowed-origins)`);
            return;
        }
        const client = clientAddress(req, this.opts.trustProxy === true);
        const limiter = this.opts.rateLimiter;
        const keys = this.opts.keys;
        let principal: Principal | null = keys.apiOpen ? anonymous : null;
        const token = bearerToken(req.headers.authorization);
        // an address that has used up its allowance (wrong tokens count) gets no answer about its token
        if (!keys.apiOpen && limiter != null && limiter.exhausted(addressBucket(client))) {
            this.metrics.requestRefused("rate_limited");
            refuseUpgrade(socket, "rate_limited", `more than ${limiter.perMinute} requests per minute from this client (rate-limit); retry later`);
            return;
        }
        if (!keys.apiOpen && token != null) {
            principal = keys.identify(token);
            if (principal == null) {
                this.metrics.requestRefused("unauthorized");
                limiter?.take(addressBucket(client));
                refuseUpgrade(socket, "unauthorized", "wrong bearer token");
                return;
            }
            if (principal.role === "metrics") {
                this.metrics.requestRefused("forbidden");
                refuseUpgrade(socket, "forbidden", `the key "${principal.name}" (role metrics) may read /metrics only`);
                return;
            }
        }
        // only a browser page (which cannot set headers on a WebSocket) may authenticate with a first
        // message; any other client must bring the token in the upgrade
        const origin = req.headers.origin;
        if (principal == null && (origin == null || origin === "")) {
            this.metrics.requestRefused("unauthorized");
            limiter?.take(addressBucket(client));
            refuseUpgrade(socket, "unauthorized", "missing bearer token (Authorization: Bearer ...)");
            return;
        }
        const counted = this.opts.forwardedConnections?.acquire(client);
        if (counted != null && !counted.ok) {
            this.metrics.requestRefused("too_many_connections");
            refuseUpgrade(socket, "too_many_connections", counted.message);
            return;
        }
        if (counted?.ok === true)
            socket.once("close", counted.release);
        if (principal != null)
            setPrincipal(req, principal);
        this.wss.handleUpgrade(req, socket, head, (ws) => this.onConnection(ws, principal, client));
    }

    private onConnection(ws: WebSocket, principal: Principal | null, client: string): void {
        this.metrics.websocketOpened();
        this.alive.set(ws, true);
        ws.on("pong", () => this.alive.set(ws, true));
        const session = new WsSession(ws, this.scheduler, this.metrics, this.log, {
            keys: this.opts.keys,
            principal,
            maxRequestsPerSocket: this.opts.maxRequestsPerSocket,
            maxMessageBytes: this.opts.maxMessageBytes,
            maxBufferedBytes: this.opts.maxBufferedBytes,
            modelName: () => this.scheduler.model?.name ?? null,
            ...(this.opts.rateLimiter != null ? { rateLimiter: this.opts.rateLimiter } : {}),
            client
        });
        this.sessions.add(session);
        ws.on("close", () => this.sessions.delete(session));
    }

    private ping(): void {
        for (const ws of this.wss.clients) {
            if (this.alive.get(ws) === false) {
                this.metrics.clientDropped("ws", "ping_timeout");
                ws.terminate();
                continue;
            }
            this.alive.set(ws, false);
            ws.ping();
        }
    }

    /** Refuses new connections (the server is shutting down). */
    stopAccepting(): void {
        this.accepting = false;
    }

    /** Closes every connection with 1001 (after the scheduler has sent their finals). */
    closeAll(): void {
        clearInterval(this.pinger);
        for (const session of this.sessions)
            session.close(wsCloseCodes.goingAway, "server shutting down");
        setTimeout(() => {
            for (const ws of this.wss.clients)
                ws.terminate();
        }, 1000).unref();
    }
}
