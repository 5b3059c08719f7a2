// The load test's clients (bench/loadtest.ts): WebSocket and OpenAI-style HTTP clients that send seeded
// random requests until the deadline, cancel some and hang up on others on purpose, and record in a Tally
// how each request ended and when its tokens arrived.
import * as fs from "node:fs";
import { corpusPath } from "../../lib/model-paths.js";
import { WsClient, type RoutedMessage } from "./ws-client.js";
import { sseData } from "./sse.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Prompts: passages of the TinyStories corpus, short ones and ones longer than the budget. */
export type PromptSource = { prompt(long: boolean): string };

export function promptSource(rng: () => number): PromptSource {
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

export type Outcome = "completed" | "cancelled" | "disconnected" | "failed";

export class Tally {
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

export type LoadCtx = {
    base: string,
    wsUrl: string,
    headers: Record<string, string>,
    deadline: number,
    tally: Tally,
    maxTokens: number
};

// ---------------------------------------------------------------- WebSocket clients

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
function wsRequest(ctx: LoadCtx, conn: WsClient, body: object, plan: WsPlan): Promise<{ outcome: Outcome, text: string }> {
    const id = `l${++nextId}`;
    const timing = new Timing(ctx.tally);
    ctx.tally.started++;
    let deltas = 0;
    let expectSeq = 0;
    let cancelSent = false;
    let text = "";
    return new Promise((resolve) => {
        const done = (outcome: Outcome, code?: string, detail?: string) => {
            conn.unroute(id);
            if (outcome === "failed")
                ctx.tally.fail("ws", code!, detail!);
            else
                ctx.tally.record("ws", outcome);
            ctx.tally.tokens += timing.tokens;
            resolve({ outcome, text });
        };
        conn.route(id, (m: RoutedMessage) => {
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
                    text += m.text;
                    timing.arrived(m.tokens);
                    if (plan.cancelAfter != null && deltas >= plan.cancelAfter && !cancelSent) {
                        cancelSent = true;
                        conn.send({ type: "cancel", id });
                    }
                    if (plan.disconnectAfter != null && deltas >= plan.disconnectAfter)
                        conn.hangUp();
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
        if (conn.open)
            conn.send({ type: "chat", id, ...body });
    });
}

export async function wsClient(ctx: LoadCtx, rng: () => number, prompts: PromptSource, index: number): Promise<void> {
    let conn: WsClient | null = null;
    let turn = 0;
    while (performance.now() < ctx.deadline) {
        if (conn == null || !conn.open) {
            try {
                conn = await WsClient.connect(ctx.wsUrl, { headers: ctx.headers, record: false });
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
            conn.hangUp();
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

async function httpRequest(ctx: LoadCtx, rng: () => number, prompts: PromptSource, plan: HttpPlan): Promise<void> {
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
                const data = sseData(event);
                if (data == null)
                    continue;
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

export async function httpClient(ctx: LoadCtx, rng: () => number, prompts: PromptSource): Promise<void> {
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
