// The HTTP API (express): health and readiness, models, admin, metrics, schemas, and the OpenAI routes.
// Thin: each route asks the scheduler, the engine supervisor or the catalog, and answers.
import express, { type NextFunction, type Request, type Response } from "express";
import type { ServerConfig } from "../config/options.js";
import { StatsCache } from "../supervisor/stats-cache.js";
import type { EngineSupervisor } from "../supervisor/supervisor.js";
import type { ServerMetrics } from "../metrics/metrics.js";
import type { ModelCatalog } from "../models/model-catalog.js";
import type { ModelSwitcher } from "../models/model-switcher.js";
import { ApiError, toWireError } from "../protocol/errors.js";
import type {
    AdminModelResponse, AdminModelSwitched, ConversationCreated, EngineReport, HealthResponse, KvResponse, ModelEntry, ModelList,
    Readiness, ReadinessResponse, SlotEntry, UnavailableBody
} from "../protocol/http-messages.js";
import { wireKvResponse } from "../protocol/kv-wire.js";
import { describeSchemaError, schemas, validators } from "../protocol/schemas.js";
import { newConversationId } from "../scheduler/request-spec.js";
import type { Scheduler } from "../scheduler/scheduler.js";
import type { SlotState } from "../scheduler/slot-pool.js";
import { anonymous, type KeyRing, type Principal } from "../security/api-keys.js";
import { clientAddress, effectiveAllowedHosts, hostAllowed } from "../security/hosts.js";
import { addressBucket, type RateLimiter } from "../security/rate-limit.js";
import { bearerToken, originAllowed, principalOf, setPrincipal } from "./auth.js";
import { addDashboardApi, addDashboardPages } from "./dashboard-routes.js";
import { addOpenAiRoutes, sendError } from "./openai-routes.js";

export type AppDeps = {
    config: ServerConfig,
    scheduler: Scheduler,
    engine: EngineSupervisor,
    metrics: ServerMetrics,
    catalog: ModelCatalog,
    switcher: ModelSwitcher,
    /** the API keys and their roles */
    keys: KeyRing,
    /** the model path given at startup (listed even when outside the models folder) */
    startupModel: string,
    isShuttingDown: () => boolean,
    /** the per-client request rate, shared with the WebSocket API */
    rateLimiter?: RateLimiter
};

/** how old the KV statistics of /metrics and /v1/kv may be (unless a request finished since) */
const statsMaxAgeMs = 500;

/** llama-server's 503 body */
function unavailable(message: string): UnavailableBody {
    return { error: { code: 503, message, type: "unavailable_error" } };
}

function engineReport(engine: EngineSupervisor): EngineReport {
    const exit = engine.lastExit;
    return {
        state: engine.state,
        pid: engine.pid,
        restarts: engine.restarts,
        rss_bytes: engine.rssBytes,
        last_exit: exit == null ? null : { reason: exit.reason, code: exit.code, signal: exit.signal, at: exit.at },
        last_start_error: engine.lastStartError,
        model_file: engine.modelFileState()
    };
}

export function createApp(deps: AppDeps): express.Express {
    const { config, scheduler, engine, metrics, catalog, switcher, keys } = deps;
    const app = express();
    app.disable("x-powered-by");
    app.set("etag", false);

    // DNS rebinding: only Host names of this machine or allowed-hosts (security/hosts.ts)
    const allowedHosts = effectiveAllowedHosts(config.host, config.allowedHosts);
    app.use((req: Request, res: Response, next: NextFunction) => {
        if (hostAllowed(req.headers.host, allowedHosts)) {
            next();
            return;
        }
        metrics.requestRefused("forbidden_host");
        sendError(res, { code: "forbidden_host", message: "this Host is not allowed (allowed-hosts)" });
    });

    // browsers: only allowed origins; the preflight is answered here
    app.use((req: Request, res: Response, next: NextFunction) => {
        const origin = req.headers.origin;
        if (!originAllowed(origin, req.headers.host, config.allowedOrigins)) {
            metrics.requestRefused("forbidden_origin");
            sendError(res, { code: "forbidden_origin", message: `origin ${origin} is not allowed (allowed-origins)` });
            return;
        }
        if (origin != null) {
            res.set("Access-Control-Allow-Origin", origin);
            res.set("Vary", "Origin");
            res.set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Conversation-Id");
            res.set("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        }
        if (req.method === "OPTIONS") {
            res.status(204).end();
            return;
        }
        next();
    });

    const limiter = deps.rateLimiter;
    const limited = (res: Response, retryAfterS: number) => {
        metrics.requestRefused("rate_limited");
        res.set("Retry-After", String(retryAfterS));
        sendError(res, { code: "rate_limited", message: `more than ${limiter!.perMinute} requests per minute from this client (rate-limit); retry in ${retryAfterS} s` });
    };

    // llama-server's shapes: 503 with its exact body while loading, {"status":"ok"} when ready. Probes
    // need no token and learn only that; the engine's details (pid, restarts, the model and its file)
    // are added for a request with a user or admin key (the keys that may call the API, whose
    // /v1/models names the models anyway; a metrics key gets the status only), or for anyone when the
    // API is open, since /admin/model then tells them too. A wrong token costs its address as on the
    // API, and an address out of allowance gets the status without its token checked: /health must not
    // be a way round the limit on guessing keys.
    const healthDetailsAllowed = (req: Request): boolean => {
        if (keys.apiOpen)
            return true;
        const token = bearerToken(req.headers.authorization);
        if (token == null)
            return false;
        const address = addressBucket(clientAddress(req, config.trustProxy));
        if (limiter?.exhausted(address) === true)
            return false;
        const principal = keys.identify(token);
        if (principal == null) {
            limiter?.take(address);
            return false;
        }
        return principal.role === "admin" || principal.role === "user";
    };
    app.get("/health", (req, res) => {
        const ready = engine.state === "ready" && scheduler.model != null && !deps.isShuttingDown();
        const details = healthDetailsAllowed(req);
        if (!ready)
            res.status(503).json({
                ...unavailable(deps.isShuttingDown() ? "Shutting down" : engine.lastStartError != null ? "Engine unavailable" : "Loading model"),
                ...(details ? { engine: engineReport(engine) } : {})
            } satisfies HealthResponse);
        else
            res.json({ status: "ok", ...(details ? { model: scheduler.model!.name, engine: engineReport(engine) } : {}) } satisfies HealthResponse);
    });

    // the dashboard's page and modules hold no data: served without a token (the page sends it to the API)
    addDashboardPages(app);

    // who calls, and whether the key's role may use this route
    app.use((req: Request, res: Response, next: NextFunction) => {
        // routing ignores case, repeated slashes and a trailing slash: so must the choice of role
        const route = req.path.toLowerCase().replace(/\/{2,}/g, "/").replace(/\/+$/, "");
        const isMetrics = route === "/metrics";
        if (isMetrics ? keys.metricsOpen : keys.apiOpen) {
            setPrincipal(req, anonymous);
            next();
            return;
        }
        const address = addressBucket(clientAddress(req, config.trustProxy));
        // wrong tokens count against the address, and an address out of allowance gets no answer about
        // its token: guessing a key is as slow as the rate limit
        if (limiter != null && limiter.exhausted(address)) {
            limited(res, limiter.retryAfterS(address));
            return;
        }
        const token = bearerToken(req.headers.authorization);
        const principal: Principal | null = token == null ? null : keys.identify(token);
        if (principal == null) {
            const charged = limiter?.take(address);
            if (charged != null && !charged.ok) {
                limited(res, charged.retryAfterS);
                return;
            }
            metrics.requestRefused("unauthorized");
            res.set("WWW-Authenticate", "Bearer");
            sendError(res, { code: "unauthorized", message: "missing or wrong bearer token (Authorization: Bearer ...)" });
            return;
        }
        const isAdmin = route === "/admin" || route.startsWith("/admin/");
        const allowed = isMetrics ? principal.role !== "user" : isAdmin ? principal.role === "admin" : principal.role !== "metrics";
        if (!allowed) {
            metrics.requestRefused("forbidden");
            sendError(res, {
                code: "forbidden",
                message: `the key "${principal.name}" (role ${principal.role}) may not use this endpoint; ${isMetrics ? "/metrics takes metrics and admin keys" : isAdmin ? "/admin/* takes admin keys" : "the API takes user and admin keys"}`
            });
            return;
        }
        setPrincipal(req, principal);
        next();
    });
    // the same rules again where the routes are mounted, whatever spelling of the path reached them
    const refuseRole = (res: Response, what: string) => {
        metrics.requestRefused("forbidden");
        sendError(res, { code: "forbidden", message: what });
    };
    app.use("/admin", (req: Request, res: Response, next: NextFunction) => {
        if (principalOf(req)?.role === "admin")
            next();
        else
            refuseRole(res, "/admin/* takes admin keys");
    });
    const metricsAllowed = (req: Request) => {
        const principal = principalOf(req);
        return keys.metricsOpen || (principal != null && principal !== anonymous && principal.role !== "user");
    };

    // a conversation id shows only to the principal whose conversation it is, and to admins. Applied to
    // each answer after the statistics are read: the cache below holds the engine's numbers only, the
    // same for every caller
    const visibleConversation = (req: Request, slot: SlotState | undefined): string | null => {
        const principal = principalOf(req);
        if (slot?.conversation == null || principal == null)
            return null;
        return principal.role === "admin" || slot.owner === principal.name ? slot.conversation : null;
    };

    // both read through one cache (supervisor/stats-cache.ts): polling either cannot starve the engine
    const stats = new StatsCache((timeoutMs) => {
        metrics.engineStatsRead();
        return engine.stats(timeoutMs);
    }, statsMaxAgeMs, () => scheduler.finishedRequests + engine.restarts);

    app.get("/metrics", async (req, res) => {
        if (!metricsAllowed(req)) {
            refuseRole(res, "/metrics takes metrics and admin keys");
            return;
        }
        // recent KV statistics for this scrape; a busy or restarting engine leaves the last ones
        await stats.get(300);
        res.set("Content-Type", metrics.contentType);
        res.send(await metrics.exposition());
    });

    const readiness = (_req: Request, res: Response, failOnNoSlot: boolean) => {
        const status = scheduler.status();
        const ready = engine.state === "ready" && scheduler.model != null && !deps.isShuttingDown();
        const body: Readiness = { ready, sequences: status.sequences, available: status.available, running: status.running, waiting: status.waiting };
        if (!ready)
            res.status(503).json({ ...unavailable("Loading model"), ...body } satisfies ReadinessResponse);
        else if (failOnNoSlot && status.available === 0)
            res.status(503).json({ ...unavailable("no slot available"), ...body } satisfies ReadinessResponse);
        else
            res.json({ status: "ok", ...body } satisfies ReadinessResponse);
    };
    app.get("/ready", (req, res) => readiness(req, res, true));
    app.get("/slots", (req, res) => {
        if (req.query.fail_on_no_slot === "1") {
            readiness(req, res, true);
            return;
        }
        res.json(scheduler.slotSnapshot().map((s): SlotEntry => ({
            id: s.index, is_processing: s.request != null, conversation_id: visibleConversation(req, s)
        })));
    });

    // the KV statistics right now, for dashboards that poll (the same numbers as the keepkv_kv_* metrics)
    app.get("/v1/kv", async (req, res) => {
        const snapshot = await stats.get(1000);
        if (snapshot == null) {
            sendError(res, { code: "engine_unavailable", message: "the engine is loading or busy; retry" });
            return;
        }
        const slots = scheduler.slotSnapshot();
        res.json(wireKvResponse(snapshot.context, snapshot.rssBytes, (sequence) => {
            const state = slots[sequence];
            return { busy: state?.request != null, held: state?.conversation != null, conversation_id: visibleConversation(req, state) };
        }) satisfies KvResponse);
    });

    app.get("/v1/schemas", (_req, res) => {
        res.json(schemas);
    });

    const listModels = async (): Promise<ModelEntry[]> => {
        const serving = scheduler.model;
        const entries = await catalog.list([deps.startupModel]);
        return entries.map((m) => ({
            id: m.id,
            object: "model",
            created: Math.floor(m.modifiedMs / 1000),
            owned_by: "keepkv",
            loaded: serving != null && serving.modelPath === m.path,
            valid: m.valid,
            error: m.error,
            error_code: m.errorCode,
            size_bytes: m.sizeBytes,
            architecture: m.architecture,
            name: m.name,
            context_length: m.contextLength,
            parameters: m.parameters,
            has_chat_template: m.hasChatTemplate,
            keepkv_supported: m.keepKvSupported,
            keepkv_reason: m.keepKvReason
        }));
    };
    app.get("/v1/models", async (_req, res) => {
        res.json({ object: "list", data: await listModels() } satisfies ModelList);
    });
    app.get("/v1/models/:id", async (req, res) => {
        const model = (await listModels()).find((m) => m.id === req.params.id);
        if (model == null)
            sendError(res, { code: "model_not_found", message: `no model "${req.params.id}"` });
        else
            res.json(model);
    });

    app.use(express.json({ limit: config.maxMessageBytes }));

    // a server-issued conversation id: 128 random bits, so that nobody can guess it, not even a client
    // that shares this principal (one key for several apps, or no keys at all)
    app.post("/v1/conversations", (_req, res) => {
        res.json({ id: newConversationId(), object: "conversation", created_at: Math.floor(Date.now() / 1000) } satisfies ConversationCreated);
    });

    app.get("/admin/model", (_req, res) => {
        res.json({ model: scheduler.model, engine: engineReport(engine) } satisfies AdminModelResponse);
    });
    app.post("/admin/model", async (req, res) => {
        if (!validators.selectModel(req.body)) {
            sendError(res, { code: "invalid_message", message: describeSchemaError(validators.selectModel.errors) });
            return;
        }
        try {
            const result = await switcher.switchTo((req.body as { model: string }).model);
            res.json({ status: "ok", model: result.model, previous: result.previous } satisfies AdminModelSwitched);
        } catch (err) {
            sendError(res, toWireError(err));
        }
    });

    const router = express.Router();
    addOpenAiRoutes(router, scheduler, metrics, config.wsMaxBufferedBytes,
        deps.rateLimiter != null ? { rateLimiter: deps.rateLimiter, trustProxy: config.trustProxy, keyed: !keys.apiOpen } : undefined);
    addDashboardApi(router, { config, scheduler, engine });
    app.use(router);

    app.use((req: Request, res: Response) => {
        sendError(res, { code: "not_found", message: `no route ${req.method} ${req.path}` });
    });
    app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
        const type = (err as { type?: string }).type;
        if (type === "entity.too.large")
            sendError(res, { code: "message_too_large", message: `the body is larger than max-message-bytes (${config.maxMessageBytes})` });
        else if (type === "entity.parse.failed")
            sendError(res, { code: "invalid_json", message: `the body is not valid JSON: ${(err as Error).message}` });
        else if (err instanceof ApiError)
            sendError(res, toWireError(err));
        else if (typeof (err as { status?: unknown }).status === "number" && (err as { status: number }).status >= 400 && (err as { status: number }).status < 500)
            // the client's fault, found by express or body-parser: a bad URL encoding, an unsupported
            // charset or content encoding, an aborted body
            sendError(res, { code: "invalid_message", message: `bad request: ${(err as Error).message}` });
        else
            sendError(res, { code: "internal_error", message: (err as Error)?.message ?? String(err) });
    });
    return app;
}

