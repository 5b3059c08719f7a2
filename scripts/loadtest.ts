// `npm run loadtest -- [--clients N] [--duration SECONDS] [--json] [options]`: drives the real server on
// loopback with many concurrent WebSocket and OpenAI-style HTTP clients, with random cancels and abrupt
// disconnects, under a KeepKV budget, and reports what happened: requests completed, cancelled and failed
// (by code), time to first token and inter-token latency percentiles, aggregate tokens/s, peak memory and
// its slope after warm-up, and whether every sequence went back to the pool.
//
// Bounded: clients stop starting requests after --duration seconds; what is in flight then gets at most
// --drain seconds to end. Loopback only: it starts its own server on 127.0.0.1 (or drives --url, which
// must be a loopback address). Seeded (--seed): the same seed makes the same choices (the timing of a
// real server still varies).
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import WebSocket from "ws";
import { corpusPath, testModelPath } from "../server/engine/model-paths.js";
import { repoRoot } from "./lib/paths.js";
import { seededRandom } from "./lib/seeded-random.js";

export { seededRandom };

// ---------------------------------------------------------------- options

export type LoadTestOptions = {
    clients: number,
    durationS: number,
    /** seconds after which memory counts as warmed up (0: a fifth of the duration, at least 5 s) */
    warmupS: number,
    /** the longest wait for requests in flight after the duration */
    drainS: number,
    seed: number,
    json: boolean,
    /** share of clients that use the OpenAI HTTP API (the rest use the WebSocket) */
    httpShare: number,
    /** drive this server instead of starting one (loopback only) */
    url: string | null,
    apiKey: string | null,
    /** server options for the server the load test starts */
    model: string,
    sequences: number,
    contextSize: number,
    policy: string,
    budget: string,
    batchSize: number,
    threads: number,
    maxTokens: number,
    /** further server arguments */
    serverArgs: string[]
};

export const loadTestDefaults: LoadTestOptions = {
    clients: 32,
    durationS: 300,
    warmupS: 0,
    drainS: 60,
    seed: 1,
    json: false,
    httpShare: 0.25,
    url: null,
    apiKey: null,
    // stories3M: the load test measures the server under load, not the model; its prompts are TinyStories
    model: testModelPath(),
    sequences: 8,
    contextSize: 1024,
    policy: "keepkv",
    budget: "64",
    batchSize: 16,
    threads: 1,
    maxTokens: 160,
    serverArgs: []
};

const usage = `Usage: npm run -s loadtest -- [options]

  --clients N        concurrent clients (default 32)
  --duration S       seconds of load (default 300)
  --warmup S         seconds before memory counts as warmed up (default: a fifth of the duration, >= 10)
  --drain S          longest wait for requests in flight at the end (default 60)
  --seed N           seed of the random choices (default 1)
  --json             print one JSON object instead of the report
  --http-share F     share of clients on the OpenAI HTTP API (default 0.25)
  --url URL          drive a running server (loopback only) instead of starting one
  --api-key KEY      its bearer token
  --model PATH, --sequences N, --context-size N, --policy P, --budget B, --batch-size N, --threads N, --max-tokens N
                     options of the server it starts (defaults stories3M, 8, 1024, keepkv, 64, 16, 1, 160)
  --server-arg ARG   one more argument for that server (repeatable)
`;

export function parseLoadTestArgs(argv: readonly string[]): LoadTestOptions {
    const opts: LoadTestOptions = { ...loadTestDefaults, serverArgs: [] };
    const num = (flag: string, raw: string | undefined, min: number): number => {
        const n = Number(raw);
        if (raw == null || !Number.isFinite(n) || n < min)
            throw new Error(`${flag} needs a number >= ${min}, got ${raw}`);
        return n;
    };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i]!;
        const next = () => argv[++i];
        switch (arg) {
            case "--clients": opts.clients = Math.floor(num(arg, next(), 1)); break;
            case "--duration": opts.durationS = num(arg, next(), 1); break;
            case "--warmup": opts.warmupS = num(arg, next(), 0); break;
            case "--drain": opts.drainS = num(arg, next(), 1); break;
            case "--seed": opts.seed = Math.floor(num(arg, next(), 0)); break;
            case "--json": opts.json = true; break;
            case "--http-share": opts.httpShare = Math.min(1, num(arg, next(), 0)); break;
            case "--url": opts.url = next() ?? null; break;
            case "--api-key": opts.apiKey = next() ?? null; break;
            case "--model": opts.model = next() ?? opts.model; break;
            case "--sequences": opts.sequences = Math.floor(num(arg, next(), 1)); break;
            case "--context-size": opts.contextSize = Math.floor(num(arg, next(), 64)); break;
            case "--policy": opts.policy = next() ?? "keepkv"; break;
            case "--budget": opts.budget = next() ?? "none"; break;
            case "--batch-size": opts.batchSize = Math.floor(num(arg, next(), 1)); break;
            case "--threads": opts.threads = Math.floor(num(arg, next(), 0)); break;
            case "--max-tokens": opts.maxTokens = Math.floor(num(arg, next(), 1)); break;
            case "--server-arg": opts.serverArgs.push(next() ?? ""); break;
            case "--help": case "-h":
                process.stdout.write(usage);
                process.exit(0);
                break;
            default:
                throw new Error(`unknown option ${arg}\n${usage}`);
        }
    }
    if (opts.url != null) {
        const host = new URL(opts.url).hostname.replace(/^\[|\]$/g, "");
        if (!(host === "localhost" || host === "::1" || host.startsWith("127.")))
            throw new Error(`--url must be a loopback address (the load test never leaves this machine), got ${opts.url}`);
    }
    return opts;
}

// ---------------------------------------------------------------- small tools

export function percentile(sorted: readonly number[], p: number): number | null {
    if (sorted.length === 0)
        return null;
    const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p / 100 * sorted.length) - 1));
    return sorted[rank]!;
}

/** Least-squares slope of y over x. */
export function slope(points: readonly { x: number, y: number }[]): number | null {
    if (points.length < 3)
        return null;
    const n = points.length;
    const mx = points.reduce((a, p) => a + p.x, 0) / n;
    const my = points.reduce((a, p) => a + p.y, 0) / n;
    let num = 0;
    let den = 0;
    for (const p of points) {
        num += (p.x - mx) * (p.y - my);
        den += (p.x - mx) ** 2;
    }
    return den === 0 ? null : num / den;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const round = (x: number | null, digits = 1) => x == null ? null : Math.round(x * 10 ** digits) / 10 ** digits;

function rssOfPid(pid: number | null | undefined): { rss: number, hwm: number } | null {
    if (pid == null)
        return null;
    try {
        const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
        const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
        return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
    } catch {
        return null;
    }
}

/** Prompts: passages of the TinyStories corpus, short ones and ones longer than the budget. */
function promptSource(rng: () => number): { prompt(long: boolean): string } {
    let words: string[];
    try {
        words = fs.readFileSync(corpusPath(), "utf8").split(/\s+/).filter((w) => w !== "");
    } catch {
        words = "Once upon a time there was a little girl named Lily who loved to play in the park with her dog".split(" ");
    }
    return {
        prompt(long: boolean) {
            const length = long ? 150 + Math.floor(rng() * 450) : 4 + Math.floor(rng() * 30);
            const start = Math.floor(rng() * Math.max(1, words.length - length));
            return words.slice(start, start + length).join(" ");
        }
    };
}

// ---------------------------------------------------------------- bookkeeping

type Outcome = "completed" | "cancelled" | "disconnected" | "failed";

class Tally {
    started = 0;
    completed = 0;
    cancelled = 0;
    disconnected = 0;
    /** completions that raced a cancel and finished first */
    cancelRaces = 0;
    failedByCode: Record<string, number> = {};
    failureSamples: string[] = [];
    ttftMs: number[] = [];
    itlMs: number[] = [];
    tokens = 0;
    byApi: Record<string, Record<Outcome, number>> = {};

    record(api: string, outcome: Outcome): void {
        this.byApi[api] ??= { completed: 0, cancelled: 0, disconnected: 0, failed: 0 };
        this.byApi[api]![outcome]++;
        if (outcome !== "failed")
            this[outcome]++;
    }

    fail(api: string, code: string, detail: string): void {
        this.record(api, "failed");
        this.failedByCode[code] = (this.failedByCode[code] ?? 0) + 1;
        if (this.failureSamples.length < 20)
            this.failureSamples.push(`${api} ${code}: ${detail.slice(0, 300)}`);
    }

    get failed(): number {
        return Object.values(this.failedByCode).reduce((a, b) => a + b, 0);
    }
}

/** Token timing of one request, seen by the client. */
class Timing {
    private readonly sentAt = performance.now();
    private last = 0;
    tokens = 0;

    constructor(private readonly tally: Tally) {}

    /** `n` tokens arrived together */
    arrived(n: number): void {
        const now = performance.now();
        if (n <= 0)
            return;
        if (this.last === 0)
            this.tally.ttftMs.push(now - this.sentAt);
        else
            for (let i = 0; i < n; i++)
                this.tally.itlMs.push((now - this.last) / n);
        this.last = now;
        this.tokens += n;
    }
}

type Ctx = {
    base: string,
    wsUrl: string,
    headers: Record<string, string>,
    deadline: number,
    tally: Tally,
    maxTokens: number
};

// ---------------------------------------------------------------- WebSocket clients

type WsMessage = { type: string, id?: string | null, seq?: number, tokens?: number, code?: string, message?: string, finish_reason?: string, error?: { code: string, message: string }, usage?: { completion_tokens: number } };

class WsConn {
    private readonly handlers = new Map<string, (m: WsMessage) => void>();
    readonly closed: Promise<void>;
    private isClosed = false;
    /** this client terminated the socket on purpose */
    hungUp = false;

    private constructor(readonly ws: WebSocket) {
        this.closed = new Promise((resolve) => ws.once("close", () => {
            this.isClosed = true;
            for (const handler of this.handlers.values())
                handler({ type: "closed" });
            this.handlers.clear();
            resolve();
        }));
        ws.on("error", () => undefined);
        ws.on("message", (data) => {
            const message = JSON.parse(data.toString()) as WsMessage;
            if (message.id != null)
                this.handlers.get(message.id)?.(message);
        });
    }

    static async open(ctx: Ctx): Promise<WsConn> {
        const ws = new WebSocket(ctx.wsUrl, { headers: ctx.headers });
        const conn = new WsConn(ws);
        await new Promise<void>((resolve, reject) => {
            ws.once("message", () => resolve()); // hello
            ws.once("error", reject);
            ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
        });
        return conn;
    }

    get open(): boolean {
        return !this.isClosed && this.ws.readyState === WebSocket.OPEN;
    }

    on(id: string, handler: (m: WsMessage) => void): void {
        this.handlers.set(id, handler);
    }

    off(id: string): void {
        this.handlers.delete(id);
    }

    send(message: object): void {
        if (this.ws.readyState === WebSocket.OPEN)
            this.ws.send(JSON.stringify(message));
    }
}

type WsPlan = {
    /** send cancel after this many deltas */
    cancelAfter?: number,
    /** terminate the socket after this many deltas */
    disconnectAfter?: number
};

let nextId = 0;

/**
 * One WebSocket chat request: resolves with how it ended, after recording it. "disconnect" means this
 * request's socket was terminated on purpose (by this request's plan or a sibling's).
 */
function wsRequest(ctx: Ctx, conn: WsConn, body: object, plan: WsPlan): Promise<{ outcome: Outcome, text: string }> {
    const id = `l${++nextId}`;
    const timing = new Timing(ctx.tally);
    ctx.tally.started++;
    let deltas = 0;
    let expectSeq = 0;
    let cancelSent = false;
    let text = "";
    return new Promise((resolve) => {
        const done = (outcome: Outcome, code?: string, detail?: string) => {
            conn.off(id);
            if (outcome === "failed")
                ctx.tally.fail("ws", code!, detail!);
            else
                ctx.tally.record("ws", outcome);
            ctx.tally.tokens += timing.tokens;
            resolve({ outcome, text });
        };
        conn.on(id, (m) => {
            switch (m.type) {
                case "start":
                    return;
                case "delta":
                    if (m.seq !== expectSeq) {
                        done("failed", "protocol", `delta seq ${m.seq}, expected ${expectSeq}`);
                        return;
                    }
                    expectSeq++;
                    deltas++;
                    text += (m as { text?: string }).text ?? "";
                    timing.arrived(m.tokens ?? 1);
                    if (plan.cancelAfter != null && deltas >= plan.cancelAfter && !cancelSent) {
                        cancelSent = true;
                        conn.send({ type: "cancel", id });
                    }
                    if (plan.disconnectAfter != null && deltas >= plan.disconnectAfter) {
                        conn.hungUp = true;
                        conn.ws.terminate();
                    }
                    return;
                case "final":
                    if (m.finish_reason === "stop" || m.finish_reason === "length") {
                        if (cancelSent)
                            ctx.tally.cancelRaces++;
                        done("completed");
                    } else if (m.finish_reason === "cancel" && cancelSent)
                        done("cancelled");
                    else
                        done("failed", m.error?.code ?? `finish_${m.finish_reason}`, m.error?.message ?? JSON.stringify(m));
                    return;
                case "error":
                    // a cancel that crossed the final on the wire: the request is gone already
                    if (m.code === "not_found" && cancelSent)
                        return;
                    done("failed", m.code ?? "error", m.message ?? "");
                    return;
                case "closed":
                    if (conn.hungUp)
                        done("disconnected");
                    else
                        done("failed", "socket_closed", "the server closed the socket while the request was in flight");
                    return;
            }
        });
        conn.send({ type: "chat", id, ...body });
    });
}

async function wsClient(ctx: Ctx, rng: () => number, prompts: ReturnType<typeof promptSource>, index: number): Promise<void> {
    let conn: WsConn | null = null;
    let turn = 0;
    while (performance.now() < ctx.deadline) {
        if (conn == null || !conn.open) {
            try {
                conn = await WsConn.open(ctx);
            } catch (err) {
                ctx.tally.fail("ws", "connect", (err as Error).message);
                await sleep(500);
                continue;
            }
        }
        const maxTokens = 8 + Math.floor(rng() * (ctx.maxTokens - 8));
        const sampling = { max_tokens: maxTokens, temperature: Math.round(rng() * 100) / 100, seed: Math.floor(rng() * 1e6) };
        const r = rng();
        const long = rng() < 0.3;
        if (r < 0.55) {
            const body = rng() < 0.5 ? { prompt: prompts.prompt(long) } : { messages: [{ role: "user", content: prompts.prompt(long) }] };
            await wsRequest(ctx, conn, { ...body, ...sampling }, {});
        } else if (r < 0.70) {
            await wsRequest(ctx, conn, { prompt: prompts.prompt(long), ...sampling, max_tokens: ctx.maxTokens }, { cancelAfter: 1 + Math.floor(rng() * 12) });
        } else if (r < 0.78) {
            await wsRequest(ctx, conn, { prompt: prompts.prompt(long), ...sampling, max_tokens: ctx.maxTokens }, { disconnectAfter: 1 + Math.floor(rng() * 12) });
            // (a request that ended before its disconnect point leaves the socket open: hang up anyway)
            conn.hungUp = true;
            conn.ws.terminate();
            conn = null;
        } else if (r < 0.90) {
            // a conversation of two or three turns: the next turn reuses the sequence's cache
            const conversation = `c${index}-${++turn}`;
            const messages: { role: string, content: string }[] = [{ role: "user", content: prompts.prompt(long) }];
            const turns = 2 + Math.floor(rng() * 2);
            for (let t = 0; t < turns && performance.now() < ctx.deadline && conn.open; t++) {
                const result = await wsRequest(ctx, conn, { messages, conversation_id: conversation, ...sampling, max_tokens: Math.min(48, maxTokens) }, {});
                if (result.outcome !== "completed")
                    break;
                messages.push({ role: "assistant", content: result.text }, { role: "user", content: prompts.prompt(false) });
            }
        } else {
            // two requests in flight on one socket
            await Promise.all([
                wsRequest(ctx, conn, { prompt: prompts.prompt(false), ...sampling }, {}),
                wsRequest(ctx, conn, { prompt: prompts.prompt(long), ...sampling, seed: sampling.seed + 1 }, {})
            ]);
        }
    }
    conn?.ws.close();
}

// ---------------------------------------------------------------- HTTP clients

type HttpPlan = { stream: boolean, completions: boolean, abortAfterChunks?: number, abortAfterMs?: number };

async function httpRequest(ctx: Ctx, rng: () => number, prompts: ReturnType<typeof promptSource>, plan: HttpPlan): Promise<void> {
    const timing = new Timing(ctx.tally);
    ctx.tally.started++;
    const maxTokens = 8 + Math.floor(rng() * (ctx.maxTokens - 8));
    const long = rng() < 0.3;
    const body = plan.completions
        ? { prompt: prompts.prompt(long), max_tokens: maxTokens, stream: plan.stream, seed: Math.floor(rng() * 1e6) }
        : { messages: [{ role: "user", content: prompts.prompt(long) }], max_tokens: maxTokens, stream: plan.stream, seed: Math.floor(rng() * 1e6) };
    const abort = new AbortController();
    let aborted = false;
    const abortTimer = plan.abortAfterMs != null ? setTimeout(() => { aborted = true; abort.abort(); }, plan.abortAfterMs) : null;
    const api = plan.stream ? "http_sse" : "http";
    try {
        const res = await fetch(`${ctx.base}/v1/${plan.completions ? "completions" : "chat/completions"}`, {
            method: "POST",
            headers: { "Content-Type": "application/json", ...ctx.headers },
            body: JSON.stringify(body),
            signal: abort.signal
        });
        if (!plan.stream) {
            const json = await res.json() as { error?: { code: string, message: string }, choices?: { finish_reason: string }[], usage?: { completion_tokens: number } };
            if (res.status !== 200 || json.error != null) {
                ctx.tally.fail(api, json.error?.code ?? `http_${res.status}`, json.error?.message ?? "");
                return;
            }
            timing.arrived(json.usage?.completion_tokens ?? 0);
            ctx.tally.tokens += timing.tokens;
            ctx.tally.record(api, "completed");
            return;
        }
        if (res.status !== 200) {
            const json = await res.json().catch(() => ({})) as { error?: { code: string, message: string } };
            ctx.tally.fail(api, json.error?.code ?? `http_${res.status}`, json.error?.message ?? "");
            return;
        }
        const reader = res.body!.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let chunks = 0;
        let finish: string | null = null;
        let sawDone = false;
        let streamError: { code: string, message: string } | null = null;
        for (;;) {
            const { value, done } = await reader.read();
            if (done)
                break;
            buffer += decoder.decode(value, { stream: true });
            let at: number;
            while ((at = buffer.indexOf("\n\n")) >= 0) {
                const event = buffer.slice(0, at);
                buffer = buffer.slice(at + 2);
                const data = event.replace(/^data: /, "");
                if (data === "[DONE]") {
                    sawDone = true;
                    continue;
                }
                const parsed = JSON.parse(data) as { error?: { code: string, message: string }, choices?: { finish_reason: string | null, delta?: { content?: string }, text?: string }[] };
                if (parsed.error != null) {
                    streamError = parsed.error;
                    continue;
                }
                const choice = parsed.choices?.[0];
                if (choice == null)
                    continue;
                if (choice.finish_reason != null)
                    finish = choice.finish_reason;
                else if ((choice.delta?.content ?? choice.text ?? "") !== "") {
                    timing.arrived(1);
                    chunks++;
                    if (plan.abortAfterChunks != null && chunks >= plan.abortAfterChunks) {
                        aborted = true;
                        abort.abort();
                    }
                }
            }
        }
        ctx.tally.tokens += timing.tokens;
        if (streamError != null)
            ctx.tally.fail(api, streamError.code, streamError.message);
        else if (!sawDone)
            ctx.tally.fail(api, "protocol", "the stream ended without data: [DONE]");
        else if (finish === "stop" || finish === "length")
            ctx.tally.record(api, "completed");
        else
            ctx.tally.fail(api, `finish_${finish}`, "unexpected finish reason");
    } catch (err) {
        ctx.tally.tokens += timing.tokens;
        if (aborted)
            ctx.tally.record(api, "disconnected");
        else
            ctx.tally.fail(api, "client_error", (err as Error).message);
    } finally {
        if (abortTimer != null)
            clearTimeout(abortTimer);
    }
}

async function httpClient(ctx: Ctx, rng: () => number, prompts: ReturnType<typeof promptSource>): Promise<void> {
    while (performance.now() < ctx.deadline) {
        const r = rng();
        if (r < 0.45)
            await httpRequest(ctx, rng, prompts, { stream: true, completions: false });
        else if (r < 0.65)
            await httpRequest(ctx, rng, prompts, { stream: false, completions: false });
        else if (r < 0.80)
            await httpRequest(ctx, rng, prompts, { stream: true, completions: true });
        else if (r < 0.92)
            await httpRequest(ctx, rng, prompts, { stream: true, completions: false, abortAfterChunks: 1 + Math.floor(rng() * 12) });
        else
            await httpRequest(ctx, rng, prompts, { stream: false, completions: false, abortAfterMs: 20 + Math.floor(rng() * 400) });
    }
}

// ---------------------------------------------------------------- the server

type ServerUnderTest = {
    base: string,
    proc: ChildProcess | null,
    output(): string,
    stop(): Promise<{ code: number | null, signal: string | null, seconds: number } | null>
};

async function startOwnServer(opts: LoadTestOptions): Promise<ServerUnderTest> {
    const args = [
        path.join(repoRoot, "dist", "server", "main.js"), "--host", "127.0.0.1", "--port", "0", "--model", opts.model,
        "--threads", String(opts.threads), "--sequences", String(opts.sequences), "--context-size", String(opts.contextSize),
        "--policy", opts.policy, "--budget", opts.budget, "--batch-size", String(opts.batchSize),
        "--max-tokens", String(opts.maxTokens), "--max-queue", String(Math.max(64, opts.clients * 4)), "--queue-timeout", "300",
        "--rate-limit", "0", "--log-level", "warn", ...opts.serverArgs
    ];
    const proc = spawn(process.execPath, args, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...(opts.apiKey != null ? { KEEPKV_API_KEY: opts.apiKey } : {}) } });
    let output = "";
    proc.stdout!.setEncoding("utf8").on("data", (d: string) => { output += d; });
    proc.stderr!.setEncoding("utf8").on("data", (d: string) => { output += d; });
    const exited = new Promise<{ code: number | null, signal: string | null }>((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
    process.on("exit", () => proc.kill("SIGKILL"));
    const deadline = Date.now() + 180_000;
    let base: string | null = null;
    while (base == null) {
        const match = /keepkv listening on (http:\/\/\S+)/.exec(output);
        if (match != null)
            base = match[1]!;
        else if (proc.exitCode != null || Date.now() > deadline)
            throw new Error(`the server did not start:\n${output}`);
        else
            await sleep(100);
    }
    return {
        base,
        proc,
        output: () => output,
        async stop() {
            const t0 = performance.now();
            if (proc.exitCode == null && proc.signalCode == null)
                proc.kill("SIGTERM");
            const exit = await exited;
            return { ...exit, seconds: (performance.now() - t0) / 1000 };
        }
    };
}

async function waitReady(base: string, headers: Record<string, string>, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        try {
            if ((await fetch(`${base}/health`, { headers })).status === 200)
                return;
        } catch {
            // not yet
        }
        if (Date.now() > deadline)
            throw new Error(`the server was not ready within ${timeoutMs} ms`);
        await sleep(200);
    }
}

/** The value of a sample line of a Prometheus exposition (the sum over label sets matching `labels`). */
export function metric(text: string, name: string, labels = ""): number {
    let total = 0;
    for (const line of text.split("\n")) {
        if (!line.startsWith(name + " ") && !line.startsWith(name + "{"))
            continue;
        if (labels !== "" && !line.includes(labels))
            continue;
        total += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
    return total;
}

async function scrape(base: string, headers: Record<string, string>): Promise<string> {
    return await (await fetch(`${base}/metrics`, { headers })).text();
}

// ---------------------------------------------------------------- the run

export type LoadTestReport = {
    clients: number,
    durationS: number,
    seed: number,
    server: { url: string, started: boolean, args: string[] | null },
    elapsedS: number,
    requests: number,
    completed: number,
    cancelled: number,
    disconnected: number,
    /** unprovoked failures: every error, refusal or unexpected end the load test did not cause itself */
    failed: number,
    failedByCode: Record<string, number>,
    failureSamples: string[],
    cancelRaces: number,
    byApi: Tally["byApi"],
    ttftMs: { p50: number | null, p95: number | null, p99: number | null, samples: number },
    itlMs: { p50: number | null, p95: number | null, p99: number | null, samples: number },
    tokensPerSecond: number,
    serverSide: {
        finished: Record<string, number>,
        errors: Record<string, number>,
        generationTokens: number,
        generationTokensPerSecond: number,
        compressions: number,
        merges: number,
        evictions: number,
        engineRestarts: number,
        clientsDropped: number
    },
    memory: {
        warmupS: number,
        serverPeakRssBytes: number | null,
        enginePeakRssBytes: number | null,
        peakRssBytes: number | null,
        /** RSS slope after warm-up, MB per minute (least squares over one sample a second) */
        serverSlopeMBPerMin: number | null,
        engineSlopeMBPerMin: number | null,
        totalSlopeMBPerMin: number | null,
        /** RSS at the end of warm-up and at the end of the load, MB */
        totalAfterWarmupMB: number | null,
        totalAtEndMB: number | null,
        samples: number,
        /** one sample every 10 s: seconds, server and engine RSS in MB */
        series: [number, number | null, number | null][]
    },
    /** sequences not back in the pool after the load: busy ones, and ones a fresh request could not get */
    leakedSequences: number,
    sequences: number,
    serverExit: { code: number | null, signal: string | null, seconds: number } | null,
    serverCrashed: boolean,
    ok: boolean
};

export async function runLoadTest(opts: LoadTestOptions, progress: (line: string) => void = () => undefined): Promise<LoadTestReport> {
    const headers: Record<string, string> = opts.apiKey != null ? { Authorization: `Bearer ${opts.apiKey}` } : {};
    const server = opts.url != null
        ? { base: opts.url.replace(/\/+$/, ""), proc: null, output: () => "", stop: async () => null } satisfies ServerUnderTest
        : await startOwnServer(opts);
    // an exit before the load test stops the server is a crash
    let exitedEarly = false;
    let stopping = false;
    server.proc?.once("exit", () => { if (!stopping) exitedEarly = true; });
    try {
        await waitReady(server.base, headers, 180_000);
        const health = await (await fetch(`${server.base}/health`, { headers })).json() as { engine: { pid: number } };
        const kv = await (await fetch(`${server.base}/v1/kv`, { headers })).json() as { sequences: unknown[] };
        const sequences = kv.sequences.length;
        progress(`server ${server.base} ready (${sequences} sequences, engine pid ${health.engine.pid}); ${opts.clients} clients for ${opts.durationS} s`);
        const before = await scrape(server.base, headers);

        const tally = new Tally();
        const t0 = performance.now();
        const ctx: Ctx = {
            base: server.base,
            wsUrl: server.base.replace(/^http/, "ws") + "/v1/ws",
            headers,
            deadline: t0 + opts.durationS * 1000,
            tally,
            maxTokens: opts.maxTokens
        };
        const rng = seededRandom(opts.seed);
        const prompts = promptSource(seededRandom(opts.seed + 7));

        // memory: one sample a second, from /proc for the server this run started, else from the API
        const warmupS = opts.warmupS > 0 ? opts.warmupS : Math.max(10, opts.durationS / 5);
        const samples: { t: number, server: number | null, engine: number | null }[] = [];
        let peakServer = 0;
        let peakEngine = 0;
        let enginePid = health.engine.pid;
        let sampling = true;
        const sampler = (async () => {
            let lastScrape = 0;
            while (sampling) {
                const t = (performance.now() - t0) / 1000;
                let serverRss: number | null = null;
                let engineRss: number | null = null;
                try {
                    const h = await (await fetch(`${server.base}/health`, { headers })).json() as { engine: { pid: number, rss_bytes: number } };
                    enginePid = h.engine.pid ?? enginePid;
                    engineRss = rssOfPid(enginePid)?.rss ?? h.engine.rss_bytes;
                    if (server.proc != null)
                        serverRss = rssOfPid(server.proc.pid)?.rss ?? null;
                    // like Prometheus would: scrape the metrics under load
                    if (serverRss == null || t - lastScrape >= 5) {
                        const text = await scrape(server.base, headers);
                        lastScrape = t;
                        serverRss ??= metric(text, "process_resident_memory_bytes");
                    }
                } catch {
                    // a sample lost; the next one counts
                }
                if (serverRss != null)
                    peakServer = Math.max(peakServer, serverRss);
                if (engineRss != null)
                    peakEngine = Math.max(peakEngine, engineRss);
                samples.push({ t, server: serverRss, engine: engineRss });
                await sleep(1000);
            }
        })();

        const ticker = setInterval(() => progress(`  ${Math.round((performance.now() - t0) / 1000)} s: ${tally.started} started, ${tally.completed} completed, ${tally.cancelled} cancelled, ${tally.disconnected} disconnected, ${tally.failed} failed`), 10_000);
        const clientRuns = Array.from({ length: opts.clients }, (_, i) => {
            const clientRng = seededRandom(Math.floor(rng() * 2 ** 31));
            const isHttp = opts.httpShare > 0 && (i + 1) % Math.max(1, Math.round(1 / opts.httpShare)) === 0;
            return isHttp ? httpClient(ctx, clientRng, prompts) : wsClient(ctx, clientRng, prompts, i);
        });
        // the duration, then at most --drain seconds for what is still in flight
        const drained = await Promise.race([
            Promise.all(clientRuns).then(() => true),
            sleep((opts.durationS + opts.drainS) * 1000).then(() => false)
        ]);
        clearInterval(ticker);
        const elapsedS = (performance.now() - t0) / 1000;
        if (!drained)
            tally.fail("all", "drain_timeout", `requests still in flight ${opts.drainS} s after the end`);
        sampling = false;
        await sampler;

        // every sequence back: nothing running or waiting, no slot busy, and a fresh request per sequence
        // starts at once
        let leaked = 0;
        let after = "";
        const settleDeadline = Date.now() + 30_000;
        for (;;) {
            const text = await scrape(server.base, headers);
            const slots = await (await fetch(`${server.base}/slots`, { headers })).json() as { is_processing: boolean }[];
            leaked = slots.filter((s) => s.is_processing).length;
            const running = metric(text, "keepkv_num_requests_running") + metric(text, "keepkv_num_requests_waiting");
            if ((leaked === 0 && running === 0) || Date.now() > settleDeadline) {
                leaked = Math.max(leaked, running);
                after = text;
                break;
            }
            await sleep(200);
        }
        // one request per sequence, a moment apart (each is placed before the next arrives), long enough
        // to overlap: each must start at once, on a sequence of its own
        const probe = await WsConn.open({ ...ctx });
        const probes: Promise<{ immediate: boolean, sequence: number | null }>[] = [];
        for (let i = 0; i < sequences; i++) {
            probes.push(new Promise((resolve) => {
                const id = `probe${++nextId}`;
                let immediate = false;
                probe.on(id, (m) => {
                    if (m.type === "start")
                        immediate = (m as { queue_position?: number }).queue_position === 0;
                    else if (m.type === "final")
                        resolve({ immediate, sequence: (m as { kv?: { sequence: number } | null }).kv?.sequence ?? null });
                    else if (m.type === "error" || m.type === "closed")
                        resolve({ immediate: false, sequence: null });
                });
                probe.send({ type: "chat", id, prompt: "Once upon a time", max_tokens: Math.max(64, opts.maxTokens), temperature: 1 });
            }));
            await sleep(25);
        }
        const probed = await Promise.all(probes);
        probe.ws.close();
        const distinct = new Set(probed.filter((p) => p.immediate).map((p) => p.sequence)).size;
        leaked = Math.max(leaked, sequences - distinct);

        const diff = (name: string, labels = "") => metric(after, name, labels) - metric(before, name, labels);
        const finished: Record<string, number> = {};
        for (const reason of ["stop", "length", "cancel", "error", "shutdown"])
            finished[reason] = diff("keepkv_request_success_total", `finished_reason="${reason}"`);
        const errors: Record<string, number> = {};
        for (const line of after.split("\n")) {
            const match = /^keepkv_request_errors_total\{code="([^"]+)"\}/.exec(line);
            if (match != null) {
                const value = diff("keepkv_request_errors_total", `code="${match[1]}"`);
                if (value > 0)
                    errors[match[1]!] = value;
            }
        }
        const generationTokens = diff("keepkv_generation_tokens_total");

        // memory after warm-up
        const warm = samples.filter((s) => s.t >= warmupS && s.t <= opts.durationS);
        const mbPerMin = (key: "server" | "engine" | "total") => {
            const points = warm
                .map((s) => ({ x: s.t, y: key === "total" ? (s.server != null && s.engine != null ? s.server + s.engine : NaN) : s[key] ?? NaN }))
                .filter((p) => Number.isFinite(p.y));
            const perS = slope(points);
            return perS == null ? null : round(perS * 60 / 2 ** 20, 2);
        };
        const totalOf = (s: { server: number | null, engine: number | null } | undefined) =>
            s?.server != null && s.engine != null ? round((s.server + s.engine) / 2 ** 20) : null;
        const serverHwm = server.proc != null ? rssOfPid(server.proc.pid)?.hwm ?? null : null;
        const engineHwm = rssOfPid(enginePid)?.hwm ?? null;
        const serverPeak = Math.max(peakServer, serverHwm ?? 0) || null;
        const enginePeak = Math.max(peakEngine, engineHwm ?? 0) || null;

        stopping = true;
        const stopped = await server.stop();
        const serverCrashed = exitedEarly || (opts.url == null && (stopped == null || stopped.code !== 0));
        const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
        const ttft = sorted(tally.ttftMs);
        const itl = sorted(tally.itlMs);
        const report: LoadTestReport = {
            clients: opts.clients,
            durationS: opts.durationS,
            seed: opts.seed,
            server: { url: server.base, started: opts.url == null, args: server.proc?.spawnargs.slice(2) ?? null },
            elapsedS: round(elapsedS)!,
            requests: tally.started,
            completed: tally.completed,
            cancelled: tally.cancelled,
            disconnected: tally.disconnected,
            failed: tally.failed,
            failedByCode: tally.failedByCode,
            failureSamples: tally.failureSamples,
            cancelRaces: tally.cancelRaces,
            byApi: tally.byApi,
            ttftMs: { p50: round(percentile(ttft, 50)), p95: round(percentile(ttft, 95)), p99: round(percentile(ttft, 99)), samples: ttft.length },
            itlMs: { p50: round(percentile(itl, 50), 2), p95: round(percentile(itl, 95), 2), p99: round(percentile(itl, 99), 2), samples: itl.length },
            tokensPerSecond: round(tally.tokens / elapsedS)!,
            serverSide: {
                finished,
                errors,
                generationTokens,
                generationTokensPerSecond: round(generationTokens / elapsedS)!,
                compressions: diff("keepkv_kv_compressions_total"),
                merges: round(diff("keepkv_kv_merges_total"), 0)!,
                evictions: round(diff("keepkv_kv_evictions_total"), 0)!,
                engineRestarts: diff("keepkv_engine_restarts_total"),
                clientsDropped: diff("keepkv_clients_dropped_total")
            },
            memory: {
                warmupS,
                serverPeakRssBytes: serverPeak,
                enginePeakRssBytes: enginePeak,
                peakRssBytes: serverPeak != null && enginePeak != null ? serverPeak + enginePeak : null,
                serverSlopeMBPerMin: mbPerMin("server"),
                engineSlopeMBPerMin: mbPerMin("engine"),
                totalSlopeMBPerMin: mbPerMin("total"),
                totalAfterWarmupMB: totalOf(warm[0]),
                totalAtEndMB: totalOf(warm[warm.length - 1]),
                samples: samples.length,
                series: samples.filter((_, i) => i % 10 === 0).map((s) => [Math.round(s.t),
                    s.server == null ? null : round(s.server / 2 ** 20), s.engine == null ? null : round(s.engine / 2 ** 20)])
            },
            leakedSequences: leaked,
            sequences,
            serverExit: stopped,
            serverCrashed,
            ok: false
        };
        report.ok = report.failed === 0 && report.leakedSequences === 0 && !report.serverCrashed && report.serverSide.engineRestarts === 0;
        return report;
    } catch (err) {
        const stopped = await server.stop().catch(() => null);
        throw new Error(`${(err as Error).message}${stopped != null ? ` (server exit ${JSON.stringify(stopped)})` : ""}\n${server.output().slice(-4000)}`);
    }
}

function mb(bytes: number | null): string {
    return bytes == null ? "?" : `${(bytes / 2 ** 20).toFixed(1)} MB`;
}

export function formatReport(r: LoadTestReport): string {
    const lines = [
        `keepkv load test: ${r.clients} clients, ${r.durationS} s (ran ${r.elapsedS} s), seed ${r.seed}`,
        `server: ${r.server.started ? `started with ${r.server.args!.join(" ")}` : r.server.url}`,
        "",
        `requests            ${r.requests}`,
        `  completed         ${r.completed}`,
        `  cancelled         ${r.cancelled}   (by a cancel message; ${r.cancelRaces} more finished before their cancel arrived)`,
        `  disconnected      ${r.disconnected}   (the client hung up mid-request on purpose)`,
        `  failed            ${r.failed}   ${Object.entries(r.failedByCode).map(([c, n]) => `${c}: ${n}`).join(", ")}`,
        ...r.failureSamples.map((s) => `      ${s}`),
        `time to first token p50 ${r.ttftMs.p50} ms, p95 ${r.ttftMs.p95} ms, p99 ${r.ttftMs.p99} ms (${r.ttftMs.samples} requests)`,
        `inter-token latency p50 ${r.itlMs.p50} ms, p95 ${r.itlMs.p95} ms, p99 ${r.itlMs.p99} ms (${r.itlMs.samples} gaps)`,
        `throughput          ${r.tokensPerSecond} tokens/s received (server: ${r.serverSide.generationTokensPerSecond} tokens/s generated)`,
        `server finished     ${Object.entries(r.serverSide.finished).map(([k, v]) => `${k} ${v}`).join(", ")}`,
        `server errors       ${Object.entries(r.serverSide.errors).map(([k, v]) => `${k} ${v}`).join(", ") || "none"}`,
        `KV compression      ${r.serverSide.compressions} compressions, ${r.serverSide.merges} cells merged, ${r.serverSide.evictions} evicted`,
        `peak RSS            server ${mb(r.memory.serverPeakRssBytes)}, engine ${mb(r.memory.enginePeakRssBytes)}, together ${mb(r.memory.peakRssBytes)}`,
        `RSS after warm-up   ${r.memory.totalAfterWarmupMB} MB -> ${r.memory.totalAtEndMB} MB; slope server ${r.memory.serverSlopeMBPerMin}, engine ${r.memory.engineSlopeMBPerMin}, together ${r.memory.totalSlopeMBPerMin} MB/min (after ${r.memory.warmupS} s)`,
        `sequences           ${r.sequences - r.leakedSequences} of ${r.sequences} back in the pool${r.leakedSequences > 0 ? ` (${r.leakedSequences} LEAKED)` : ""}`,
        `engine restarts     ${r.serverSide.engineRestarts}`,
        `server exit         ${r.serverExit == null ? "not started here" : `code ${r.serverExit.code} after SIGTERM in ${r.serverExit.seconds.toFixed(1)} s`}`,
        "",
        r.ok ? "OK: no unprovoked failures, every sequence returned" : "NOT OK"
    ];
    return lines.join("\n") + "\n";
}

async function main(): Promise<void> {
    let opts: LoadTestOptions;
    try {
        opts = parseLoadTestArgs(process.argv.slice(2));
    } catch (err) {
        process.stderr.write(`loadtest: ${(err as Error).message}\n`);
        process.exit(2);
    }
    const report = await runLoadTest(opts, (line) => { if (!opts.json) process.stderr.write(line + "\n"); });
    process.stdout.write(opts.json ? JSON.stringify(report) + "\n" : formatReport(report));
    process.exit(report.ok ? 0 : 1);
}

if (process.argv[1] != null && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
    main().catch((err: unknown) => {
        process.stderr.write(`loadtest: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
    });
}

export const loadTestEntry = fileURLToPath(import.meta.url);
