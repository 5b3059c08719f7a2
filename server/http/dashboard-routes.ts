// The web dashboard (dashboard/): static files served as they are (plain ES modules, no build step), and
// GET /v1/config, the serving configuration the dashboard shows. The pages need no token (they hold no
// data; the page asks for the API key and sends it with every API call); /v1/config is mounted after the
// authentication middleware like every other API route.
import * as fs from "node:fs";
import * as path from "node:path";
import type { Express, Request, Response, Router } from "express";
import { repoRoot } from "../../lib/paths.js";
import type { ServerConfig } from "../config/options.js";
import type { EngineSupervisor } from "../supervisor/supervisor.js";
import type { ServingConfig } from "../protocol/http-messages.js";
import type { Scheduler } from "../scheduler/scheduler.js";

export const dashboardDir = path.join(repoRoot, "dashboard");

const contentTypes: Record<string, string> = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon"
};

// same-origin everything: no CDN, no inline script; WebSockets to this origin only ('self' covers ws: and
// wss: of the same host in CSP level 3)
const contentSecurityPolicy = [
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"
].join("; ");

function sendFile(res: Response, file: string): void {
    const type = contentTypes[path.extname(file)];
    let body: Buffer;
    try {
        body = type == null ? Buffer.alloc(0) : fs.readFileSync(file);
    } catch {
        res.status(404).type("text/plain").send("not found\n");
        return;
    }
    if (type == null) {
        res.status(404).type("text/plain").send("not found\n");
        return;
    }
    res.set({
        "Content-Type": type,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": contentSecurityPolicy,
        "Referrer-Policy": "no-referrer"
    });
    res.send(body);
}

/** GET / (the page) and GET /dashboard/<file> (its modules and styles). Mounted before authentication. */
export function addDashboardPages(app: Express): void {
    app.get("/", (_req: Request, res: Response) => sendFile(res, path.join(dashboardDir, "index.html")));
    app.get("/dashboard/:file", (req: Request, res: Response) => {
        const name = String(req.params.file);
        // one flat folder: no sub-paths, no dot files
        if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name) || name.includes("..")) {
            res.status(404).type("text/plain").send("not found\n");
            return;
        }
        sendFile(res, path.join(dashboardDir, name));
    });
}

export type DashboardApiDeps = { config: ServerConfig, scheduler: Scheduler, engine: EngineSupervisor };

/** GET /v1/config: the model and KeepKV settings that serve now (no secrets). Mounted after authentication. */
export function addDashboardApi(router: Router, deps: DashboardApiDeps): void {
    const { config, scheduler, engine } = deps;
    router.get("/v1/config", (_req: Request, res: Response) => {
        const model = scheduler.model;
        const settings = engine.activeSettings;
        const keepKv = settings?.keepKv ?? {};
        const body: ServingConfig = {
            model: model == null ? null : {
                id: model.name,
                architecture: model.architecture,
                train_context_size: model.trainContextSize,
                chat_format: model.chatFormat
            },
            keepkv_version: model?.keepKvVersion ?? null,
            context_size: model?.contextSize ?? settings?.contextSize ?? null,
            sequences: model?.sequences ?? config.sequences,
            batch_size: settings?.batchSize ?? config.batchSize,
            threads: settings?.threads ?? config.threads,
            flash_attention: settings?.flashAttention ?? config.flashAttention,
            cache_type_k: settings?.cacheTypeK ?? config.cacheTypeK,
            cache_type_v: settings?.cacheTypeV ?? config.cacheTypeV,
            keepkv: {
                policy: model?.policy ?? keepKv.policy ?? config.policy,
                variant: keepKv.variant ?? config.variant,
                selection: keepKv.selection ?? config.selection,
                budget: keepKv.budget ?? config.budget,
                sinks: keepKv.sinks ?? config.sinks,
                recent: keepKv.recent ?? config.recent,
                threshold: keepKv.threshold ?? config.threshold,
                protect: keepKv.protect ?? config.protect,
                value_threshold: keepKv.valueThreshold ?? config.valueThreshold,
                chunk: keepKv.chunk ?? config.chunk,
                observed: keepKv.observed ?? config.observed,
                score_mode: keepKv.scoreMode ?? config.scoreMode,
                score_decay: keepKv.scoreDecay ?? config.scoreDecay,
                query_decay: keepKv.queryDecay ?? config.queryDecay
            },
            limits: {
                max_tokens: config.maxTokens,
                max_prompt_tokens: config.maxPromptTokens,
                max_requests_per_socket: config.maxRequestsPerSocket,
                max_message_bytes: config.maxMessageBytes,
                conversation_idle_s: config.conversationIdle
            }
        };
        res.json(body);
    });
}
