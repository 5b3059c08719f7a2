// Puts the server together: checks the configuration against the model, starts the HTTP listener
// (so /health answers 503 while the model loads), starts the supervised engine, and shuts it all down
// in order.
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { Duplex } from "node:stream";
import * as path from "node:path";
import { optionError, type LoadedConfig } from "./config/load-config.js";
import { effectiveModelsDir, type ServerConfig } from "./config/options.js";
import { KeepKvError, resolveKeepKvSettings } from "../lib/keepkv-options.js";
import { checkMemory } from "./supervisor/memory-estimate.js";
import { EngineSupervisor } from "./supervisor/supervisor.js";
import { createApp } from "./http/app.js";
import type { Logger } from "./logger.js";
import { ServerMetrics } from "./metrics/metrics.js";
import { engineSettingsFor } from "./models/engine-settings.js";
import { closeModelInspector, inspectModelFile } from "./models/gguf-inspect.js";
import { ModelCatalog } from "./models/model-catalog.js";
import { ModelSwitcher } from "./models/model-switcher.js";
import { openAiErrorBody } from "./protocol/errors.js";
import { Scheduler } from "./scheduler/scheduler.js";
import { keyRingFrom, type KeyRing } from "./security/api-keys.js";
import { ConnectionLimiter } from "./security/connection-limit.js";
import { effectiveAllowedHosts, openBindAllowed } from "./security/hosts.js";
import { RateLimiter } from "./security/rate-limit.js";
import { WsGateway } from "./ws/ws-gateway.js";

/** how long a connection over the caps may stay open waiting for the request it is answered on */
const refusedSocketLingerMs = 2000;

export type RunningServer = {
    url: string,
    port: number,
    engine: EngineSupervisor,
    scheduler: Scheduler,
    /** stops accepting, ends requests (finish reason "shutdown" after the grace time), stops the engine */
    shutdown(): Promise<void>
};

/** The model file the configuration names: a path, or a file name in the models folder. */
export function resolveModelPath(config: ServerConfig): string {
    if (fs.existsSync(config.model))
        return path.resolve(config.model);
    const inDir = path.join(effectiveModelsDir(config), config.model);
    return fs.existsSync(inDir) ? inDir : path.resolve(config.model);
}

function checkOpenBind(loaded: LoadedConfig, keys: KeyRing): void {
    if (openBindAllowed(loaded.config, keys))
        return;
    throw optionError(loaded, "host",
        "binds beyond loopback without an API key of role user or admin (a metrics key guards /metrics only), so anyone who "
        + "can reach the port could use the server: set --api-key (KEEPKV_API_KEY), --api-keys or --api-key-file, bind 127.0.0.1, "
        + "or pass --insecure (KEEPKV_INSECURE=true) to run it open anyway");
}

export async function startServer(loaded: LoadedConfig, log: Logger): Promise<RunningServer> {
    const { config } = loaded;
    // bad or duplicate keys stop startup before anything loads
    const keys = keyRingFrom(config);
    checkOpenBind(loaded, keys);
    const modelPath = resolveModelPath(config);
    const inspection = await inspectModelFile(modelPath);
    if (!inspection.valid)
        throw optionError(loaded, "model", `cannot be used: ${inspection.error}`);
    const settings = engineSettingsFor(config, modelPath, inspection.contextLength);
    try {
        resolveKeepKvSettings(settings.keepKv, settings.contextSize);
    } catch (err) {
        if (err instanceof KeepKvError && err.option != null && err.option in config)
            throw optionError(loaded, err.option as keyof ServerConfig, err.message.replace(/^invalid KeepKV option "[^"]+": /, ""));
        throw err;
    }
    if (config.policy !== "off" && !inspection.keepKvSupported)
        throw optionError(loaded, "policy", `cannot run on ${inspection.id}: ${inspection.keepKvReason}`);
    // a context too large for memory: refused here, before llama.cpp allocates (and clears) it
    const memory = await checkMemory(settings, config.memoryLimit);
    if (!memory.fits)
        throw optionError(loaded, config.budget != null ? "budget" : config.contextSize > 0 ? "contextSize" : "sequences",
            `cannot fit in memory with ${inspection.id}: it ${memory.message}`);

    if (config.stateDir !== "") {
        // the engine writes there: a folder it cannot use is the configuration's fault, said before it starts
        try {
            fs.mkdirSync(config.stateDir, { recursive: true });
            fs.accessSync(config.stateDir, fs.constants.W_OK | fs.constants.R_OK);
        } catch (err) {
            throw optionError(loaded, "stateDir", `cannot be used: ${(err as Error).message}`);
        }
    }

    const metrics = new ServerMetrics();
    const scheduler = new Scheduler({
        maxQueue: config.maxQueue,
        queueTimeoutMs: config.queueTimeout * 1000,
        maxTokens: config.maxTokens,
        maxPromptTokens: config.maxPromptTokens,
        conversationIdleMs: config.conversationIdle * 1000
    }, metrics, log, config.sequences);
    const engine = new EngineSupervisor(scheduler, log, {
        stallTimeoutMs: config.engineStallTimeout * 1000,
        state: config.stateDir === "" ? null : {
            dir: path.resolve(config.stateDir), maxBytes: Math.floor(config.stateMaxMb * 1024 * 1024), saveIdleMs: config.stateSaveIdle * 1000
        }
    });
    scheduler.attach(engine);
    scheduler.onModelReady((info) => {
        metrics.modelServing(info.name);
        metrics.engineReady(info.policy);
        const keepKv = engine.activeSettings?.keepKv ?? settings.keepKv;
        metrics.setConfigInfo({
            model_name: info.name,
            policy: info.policy,
            variant: String(keepKv.variant),
            budget: keepKv.budget == null ? "none" : String(keepKv.budget),
            sinks: String(keepKv.sinks),
            recent: String(keepKv.recent),
            threshold: String(keepKv.threshold),
            cache_type_k: config.cacheTypeK,
            cache_type_v: config.cacheTypeV,
            context_size: String(info.contextSize),
            sequences: String(info.sequences),
            flash_attention: config.flashAttention,
            chat_format: info.chatFormat,
            keepkv_version: info.keepKvVersion ?? "none"
        });
    });
    const catalog = new ModelCatalog(effectiveModelsDir(config), [modelPath]);
    const switcher = new ModelSwitcher(config, catalog, engine, scheduler, metrics, log);

    let shuttingDown = false;
    const rateLimiter = new RateLimiter(config.rateLimit);
    const app = createApp({
        config, scheduler, engine, metrics, catalog, switcher, keys, startupModel: modelPath,
        isShuttingDown: () => shuttingDown, rateLimiter
    });
    // connections beyond the caps: their requests (and upgrades) are answered 503 too_many_connections
    // by the handler below, then they close; they are not counted
    const connections = new ConnectionLimiter(config.maxConnections, config.maxConnectionsPerAddress);
    const refusedSockets = new WeakMap<Duplex, string>();
    const server = http.createServer({ maxHeaderSize: config.maxHeaderBytes }, (req, res) => {
        const refusal = refusedSockets.get(req.socket);
        if (refusal == null) {
            app(req, res);
            return;
        }
        metrics.requestRefused("too_many_connections");
        const body = JSON.stringify(openAiErrorBody({ code: "too_many_connections", message: refusal }));
        res.writeHead(503, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body), Connection: "close" });
        res.end(body, () => req.socket.destroy());
    });
    // before node's own listener, so that the decision is made before the first request is parsed
    server.prependListener("connection", (socket: Socket) => {
        // behind a trusted proxy every connection comes from the proxy: counted in the total only
        const decision = connections.acquire(config.trustProxy ? null : socket.remoteAddress ?? "unknown");
        if (decision.ok) {
            socket.once("close", decision.release);
            return;
        }
        refusedSockets.set(socket, decision.message);
        // one that never sends a request must not hold its descriptor for the header timeout
        const timer = setTimeout(() => socket.destroy(), refusedSocketLingerMs);
        timer.unref();
        socket.once("close", () => clearTimeout(timer));
    });
    server.keepAliveTimeout = 5000;
    // a request that is not valid HTTP gets a JSON error like any other, then the connection closes
    server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
        if (err.code === "ECONNRESET" || !socket.writable) {
            socket.destroy();
            return;
        }
        const status = err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? "408 Request Timeout"
            : err.code === "HPE_HEADER_OVERFLOW" ? "431 Request Header Fields Too Large" : "400 Bad Request";
        const body = JSON.stringify(openAiErrorBody({ code: "invalid_message", message: `malformed HTTP request (${err.code ?? "parse error"})` }));
        socket.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    const gateway = new WsGateway(server, scheduler, metrics, log, {
        keys,
        allowedOrigins: config.allowedOrigins,
        maxMessageBytes: config.maxMessageBytes,
        maxRequestsPerSocket: config.maxRequestsPerSocket,
        maxBufferedBytes: config.wsMaxBufferedBytes,
        pingIntervalMs: config.wsPingInterval * 1000,
        allowedHosts: effectiveAllowedHosts(config.host, config.allowedHosts),
        rateLimiter,
        trustProxy: config.trustProxy,
        connectionRefusal: (socket) => refusedSockets.get(socket) ?? null,
        // the TCP count above cannot tell a proxy's clients apart; their WebSockets are counted by forwarded address
        ...(config.trustProxy ? { forwardedConnections: new ConnectionLimiter(Infinity, config.maxConnectionsPerAddress) } : {})
    });

    await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(config.port, config.host, () => {
            server.off("error", reject);
            resolve();
        });
    });
    const port = (server.address() as AddressInfo).port;
    const host = config.host.includes(":") ? `[${config.host}]` : config.host;
    const url = `http://${host}:${port}`;
    // the one line on stdout: tools and tests read the port from it
    process.stdout.write(`keepkv listening on ${url}\n`);
    log.info("listening", { url, model: path.basename(modelPath) });

    try {
        await engine.start(settings);
    } catch (err) {
        metrics.modelLoadFailed();
        server.close();
        gateway.closeAll();
        await engine.stop(2000);
        throw err;
    }

    const shutdown = async (): Promise<void> => {
        if (shuttingDown)
            return;
        shuttingDown = true;
        log.info("shutting down", { grace_s: config.shutdownGrace });
        gateway.stopAccepting();
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        await scheduler.shutdown(config.shutdownGrace * 1000);
        gateway.closeAll();
        server.closeIdleConnections();
        await engine.stop(5000);
        closeModelInspector();
        setTimeout(() => server.closeAllConnections(), 1000).unref();
        await closed;
        log.info("stopped");
    };
    return { url, port, engine, scheduler, shutdown };
}
