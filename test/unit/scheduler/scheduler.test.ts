// The scheduler driven by a fake engine: the real queue, slot pool, cancellation and engine-loss logic,
// with the engine's side of the IPC played by the test (the end-to-end tests run the real engine).
import assert from "node:assert/strict";
import type { EngineModelInfo, EngineStatsSnapshot, GenerateJob } from "../../../server/protocol/engine-ipc.js";
import type { KeepKvSequenceStats } from "../../../server/protocol/engine-ipc.js";
import { Logger } from "../../../server/logger.js";
import { ServerMetrics } from "../../../server/metrics/metrics.js";
import { ApiError } from "../../../server/protocol/errors.js";
import type { EnginePort, EngineState, JobCommand } from "../../../server/scheduler/engine-port.js";
import {
    Scheduler, type FinalResult, type RequestSpec, type ScheduledRequest, type SchedulerLimits
} from "../../../server/scheduler/scheduler.js";

/** The engine's side: records what the scheduler sends; `accepting: false` is an engine whose IPC write fails. */
class FakeEngine implements EnginePort {
    state: EngineState = "ready";
    accepting = true;
    readonly sent: JobCommand[] = [];

    send(message: JobCommand): boolean {
        if (this.state !== "ready" || !this.accepting)
            return false;
        this.sent.push(message);
        return true;
    }

    get jobs(): GenerateJob[] {
        return this.sent.flatMap((m) => m.t === "generate" ? [m.job] : []);
    }

    job(id: number): GenerateJob {
        const job = this.jobs.find((j) => j.job === id);
        assert.ok(job != null, `no generate job ${id} was sent (sent: ${JSON.stringify(this.sent)})`);
        return job;
    }
}

function modelInfo(sequences: number, policy = "keepkv"): EngineModelInfo {
    return {
        modelPath: "/models/test.gguf", name: "test.gguf", architecture: "llama", trainContextSize: 2048,
        contextSize: 1024, sequences, chatFormat: "plain", keepKvVersion: "1", policy
    };
}

function statsSnapshot(): EngineStatsSnapshot {
    return {
        context: {
            policy: "keepkv", capacityCells: 1024, kvBytesAllocated: 0, kvBytesUsed: 0, kvBytesFull: 0, keepKvBytes: 0,
            cellsRemoved: 0, merges: 0, evictions: 0, compressions: 0, compressionSeconds: 0, sequences: []
        },
        rssBytes: 0
    };
}

function sequenceStats(sequenceId: number): KeepKvSequenceStats {
    return {
        sequenceId, logicalTokens: 40, cellsUsed: 30, budget: 32, capacity: 1024, kvBytesUsed: 3000, cellsRemoved: 10,
        merges: 7, evictions: 3, compressions: 2, compressionSeconds: 0.25, voteMax: 4, voteMean: 1.5
    };
}

/** What a request's sink heard. */
class Recorder {
    running: [number, number] | null = null;
    readonly deltas: [string, number][] = [];
    finals: FinalResult[] = [];
    readonly sink = {
        onRunning: (prompt: number, cached: number) => { this.running = [prompt, cached]; },
        onDelta: (text: string, tokens: number) => { this.deltas.push([text, tokens]); },
        onFinal: (result: FinalResult) => { this.finals.push(result); }
    };

    get final(): FinalResult {
        assert.equal(this.finals.length, 1, `expected exactly one final, got ${JSON.stringify(this.finals)}`);
        return this.finals[0]!;
    }
}

const defaultLimits: SchedulerLimits = { maxQueue: 8, queueTimeoutMs: 60_000, maxTokens: 0, maxPromptTokens: 900, conversationIdleMs: 60_000 };

function spec(over: Partial<RequestSpec> = {}): RequestSpec {
    return {
        input: { prompt: "Once upon a time" }, maxTokens: null,
        sampling: { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1, seed: 1 },
        stop: [], conversationId: null, principal: "anonymous", ...over
    };
}

/** Lets the scheduler's queued microtasks (dispatch after submit and after a finish) run. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

async function eventually(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
        if (Date.now() > deadline)
            assert.fail(`timed out waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 10));
    }
}

describe("Scheduler (fake engine)", function () {
    let scheduler: Scheduler;
    let engine: FakeEngine;
    let metrics: ServerMetrics;
    let logLines: string[];

    function setup(sequences: number, limits: Partial<SchedulerLimits> = {}, ready = true): void {
        metrics = new ServerMetrics({ processMetrics: false });
        logLines = [];
        scheduler = new Scheduler({ ...defaultLimits, ...limits }, metrics, new Logger("debug", (l) => logLines.push(l)), sequences);
        engine = new FakeEngine();
        scheduler.attach(engine);
        if (ready)
            scheduler.onReady(modelInfo(sequences), statsSnapshot());
        else
            engine.state = "starting";
    }

    function submit(over: Partial<RequestSpec> = {}): { request: ScheduledRequest, rec: Recorder } {
        const rec = new Recorder();
        return { request: scheduler.submit(spec(over), rec.sink), rec };
    }

    function submitRefused(over: Partial<RequestSpec> = {}): ApiError {
        try {
            scheduler.submit(spec(over), new Recorder().sink);
        } catch (err) {
            assert.ok(err instanceof ApiError, `expected an ApiError, got ${String(err)}`);
            return err;
        }
        assert.fail("the request was accepted");
    }

    // the engine's messages, as the supervisor passes them on
    function started(request: ScheduledRequest, promptTokens = 5, cachedTokens = 0): void {
        scheduler.onJobMessage({ t: "started", job: request.id, promptTokens, cachedTokens, sentAt: 0 }, 0);
    }
    function tokens(request: ScheduledRequest, text: string, n: number): void {
        scheduler.onJobMessage({ t: "tokens", job: request.id, text, n, sentAt: 1 }, 2);
    }
    function done(request: ScheduledRequest, finishReason: "stop" | "length" | "cancel" | "error", over: { completionTokens?: number, kv?: KeepKvSequenceStats | null } = {}): void {
        scheduler.onJobMessage({
            t: "done", job: request.id, finishReason, promptTokens: 5, completionTokens: over.completionTokens ?? 0, cachedTokens: 0,
            promptEvaluated: 5, promptMs: 3, kv: over.kv ?? null, sentAt: 3,
            ...(finishReason === "error" ? { error: { code: "internal_error" as const, message: "boom" } } : {})
        }, 4);
    }

    afterEach(async function () {
        // what still runs ends as if the engine died: shutdown() would wait for its grace otherwise
        scheduler.onLost({ code: 0, signal: null, reason: "crashed", at: "", stderrTail: [] });
        await scheduler.shutdown(0);
    });

    describe("admission and queueing", function () {
        it("runs a request at once on a free sequence, with its limits and no conversation", async function () {
            setup(2, { maxTokens: 64 });
            const { request } = submit({ maxTokens: 100 });
            assert.equal(request.queuePosition, 0);
            assert.equal(engine.jobs.length, 0, "dispatch waits for the caller's start message (a microtask)");
            await settle();
            assert.equal(request.state, "running");
            const job = engine.job(request.id);
            assert.equal(job.slot, 0);
            assert.equal(job.maxTokens, 64, "the configured max-tokens caps the request's");
            assert.equal(job.maxPromptTokens, 900);
            assert.equal(job.clearCache, false);
            assert.equal(job.conversationKey, null);
            assert.deepEqual(scheduler.status(), { running: 1, waiting: 0, sequences: 2, available: 1 });
        });

        it("resolves max_tokens: the request's below the cap, the cap when the request sets none", async function () {
            setup(3, { maxTokens: 50 });
            const low = submit({ maxTokens: 10 }).request;
            const absent = submit({ maxTokens: null }).request;
            await settle();
            assert.equal(engine.job(low.id).maxTokens, 10);
            assert.equal(engine.job(absent.id).maxTokens, 50);
        });

        it("sends no max_tokens when neither the request nor the configuration sets one", async function () {
            setup(1, { maxTokens: 0 });
            const uncapped = submit({ maxTokens: null }).request;
            await settle();
            assert.equal(engine.job(uncapped.id).maxTokens, null);
        });

        it("queues requests beyond the sequences in FIFO order, each taking the sequence the one before freed", async function () {
            setup(1);
            const a = submit();
            const b = submit();
            const c = submit();
            await settle();
            assert.deepEqual([a.request.queuePosition, b.request.queuePosition, c.request.queuePosition], [0, 1, 2]);
            assert.deepEqual(engine.jobs.map((j) => j.job), [a.request.id]);
            assert.deepEqual(scheduler.status(), { running: 1, waiting: 2, sequences: 1, available: 0 });
            done(a.request, "stop");
            await settle();
            assert.deepEqual(engine.jobs.map((j) => j.job), [a.request.id, b.request.id], "the oldest waiting request runs next");
            done(b.request, "stop");
            await settle();
            assert.deepEqual(engine.jobs.map((j) => j.job), [a.request.id, b.request.id, c.request.id]);
            assert.ok(c.rec.finals.length === 0 && c.request.state === "running");
        });

        it("refuses with queue_full when every sequence is busy and max-queue requests wait", async function () {
            setup(1, { maxQueue: 1 });
            submit();
            submit();
            await settle();
            assert.equal(submitRefused().code, "queue_full");
        });

        it("counts requests submitted in the same tick against the free sequences, not against max-queue", async function () {
            // a WebSocket client's pipelined messages arrive in one chunk and are handled in one tick
            // (ws emits them synchronously): the earlier ones are still in the queue, about to run
            setup(2, { maxQueue: 1 });
            const a = submit();
            const b = submit();
            const c = submit();
            assert.deepEqual([a.request.queuePosition, b.request.queuePosition, c.request.queuePosition], [0, 0, 1]);
            assert.equal(submitRefused().code, "queue_full");
            await settle();
            assert.deepEqual(engine.jobs.map((j) => j.job), [a.request.id, b.request.id]);
            assert.equal(c.request.state, "queued");
        });

        it("ends a request that waits longer than queue-timeout with queue_timeout", async function () {
            setup(1, { queueTimeoutMs: 30 });
            const a = submit();
            const b = submit();
            await eventually("the queue timeout", () => b.rec.finals.length > 0);
            assert.equal(b.rec.final.finishReason, "error");
            assert.equal(b.rec.final.error?.code, "queue_timeout");
            assert.equal(a.request.state, "running", "a running request has no queue timeout");
            assert.deepEqual(engine.jobs.map((j) => j.job), [a.request.id]);
        });

        it("holds requests while the engine is not ready and runs them when it is", async function () {
            setup(1, {}, false);
            const a = submit();
            assert.equal(a.request.queuePosition, 1);
            await settle();
            assert.equal(engine.jobs.length, 0);
            engine.state = "ready";
            scheduler.onReady(modelInfo(1), statsSnapshot());
            assert.deepEqual(engine.jobs.map((j) => j.job), [a.request.id]);
        });

        it("fails a request the engine cannot be sent with engine_unavailable and frees its sequence", async function () {
            setup(1);
            engine.accepting = false;
            const a = submit();
            await settle();
            assert.equal(a.rec.final.error?.code, "engine_unavailable");
            assert.equal(scheduler.status().available, 1);
        });
    });

    describe("streaming and the final", function () {
        it("passes started and tokens to the sink, skips empty text, and counts the tokens the engine reports", async function () {
            setup(1);
            const { request, rec } = submit();
            await settle();
            started(request, 12, 4);
            assert.deepEqual(rec.running, [12, 4]);
            tokens(request, "Once", 1);
            tokens(request, "", 1);
            tokens(request, " upon", 2);
            assert.deepEqual(rec.deltas, [["Once", 1], [" upon", 2]]);
            done(request, "length", { completionTokens: 6, kv: sequenceStats(0) });
            const final = rec.final;
            assert.equal(final.finishReason, "length");
            assert.deepEqual(final.usage, { prompt_tokens: 5, completion_tokens: 6, total_tokens: 11, cached_tokens: 0 });
            assert.equal(final.timings.prompt_ms, 3);
            assert.deepEqual(final.kv, {
                sequence: 0, policy: "keepkv", logical_tokens: 40, cells_used: 30, budget: 32, capacity: 1024, kv_bytes_used: 3000,
                merges: 7, evictions: 3, compressions: 2, compression_seconds: 0.25, vote_max: 4, vote_mean: 1.5
            });
            assert.equal(final.error, undefined);
            assert.equal(request.state, "done");
            assert.equal(scheduler.finishedRequests, 1);
        });

        it("ignores messages about jobs it does not run", async function () {
            setup(1);
            const { request, rec } = submit();
            await settle();
            done(request, "stop");
            done(request, "stop");
            tokens(request, "late", 1);
            assert.equal(rec.finals.length, 1);
            assert.equal(rec.deltas.length, 0);
        });

        it("survives a sink that throws: the sequence is freed and the next request runs", async function () {
            setup(1);
            const request = scheduler.submit(spec(), { onDelta: () => undefined, onFinal: () => { throw new Error("client gone"); } });
            const next = submit();
            await settle();
            done(request, "stop");
            await settle();
            assert.equal(next.request.state, "running");
            assert.ok(logLines.some((l) => l.includes("a request sink threw")));
        });
    });

    describe("cancellation", function () {
        it("ends a queued request at once with cancel, without telling the engine", async function () {
            setup(1);
            submit();
            const b = submit();
            await settle();
            scheduler.cancel(b.request);
            assert.equal(b.rec.final.finishReason, "cancel");
            assert.equal(engine.sent.filter((m) => m.t === "cancel").length, 0);
            assert.equal(scheduler.status().waiting, 0);
            scheduler.cancel(b.request);
            assert.equal(b.rec.finals.length, 1, "a second cancel does nothing");
        });

        it("asks the engine to stop a running request, and ends it when the engine says it stopped", async function () {
            setup(1);
            const a = submit({ conversationId: "c1" });
            await settle();
            scheduler.cancel(a.request);
            assert.deepEqual(engine.sent.at(-1), { t: "cancel", job: a.request.id });
            assert.equal(a.rec.finals.length, 0, "the final waits for the engine");
            done(a.request, "cancel");
            assert.equal(a.rec.final.finishReason, "cancel");
            assert.equal(scheduler.slotSnapshot()[0]!.conversation, "c1", "a cancelled turn keeps its conversation's sequence");
        });
    });

    describe("sequences and conversations", function () {
        it("gives a conversation's next turn the sequence that holds its cache", async function () {
            setup(2);
            const first = submit({ conversationId: "c1" });
            await settle();
            assert.equal(engine.job(first.request.id).conversationKey, JSON.stringify(["anonymous", "c1"]));
            done(first.request, "stop");
            const other = submit();
            await settle();
            assert.equal(engine.job(other.request.id).slot, 1, "a request without a conversation leaves the held sequence alone");
            const second = submit({ conversationId: "c1" });
            await settle();
            assert.equal(engine.job(second.request.id).slot, 0);
            assert.equal(engine.job(second.request.id).clearCache, false);
        });

        it("refuses a second turn of a conversation while one is running or queued", async function () {
            setup(1);
            submit({ conversationId: "busy" });
            assert.equal(submitRefused({ conversationId: "busy" }).code, "conversation_busy", "queued");
            await settle();
            assert.equal(submitRefused({ conversationId: "busy" }).code, "conversation_busy", "running");
            assert.doesNotThrow(() => submit({ conversationId: "busy", principal: "someone-else" }), "another principal's id is another conversation");
        });

        it("empties a sequence whose cache holds another principal's tokens", async function () {
            setup(1);
            const alice = submit({ principal: "alice", conversationId: "c" });
            await settle();
            done(alice.request, "stop");
            const bob = submit({ principal: "bob", conversationId: "c" });
            await settle();
            const job = engine.job(bob.request.id);
            assert.equal(job.slot, 0, "alice's idle conversation is evicted for bob");
            assert.equal(job.clearCache, true);
            assert.equal(job.conversationKey, JSON.stringify(["bob", "c"]));
        });

        it("lets a failed turn lose its conversation's sequence", async function () {
            setup(2);
            const failed = submit({ conversationId: "c1" });
            await settle();
            done(failed.request, "error");
            assert.equal(failed.rec.final.error?.code, "internal_error");
            assert.equal(scheduler.slotSnapshot()[0]!.conversation, null);
        });

        it("frees the sequences of conversations idle for conversation-idle and tells the engine to release them", async function () {
            setup(2, { conversationIdleMs: 100 });
            const a = submit({ conversationId: "c1" });
            await settle();
            done(a.request, "stop");
            assert.equal(scheduler.slotSnapshot()[0]!.conversation, "c1");
            await eventually("the idle conversation to expire", () => engine.sent.some((m) => m.t === "release"));
            assert.deepEqual(engine.sent.filter((m) => m.t === "release"), [{ t: "release", slot: 0 }]);
            assert.equal(scheduler.slotSnapshot()[0]!.conversation, null);
        });

        it("keeps no conversation when conversation-idle is 0", async function () {
            setup(1, { conversationIdleMs: 0 });
            const a = submit({ conversationId: "c1" });
            await settle();
            done(a.request, "stop");
            assert.equal(scheduler.slotSnapshot()[0]!.conversation, null);
        });
    });

    describe("engine failures", function () {
        it("ends running requests with engine_restarted when the engine dies, a cancelled one with cancel; queued ones wait for the restart", async function () {
            setup(2);
            const a = submit({ conversationId: "c1" });
            const b = submit();
            const c = submit();
            const queued = submit();
            await settle();
            scheduler.cancel(b.request);
            engine.state = "restarting";
            scheduler.onLost({ code: null, signal: "SIGKILL", reason: "crashed", at: "", stderrTail: [] });
            assert.equal(a.rec.final.finishReason, "error");
            assert.equal(a.rec.final.error?.code, "engine_restarted");
            assert.match(a.rec.final.error!.message, /killed by SIGKILL/);
            assert.equal(b.rec.final.finishReason, "cancel");
            assert.equal(b.rec.final.error, undefined);
            assert.equal(c.request.state, "queued");
            assert.equal(queued.request.state, "queued");
            assert.deepEqual(scheduler.slotSnapshot().map((s) => s.conversation), [null, null], "a new engine holds no cache");
            await settle();
            assert.equal(engine.jobs.length, 2, "nothing is sent to an engine that is restarting");
            engine.state = "ready";
            scheduler.onReady(modelInfo(2), statsSnapshot());
            assert.deepEqual(engine.jobs.slice(2).map((j) => j.job), [c.request.id, queued.request.id]);
        });

        it("says the engine was restarted by the watchdog when it stalled", async function () {
            setup(1);
            const a = submit();
            await settle();
            scheduler.onLost({ code: null, signal: "SIGKILL", reason: "stalled", at: "", stderrTail: [] });
            assert.match(a.rec.final.error!.message, /stopped responding/);
        });

        it("fails queued and new requests fast with engine_unavailable after a failed restart, until the engine is ready", async function () {
            setup(1);
            const a = submit();
            const queued = submit();
            await settle();
            engine.state = "restarting";
            scheduler.onLost({ code: 1, signal: null, reason: "crashed", at: "", stderrTail: [] });
            scheduler.onRestartFailed("the model file is missing");
            assert.equal(a.rec.final.error?.code, "engine_restarted");
            assert.equal(queued.rec.final.error?.code, "engine_unavailable");
            assert.match(queued.rec.final.error!.message, /the model file is missing/);
            assert.equal(submitRefused().code, "engine_unavailable");
            engine.state = "ready";
            scheduler.onReady(modelInfo(1), statsSnapshot());
            const after = submit();
            await settle();
            assert.equal(after.request.state, "running");
        });
    });

    describe("model switch and shutdown", function () {
        it("pauseAndDrain holds new requests until resume, and resolves once running ones are done", async function () {
            setup(1);
            const a = submit();
            await settle();
            let drained = false;
            const drain = scheduler.pauseAndDrain(60_000).then(() => { drained = true; });
            const held = submit();
            done(a.request, "stop");
            await drain;
            assert.ok(drained);
            await settle();
            assert.equal(held.request.state, "queued", "paused: the queue does not move");
            scheduler.resume();
            assert.equal(held.request.state, "running");
        });

        it("pauseAndDrain cancels what still runs after drainMs", async function () {
            setup(1);
            const a = submit();
            await settle();
            const drain = scheduler.pauseAndDrain(20);
            await eventually("the drain's cancel", () => engine.sent.some((m) => m.t === "cancel"));
            done(a.request, "cancel");
            await drain;
            assert.equal(a.rec.final.finishReason, "cancel");
        });

        it("shutdown ends queued requests with shutdown, refuses new ones, and cancels running ones after the grace", async function () {
            setup(1);
            const a = submit();
            const queued = submit();
            await settle();
            const stopping = scheduler.shutdown(20);
            assert.equal(queued.rec.final.finishReason, "shutdown");
            assert.equal(submitRefused().code, "shutting_down");
            await eventually("the shutdown's cancel", () => engine.sent.some((m) => m.t === "cancel"));
            done(a.request, "cancel");
            await stopping;
            assert.equal(a.rec.final.finishReason, "shutdown", "a request cancelled by the shutdown says so");
        });
    });
});
