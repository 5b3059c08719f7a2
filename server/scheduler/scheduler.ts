// Owns request lifetimes: admission (bounded queue), sequence assignment, the engine's job messages,
// cancellation, engine loss, model switches and shutdown. The WebSocket and HTTP layers submit requests
// with a sink and get exactly one `final` per accepted request.
import type { Logger } from "../logger.js";
import type { ServerMetrics } from "../metrics/metrics.js";
import { ApiError, type WireError } from "../protocol/errors.js";
import { wireFinalKv } from "../protocol/kv-wire.js";
import type { ChatMessage, FinishReason, Timings, Usage, WireKvStats } from "../protocol/ws-messages.js";
import {
    monoMs, type EngineModelInfo, type EngineStatsSnapshot, type FromEngine, type SamplingSettings
} from "../protocol/engine-ipc.js";
import { conversationKey } from "./conversation-key.js";
import type { EngineExit, EngineListener, EnginePort } from "./engine-port.js";
import { SlotPool } from "./slot-pool.js";

export type RequestSpec = {
    input: { messages: ChatMessage[] } | { prompt: string },
    /** null: the configured limit (or up to the context) */
    maxTokens: number | null,
    sampling: SamplingSettings,
    stop: string[],
    conversationId: string | null,
    /** who sent it (the key's name, or "anonymous"): conversations are (principal, id) */
    principal: string
};

export type FinalResult = {
    finishReason: FinishReason,
    usage: Usage,
    timings: Timings,
    kv: WireKvStats | null,
    error?: WireError
};

export interface RequestSink {
    /** the engine began the request (after the queue); */
    onRunning?(promptTokens: number, cachedTokens: number): void;
    /** a batch of a long prompt was evaluated: `evaluated` of its `total` tokens are in the cache */
    onProgress?(evaluated: number, total: number): void;
    onDelta(text: string, tokens: number): void;
    onFinal(result: FinalResult): void;
}

export type SchedulerLimits = {
    maxQueue: number,
    queueTimeoutMs: number,
    maxTokens: number,
    maxPromptTokens: number,
    conversationIdleMs: number
};

type RequestState = "queued" | "running" | "done";

export class ScheduledRequest {
    state: RequestState = "queued";
    slot = -1;
    promptTokens = 0;
    cachedTokens = 0;
    completionTokens = 0;
    startedAt = 0;
    firstTokenAt = 0;
    lastTokenEngineAt = 0;
    promptMs = 0;
    cancelReason: "cancel" | "shutdown" | null = null;
    queueTimer: NodeJS.Timeout | null = null;
    readonly created = Math.floor(Date.now() / 1000);

    constructor(
        readonly id: number,
        readonly spec: RequestSpec,
        readonly sink: RequestSink,
        readonly acceptedAt: number,
        readonly model: string,
        readonly queuePosition: number
    ) {}
}

export type SchedulerStatus = {
    running: number,
    waiting: number,
    sequences: number,
    available: number
};

const round = (ms: number) => Math.max(0, Math.round(ms * 1000) / 1000);

export class Scheduler implements EngineListener {
    private engine: EnginePort | null = null;
    private readonly queue: ScheduledRequest[] = [];
    private readonly running = new Map<number, ScheduledRequest>();
    private readonly slots: SlotPool;
    private nextId = 1;
    private closed = false;
    private paused = false;
    private readonly idleTimer: NodeJS.Timeout;
    private readonly drainWaiters: (() => void)[] = [];
    private modelInfo: EngineModelInfo | null = null;
    /** why the engine cannot start again (a restart failed), until one succeeds: requests fail fast */
    private engineFailure: string | null = null;
    private onReadyHooks: ((info: EngineModelInfo) => void)[] = [];
    private finishedValue = 0;

    constructor(
        private readonly limits: SchedulerLimits,
        private readonly metrics: ServerMetrics,
        private readonly log: Logger,
        sequences: number
    ) {
        this.slots = new SlotPool(sequences);
        this.idleTimer = setInterval(() => this.expireIdle(), Math.max(250, Math.min(5000, limits.conversationIdleMs / 4)));
        this.idleTimer.unref();
    }

    attach(engine: EnginePort): void {
        this.engine = engine;
    }

    /** called whenever a model starts serving (first start, restart, switch) */
    onModelReady(hook: (info: EngineModelInfo) => void): void {
        this.onReadyHooks.push(hook);
    }

    /** requests finished so far, however they ended (the KV statistics may have changed since) */
    get finishedRequests(): number {
        return this.finishedValue;
    }

    get model(): EngineModelInfo | null {
        return this.modelInfo;
    }

    status(): SchedulerStatus {
        return { running: this.running.size, waiting: this.queue.length, sequences: this.slots.size, available: this.slots.available };
    }

    slotSnapshot() {
        return this.slots.snapshot();
    }

    /**
     * Accepts a request or throws ApiError (queue_full, shutting_down, conversation_busy). An accepted
     * request gets exactly one onFinal.
     */
    submit(spec: RequestSpec, sink: RequestSink): ScheduledRequest {
        if (this.closed)
            throw new ApiError("shutting_down", "the server is shutting down");
        if (this.engineFailure != null)
            throw new ApiError("engine_unavailable", this.engineFailure);
        if (spec.conversationId != null && (this.slots.conversationRunning(spec.principal, spec.conversationId)
            || this.queue.some((r) => r.spec.principal === spec.principal && r.spec.conversationId === spec.conversationId)))
            throw new ApiError("conversation_busy", `conversation "${spec.conversationId}" already has a request in flight; send the next turn after its final message`);
        // requests submitted earlier in this tick are still in the queue, to be dispatched with this one:
        // those the free sequences will take do not wait (a WebSocket client's pipelined messages arrive
        // in one chunk, and ws emits them in one tick)
        const dispatchable = this.canDispatch();
        const waiting = dispatchable ? Math.max(0, this.queue.length - this.slots.available) : this.queue.length;
        const canRunNow = dispatchable && this.queue.length < this.slots.available;
        if (!canRunNow && waiting >= this.limits.maxQueue)
            throw new ApiError("queue_full", `all ${this.slots.size} sequences are busy and ${waiting} requests are waiting (max-queue ${this.limits.maxQueue}); retry later`);
        const request = new ScheduledRequest(this.nextId++, spec, sink, monoMs(), this.modelInfo?.name ?? "", canRunNow ? 0 : waiting + 1);
        this.queue.push(request);
        request.queueTimer = setTimeout(() => this.queueTimedOut(request), this.limits.queueTimeoutMs);
        request.queueTimer.unref();
        // the caller sends its "start" first; dispatch right after, so that it comes before any token
        queueMicrotask(() => this.dispatch());
        this.updateGauges();
        return request;
    }

    cancel(request: ScheduledRequest, reason: "cancel" | "shutdown" = "cancel"): void {
        if (request.state === "done")
            return;
        request.cancelReason ??= reason;
        if (request.state === "queued") {
            this.removeFromQueue(request);
            this.finish(request, reason, null, null);
            return;
        }
        this.engine?.send({ t: "cancel", job: request.id });
    }

    // ---- engine events

    onJobMessage(message: Extract<FromEngine, { job: number }>, receivedAt: number): void {
        const request = this.running.get(message.job);
        if (request == null)
            return;
        switch (message.t) {
            case "started":
                request.promptTokens = message.promptTokens;
                request.cachedTokens = message.cachedTokens;
                this.metrics.requestStarted(request.model, (request.startedAt - request.acceptedAt) / 1000, message.promptTokens, message.cachedTokens);
                request.sink.onRunning?.(message.promptTokens, message.cachedTokens);
                return;
            case "progress":
                request.sink.onProgress?.(message.evaluated, message.total);
                return;
            case "tokens": {
                this.metrics.ipc((receivedAt - message.sentAt) / 1000);
                const interToken = request.lastTokenEngineAt > 0 ? (message.sentAt - request.lastTokenEngineAt) / 1000 : null;
                if (request.firstTokenAt === 0 && message.n > 0) {
                    request.firstTokenAt = receivedAt;
                    this.metrics.firstToken(request.model, (receivedAt - request.acceptedAt) / 1000);
                }
                if (message.n > 0)
                    request.lastTokenEngineAt = message.sentAt;
                request.completionTokens += message.n;
                this.metrics.tokens(request.model, message.n, interToken);
                if (message.text !== "")
                    request.sink.onDelta(message.text, message.n);
                return;
            }
            case "done": {
                const uncounted = message.completionTokens - request.completionTokens;
                if (uncounted > 0)
                    this.metrics.tokens(request.model, uncounted, null);
                request.completionTokens = Math.max(request.completionTokens, message.completionTokens);
                request.promptTokens = message.promptTokens;
                request.cachedTokens = message.cachedTokens;
                request.promptMs = message.promptMs;
                this.metrics.promptEvaluated(request.model, message.promptEvaluated);
                const reason: FinishReason = message.finishReason === "cancel" ? (request.cancelReason ?? "cancel") : message.finishReason;
                const kv = wireFinalKv(this.modelInfo?.policy ?? "off", message.kv, request.slot);
                this.finish(request, reason, message.error ?? null, kv);
                return;
            }
        }
    }

    onReady(info: EngineModelInfo, stats: EngineStatsSnapshot): void {
        this.modelInfo = info;
        this.engineFailure = null;
        this.slots.reset(info.sequences);
        // hooks first: they tell the metrics about the new context before its first statistics
        for (const hook of this.onReadyHooks)
            hook(info);
        this.metrics.kv(stats.context);
        this.metrics.engineMemory(stats.rssBytes);
        this.dispatch();
    }

    onLost(exit: EngineExit): void {
        const how = exit.signal != null ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
        const message = exit.reason === "stalled"
            ? "the engine stopped responding and was restarted; this request was lost and can be retried"
            : `the engine process ${how} and is restarting; this request was lost and can be retried`;
        for (const request of [...this.running.values()]) {
            if (request.cancelReason != null)
                this.finish(request, request.cancelReason, null, null);
            else
                this.finish(request, "error", { code: "engine_restarted", message }, null);
        }
        this.slots.reset(this.slots.size);
        this.metrics.engineRestarted();
        this.updateGauges();
    }

    onRestartFailed(message: string): void {
        this.engineFailure = `the engine cannot start: ${message}; the server retries with backoff`;
        this.metrics.modelLoadFailed();
        for (const request of [...this.queue]) {
            this.removeFromQueue(request);
            this.finish(request, "error", { code: "engine_unavailable", message: this.engineFailure }, null);
        }
        this.updateGauges();
    }

    onStats(stats: EngineStatsSnapshot): void {
        this.metrics.kv(stats.context);
        this.metrics.engineMemory(stats.rssBytes);
    }

    busy(): boolean {
        return this.running.size > 0;
    }

    onStateEvent(event: Extract<FromEngine, { t: "state" }>): void {
        this.metrics.conversationState(event);
        if (event.event === "refused")
            this.log.warn("a saved conversation state was refused and deleted; the conversation is evaluated again",
                { reason: event.reason, detail: event.message });
        else if (event.event === "save_failed")
            this.log.warn("a conversation state could not be saved", { error: event.message });
    }

    // ---- model switch and shutdown

    /**
     * Holds new requests in the queue and resolves when no request runs. Requests still running after
     * `drainMs` are cancelled. resume() lets the queue move again.
     */
    async pauseAndDrain(drainMs: number): Promise<void> {
        this.paused = true;
        const timer = setTimeout(() => {
            for (const request of this.running.values())
                this.cancel(request, "cancel");
        }, drainMs);
        try {
            await this.drained();
        } finally {
            clearTimeout(timer);
        }
    }

    resume(): void {
        this.paused = false;
        this.dispatch();
    }

    /**
     * Stops admission; queued requests end at once, running ones may finish for `graceMs` and are then
     * cancelled. Resolves when nothing runs (or after graceMs + 3 s in any case).
     */
    async shutdown(graceMs: number): Promise<void> {
        this.closed = true;
        clearInterval(this.idleTimer);
        for (const request of [...this.queue]) {
            this.removeFromQueue(request);
            request.cancelReason = "shutdown";
            this.finish(request, "shutdown", null, null);
        }
        const cancelAll = () => {
            for (const request of this.running.values())
                this.cancel(request, "shutdown");
        };
        const graceTimer = setTimeout(cancelAll, graceMs);
        const hardTimer = setTimeout(() => {
            for (const request of [...this.running.values()])
                this.finish(request, "shutdown", null, null);
        }, graceMs + 3000);
        await this.drained();
        clearTimeout(graceTimer);
        clearTimeout(hardTimer);
    }

    // ---- internals

    private drained(): Promise<void> {
        if (this.running.size === 0)
            return Promise.resolve();
        return new Promise((resolve) => this.drainWaiters.push(resolve));
    }

    private canDispatch(): boolean {
        return !this.paused && this.engine != null && this.engine.state === "ready" && this.modelInfo != null;
    }

    private dispatch(): void {
        while (this.queue.length > 0 && this.canDispatch()) {
            const request = this.queue[0]!;
            const acquired = this.slots.acquire(request.id, request.spec.principal, request.spec.conversationId);
            if (acquired == null)
                break;
            this.queue.shift();
            if (request.queueTimer != null)
                clearTimeout(request.queueTimer);
            request.state = "running";
            request.slot = acquired.slot;
            request.startedAt = monoMs();
            this.running.set(request.id, request);
            const maxTokens = this.resolveMaxTokens(request.spec.maxTokens);
            const sent = this.engine!.send({
                t: "generate",
                job: {
                    job: request.id,
                    slot: acquired.slot,
                    input: request.spec.input,
                    maxTokens,
                    maxPromptTokens: this.limits.maxPromptTokens,
                    sampling: request.spec.sampling,
                    stop: request.spec.stop,
                    clearCache: acquired.clearCache,
                    conversationKey: conversationKey(request.spec)
                }
            });
            if (!sent)
                this.finish(request, "error", { code: "engine_unavailable", message: "the engine is not running" }, null);
        }
        this.updateGauges();
    }

    private resolveMaxTokens(requested: number | null): number | null {
        const cap = this.limits.maxTokens > 0 ? this.limits.maxTokens : null;
        if (requested == null)
            return cap;
        return cap == null ? requested : Math.min(requested, cap);
    }

    private queueTimedOut(request: ScheduledRequest): void {
        if (request.state !== "queued")
            return;
        this.removeFromQueue(request);
        this.finish(request, "error", {
            code: "queue_timeout",
            message: `no sequence became free within ${this.limits.queueTimeoutMs / 1000} s`
        }, null);
    }

    private removeFromQueue(request: ScheduledRequest): void {
        const at = this.queue.indexOf(request);
        if (at >= 0)
            this.queue.splice(at, 1);
        if (request.queueTimer != null)
            clearTimeout(request.queueTimer);
    }

    private finish(request: ScheduledRequest, reason: FinishReason, error: WireError | null, kv: WireKvStats | null): void {
        if (request.state === "done")
            return;
        this.finishedValue++;
        const wasRunning = request.state === "running";
        request.state = "done";
        const now = monoMs();
        if (wasRunning) {
            this.running.delete(request.id);
            // a conversation keeps its sequence (and cache) unless the request failed
            const keep = request.spec.conversationId != null && reason !== "error" && this.limits.conversationIdleMs > 0;
            this.slots.release(request.slot, now, keep);
        }
        const startedAt = request.startedAt || now;
        const generationMs = request.firstTokenAt > 0 ? now - request.firstTokenAt : 0;
        const timings: Timings = {
            queue_ms: round(startedAt - request.acceptedAt),
            prompt_ms: round(request.promptMs),
            ttft_ms: round(request.firstTokenAt > 0 ? request.firstTokenAt - request.acceptedAt : 0),
            generation_ms: round(generationMs),
            total_ms: round(now - request.acceptedAt),
            tokens_per_second: generationMs > 0 && request.completionTokens > 1
                ? round((request.completionTokens - 1) / (generationMs / 1000)) : 0
        };
        const usage: Usage = {
            prompt_tokens: request.promptTokens,
            completion_tokens: request.completionTokens,
            total_tokens: request.promptTokens + request.completionTokens,
            cached_tokens: request.cachedTokens
        };
        this.metrics.requestFinished(request.model, reason, (now - request.acceptedAt) / 1000, request.completionTokens,
            error?.code ?? null);
        if (error != null && reason === "error")
            this.log.info("request failed", { request: request.id, code: error.code });
        const result: FinalResult = { finishReason: reason, usage, timings, kv, ...(error != null ? { error } : {}) };
        try {
            request.sink.onFinal(result);
        } catch (err) {
            this.log.error("a request sink threw", { error: (err as Error).message });
        }
        if (this.running.size === 0)
            for (const resolve of this.drainWaiters.splice(0))
                resolve();
        this.updateGauges();
        if (wasRunning)
            queueMicrotask(() => this.dispatch());
    }

    private expireIdle(): void {
        if (this.limits.conversationIdleMs <= 0)
            return;
        for (const slot of this.slots.expire(monoMs(), this.limits.conversationIdleMs))
            this.engine?.send({ t: "release", slot });
    }

    private updateGauges(): void {
        this.metrics.setQueue(this.running.size, this.queue.length);
    }
}
