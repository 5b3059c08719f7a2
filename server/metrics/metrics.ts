// Every Prometheus metric of the server, declared here and nowhere else. Names follow vLLM's shapes under
// the keepkv_ prefix (no colons, base units, _total on counters); the rest of the server only calls the
// methods below. Counters only ever increase: nothing here resets on scrape or on an engine restart.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { stateRefusals, type FromEngine, type KeepKvContextStats } from "../protocol/engine-ipc.js";
import { errorCodes } from "../protocol/errors.js";

const ttftBuckets = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160];
const itlBuckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5];
const latencyBuckets = [0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960];
const tokenBuckets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
const ipcBuckets = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

export type ConfigInfoLabels = {
    model_name: string,
    policy: string,
    variant: string,
    budget: string,
    sinks: string,
    recent: string,
    threshold: string,
    cache_type_k: string,
    cache_type_v: string,
    context_size: string,
    sequences: string,
    flash_attention: string,
    chat_format: string,
    keepkv_version: string
};

type KvTotals = { merges: number, evictions: number, compressions: number, compressionSeconds: number };

export class ServerMetrics {
    readonly registry = new Registry();

    private readonly promptTokens = new Counter({
        name: "keepkv_prompt_tokens_total", help: "Prompt tokens of finished and running requests (cached ones included).",
        labelNames: ["model_name"], registers: [this.registry]
    });
    private readonly promptTokensCached = new Counter({
        name: "keepkv_prompt_tokens_cached_total", help: "Prompt tokens whose KV state was reused from a conversation's cache instead of evaluated.",
        labelNames: ["model_name"], registers: [this.registry]
    });
    private readonly promptTokensEvaluated = new Counter({
        name: "keepkv_prompt_tokens_evaluated_total", help: "Prompt tokens the engine evaluated (neither cached nor skipped by a cancel during the prompt).",
        labelNames: ["model_name"], registers: [this.registry]
    });
    private readonly generationTokens = new Counter({
        name: "keepkv_generation_tokens_total", help: "Generated tokens.",
        labelNames: ["model_name"], registers: [this.registry]
    });
    private readonly running = new Gauge({
        name: "keepkv_num_requests_running", help: "Requests generating on a sequence.", registers: [this.registry]
    });
    private readonly waiting = new Gauge({
        name: "keepkv_num_requests_waiting", help: "Requests waiting in the queue for a sequence.", registers: [this.registry]
    });
    private readonly ttft = new Histogram({
        name: "keepkv_time_to_first_token_seconds", help: "From acceptance of a request to its first generated token (queue time included).",
        labelNames: ["model_name"], buckets: ttftBuckets, registers: [this.registry]
    });
    private readonly itl = new Histogram({
        name: "keepkv_inter_token_latency_seconds", help: "Time between two generated tokens of a request, measured in the engine.",
        labelNames: ["model_name"], buckets: itlBuckets, registers: [this.registry]
    });
    private readonly e2e = new Histogram({
        name: "keepkv_e2e_request_latency_seconds", help: "From acceptance of a request to its end, whatever the finish reason.",
        labelNames: ["model_name"], buckets: latencyBuckets, registers: [this.registry]
    });
    private readonly queueTime = new Histogram({
        name: "keepkv_request_queue_time_seconds", help: "Time requests spent waiting for a sequence.",
        labelNames: ["model_name"], buckets: latencyBuckets, registers: [this.registry]
    });
    private readonly requestPromptTokens = new Histogram({
        name: "keepkv_request_prompt_tokens", help: "Prompt tokens per request.",
        labelNames: ["model_name"], buckets: tokenBuckets, registers: [this.registry]
    });
    private readonly requestGenerationTokens = new Histogram({
        name: "keepkv_request_generation_tokens", help: "Generated tokens per request.",
        labelNames: ["model_name"], buckets: tokenBuckets, registers: [this.registry]
    });
    private readonly finished = new Counter({
        name: "keepkv_request_success_total", help: "Finished requests by finish reason (stop, length, cancel, error, shutdown).",
        labelNames: ["model_name", "finished_reason"], registers: [this.registry]
    });
    private readonly errors = new Counter({
        name: "keepkv_request_errors_total", help: "Requests refused or failed, by error code.",
        labelNames: ["code"], registers: [this.registry]
    });

    private readonly kvUsage = new Gauge({
        name: "keepkv_kv_cache_usage_ratio", help: "KV cells in use over the physical KV cells of the context (0..1).", registers: [this.registry]
    });
    private readonly kvCellsUsed = new Gauge({
        name: "keepkv_kv_cells_used", help: "KV cells holding tokens, all sequences.", registers: [this.registry]
    });
    private readonly kvCellsBudget = new Gauge({
        name: "keepkv_kv_cells_budget", help: "KV budget in cells, all sequences (0 when no budget is set).", registers: [this.registry]
    });
    private readonly kvCellsCapacity = new Gauge({
        name: "keepkv_kv_cells_capacity", help: "Physical KV cells of the context, all sequences.", registers: [this.registry]
    });
    private readonly kvBytesUsed = new Gauge({
        name: "keepkv_kv_bytes_used", help: "K/V bytes occupied by cells that hold tokens.", registers: [this.registry]
    });
    private readonly kvBytesAllocated = new Gauge({
        name: "keepkv_kv_bytes_allocated", help: "K/V bytes allocated for the context.", registers: [this.registry]
    });
    private readonly kvBytesFull = new Gauge({
        name: "keepkv_kv_bytes_full", help: "K/V bytes an uncompressed cache of the same logical context would allocate.", registers: [this.registry]
    });
    private readonly seqCellsUsed = new Gauge({
        name: "keepkv_sequence_kv_cells_used", help: "KV cells holding tokens, per sequence slot.", labelNames: ["sequence"], registers: [this.registry]
    });
    private readonly seqCellsBudget = new Gauge({
        name: "keepkv_sequence_kv_cells_budget", help: "KV budget in cells, per sequence slot (absent when no budget is set).", labelNames: ["sequence"], registers: [this.registry]
    });
    private readonly seqCellsCapacity = new Gauge({
        name: "keepkv_sequence_kv_cells_capacity", help: "Physical KV cells available to each sequence slot.", labelNames: ["sequence"], registers: [this.registry]
    });
    private readonly seqBytesUsed = new Gauge({
        name: "keepkv_sequence_kv_bytes_used", help: "K/V bytes occupied by each sequence slot.", labelNames: ["sequence"], registers: [this.registry]
    });
    private readonly seqLogicalTokens = new Gauge({
        name: "keepkv_sequence_logical_tokens", help: "Tokens each sequence slot has seen (its next position), compressed or not.", labelNames: ["sequence"], registers: [this.registry]
    });
    private readonly seqVoteMax = new Gauge({
        name: "keepkv_sequence_kv_vote_max", help: "Largest KeepKV vote of any cell of each sequence slot (1: uncompressed).", labelNames: ["sequence"], registers: [this.registry]
    });
    private readonly seqVoteMean = new Gauge({
        name: "keepkv_sequence_kv_vote_mean", help: "Mean KeepKV vote over the cells of each sequence slot.", labelNames: ["sequence"], registers: [this.registry]
    });
    private readonly merges = new Counter({
        name: "keepkv_kv_merges_total", help: "Leaving KV cells merged into a retained cell (cell equivalents).", labelNames: ["policy"], registers: [this.registry]
    });
    private readonly evictions = new Counter({
        name: "keepkv_kv_evictions_total", help: "Leaving KV cells dropped without a merge (cell equivalents).", labelNames: ["policy"], registers: [this.registry]
    });
    private readonly compressions = new Counter({
        name: "keepkv_kv_compressions_total", help: "KV compression events.", labelNames: ["policy"], registers: [this.registry]
    });
    private readonly compressionSeconds = new Counter({
        name: "keepkv_kv_compression_seconds_total", help: "Time spent compressing the KV cache.", labelNames: ["policy"], registers: [this.registry]
    });

    private readonly engineRestarts = new Counter({
        name: "keepkv_engine_restarts_total", help: "Times the engine process died or hung and was restarted.", registers: [this.registry]
    });
    private readonly engineUp = new Gauge({
        name: "keepkv_engine_up", help: "1 when the engine serves, 0 while it loads or restarts.", registers: [this.registry]
    });
    private readonly engineRss = new Gauge({
        name: "keepkv_engine_resident_memory_bytes", help: "Resident memory of the engine process (model and KV cache live there).", registers: [this.registry]
    });
    private readonly ipcLatency = new Histogram({
        name: "keepkv_engine_ipc_latency_seconds", help: "Time a token message spends between the engine process and the server.",
        buckets: ipcBuckets, registers: [this.registry]
    });
    private readonly modelLoads = new Counter({
        name: "keepkv_model_loads_total", help: "Model loads at startup, restart or switch, by result.", labelNames: ["result"], registers: [this.registry]
    });
    private readonly configInfo = new Gauge({
        name: "keepkv_config_info", help: "The serving configuration as labels; the value is always 1.",
        labelNames: ["model_name", "policy", "variant", "budget", "sinks", "recent", "threshold", "cache_type_k", "cache_type_v",
            "context_size", "sequences", "flash_attention", "chat_format", "keepkv_version"],
        registers: [this.registry]
    });
    private readonly wsConnections = new Gauge({
        name: "keepkv_websocket_connections", help: "Open WebSocket connections.", registers: [this.registry]
    });
    private readonly statsReads = new Counter({
        name: "keepkv_engine_stats_reads_total", help: "KV statistics read from the engine for /metrics and /v1/kv (at most one per 500 ms, and one after each finished request, however often they are asked for).",
        registers: [this.registry]
    });
    private readonly dropped = new Counter({
        name: "keepkv_clients_dropped_total", help: "Streaming clients disconnected by the server (api: ws or http; reason: slow_consumer or ping_timeout).",
        labelNames: ["api", "reason"], registers: [this.registry]
    });

    private readonly stateRestores = new Counter({
        name: "keepkv_conversation_state_restores_total", help: "Conversations whose saved KV state was loaded from disk instead of evaluating their history again.",
        registers: [this.registry]
    });
    private readonly stateMisses = new Counter({
        name: "keepkv_conversation_state_misses_total", help: "Conversations that came to a sequence not holding them and had no usable saved state.",
        registers: [this.registry]
    });
    private readonly stateRefusals = new Counter({
        name: "keepkv_conversation_state_refusals_total", help: "Saved conversation states refused and deleted, by reason (the conversation was evaluated again).",
        labelNames: ["reason"], registers: [this.registry]
    });
    private readonly stateSaves = new Counter({
        name: "keepkv_conversation_state_saves_total", help: "Conversation states written to disk (idle, sequence needed, switch, shutdown).",
        registers: [this.registry]
    });
    private readonly stateRemovals = new Counter({
        name: "keepkv_conversation_state_removals_total", help: "Saved conversation states removed to keep the folder under its limit (least recently used first).",
        registers: [this.registry]
    });
    private readonly stateSaveFailures = new Counter({
        name: "keepkv_conversation_state_save_failures_total", help: "Conversation states that could not be written.", registers: [this.registry]
    });
    private readonly stateDiskBytes = new Gauge({
        name: "keepkv_conversation_state_disk_bytes", help: "Bytes the saved conversation states take on disk.", registers: [this.registry]
    });

    private kvBaseline: KvTotals | null = null;
    private kvPolicy = "off";

    constructor(opts: { processMetrics: boolean } = { processMetrics: true }) {
        if (opts.processMetrics) {
            collectDefaultMetrics({ register: this.registry });
            // gauges named _total break Prometheus naming (promtool rejects them); the per-type gauges
            // without the suffix carry the same numbers
            for (const name of ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"])
                this.registry.removeSingleMetric(name);
        }
        this.engineUp.set(0);
        this.running.set(0);
        this.waiting.set(0);
        this.wsConnections.set(0);
        // every known code is exported from the start at 0, so that rate() and increase() see the first error
        for (const code of Object.keys(errorCodes))
            this.errors.labels(code).inc(0);
        for (const reason of stateRefusals)
            this.stateRefusals.labels(reason).inc(0);
    }

    get contentType(): string {
        return this.registry.contentType;
    }

    async exposition(): Promise<string> {
        return await this.registry.metrics();
    }

    setQueue(running: number, waiting: number): void {
        this.running.set(running);
        this.waiting.set(waiting);
    }

    /** a new model serves: its request series exist from now on with zero values, so that rate() and
     *  increase() see the first increment */
    modelServing(model: string): void {
        this.promptTokens.labels(model).inc(0);
        this.promptTokensCached.labels(model).inc(0);
        this.generationTokens.labels(model).inc(0);
        for (const reason of ["stop", "length", "cancel", "error", "shutdown"])
            this.finished.labels(model, reason).inc(0);
    }

    requestStarted(model: string, queueSeconds: number, promptTokens: number, cachedTokens: number): void {
        this.queueTime.labels(model).observe(queueSeconds);
        this.promptTokens.labels(model).inc(promptTokens);
        this.promptTokensCached.labels(model).inc(cachedTokens);
        this.requestPromptTokens.labels(model).observe(promptTokens);
    }

    promptEvaluated(model: string, tokens: number): void {
        this.promptTokensEvaluated.labels(model).inc(tokens);
    }

    firstToken(model: string, ttftSeconds: number): void {
        this.ttft.labels(model).observe(ttftSeconds);
    }

    tokens(model: string, count: number, interTokenSeconds: number | null): void {
        if (count <= 0)
            return;
        this.generationTokens.labels(model).inc(count);
        if (interTokenSeconds != null) {
            const each = interTokenSeconds / count;
            for (let i = 0; i < count; i++)
                this.itl.labels(model).observe(each);
        }
    }

    requestFinished(model: string, reason: string, e2eSeconds: number, completionTokens: number, errorCode: string | null): void {
        this.finished.labels(model, reason).inc();
        this.e2e.labels(model).observe(e2eSeconds);
        this.requestGenerationTokens.labels(model).observe(completionTokens);
        if (errorCode != null)
            this.errors.labels(errorCode).inc();
    }

    engineStatsRead(): void {
        this.statsReads.inc();
    }

    requestRefused(code: string): void {
        this.errors.labels(code).inc();
    }

    ipc(seconds: number): void {
        if (seconds >= 0)
            this.ipcLatency.observe(seconds);
    }

    engineRestarted(): void {
        this.engineRestarts.inc();
        this.engineUp.set(0);
        this.kvBaseline = null;
    }

    /** a model serves on a new context (start, restart or switch): its KV counters start from zero */
    engineReady(policy: string): void {
        this.engineUp.set(1);
        this.kvPolicy = policy;
        this.kvBaseline = null;
        this.modelLoads.labels("success").inc();
    }

    modelLoadFailed(): void {
        this.modelLoads.labels("failure").inc();
    }

    engineMemory(rssBytes: number): void {
        this.engineRss.set(rssBytes);
    }

    setConfigInfo(labels: ConfigInfoLabels): void {
        this.configInfo.reset();
        this.configInfo.labels(labels).set(1);
    }

    conversationState(event: Extract<FromEngine, { t: "state" }>): void {
        switch (event.event) {
            case "saved": this.stateSaves.inc(); break;
            case "removed": this.stateRemovals.inc(); break;
            case "restored": this.stateRestores.inc(); break;
            case "miss": this.stateMisses.inc(); break;
            case "refused": this.stateRefusals.labels(event.reason).inc(); break;
            case "save_failed": this.stateSaveFailures.inc(); break;
        }
        this.stateDiskBytes.set(event.diskBytes);
    }

    websocketOpened(): void { this.wsConnections.inc(); }
    websocketClosed(): void { this.wsConnections.dec(); }
    clientDropped(api: "ws" | "http", reason: "slow_consumer" | "ping_timeout"): void { this.dropped.labels(api, reason).inc(); }

    /** KV gauges from a fresh snapshot; the counters advance by what changed since the previous one. */
    kv(stats: KeepKvContextStats): void {
        const used = stats.sequences.reduce((a, s) => a + s.cellsUsed, 0);
        this.kvCellsUsed.set(used);
        this.kvCellsCapacity.set(stats.capacityCells);
        this.kvUsage.set(stats.capacityCells > 0 ? used / stats.capacityCells : 0);
        const budgets = stats.sequences.map((s) => s.budget);
        this.kvCellsBudget.set(budgets.every((b) => b != null) ? budgets.reduce<number>((a, b) => a + b!, 0) : 0);
        this.kvBytesUsed.set(stats.kvBytesUsed);
        this.kvBytesAllocated.set(stats.kvBytesAllocated);
        this.kvBytesFull.set(stats.kvBytesFull);
        this.seqCellsBudget.reset();
        stats.sequences.forEach((s, slot) => {
            const label = String(slot);
            this.seqCellsUsed.labels(label).set(s.cellsUsed);
            this.seqCellsCapacity.labels(label).set(s.capacity);
            if (s.budget != null)
                this.seqCellsBudget.labels(label).set(s.budget);
            this.seqBytesUsed.labels(label).set(s.kvBytesUsed);
            this.seqLogicalTokens.labels(label).set(s.logicalTokens);
            this.seqVoteMax.labels(label).set(s.voteMax);
            this.seqVoteMean.labels(label).set(s.voteMean);
        });

        const totals: KvTotals = {
            merges: stats.merges, evictions: stats.evictions, compressions: stats.compressions, compressionSeconds: stats.compressionSeconds
        };
        const base = this.kvBaseline ?? { merges: 0, evictions: 0, compressions: 0, compressionSeconds: 0 };
        // a value below the previous one means the engine's counters started over (new context)
        const delta = (now: number, before: number) => now >= before ? now - before : now;
        const policy = this.kvPolicy;
        this.merges.labels(policy).inc(delta(totals.merges, base.merges));
        this.evictions.labels(policy).inc(delta(totals.evictions, base.evictions));
        this.compressions.labels(policy).inc(delta(totals.compressions, base.compressions));
        this.compressionSeconds.labels(policy).inc(delta(totals.compressionSeconds, base.compressionSeconds));
        this.kvBaseline = totals;
    }
}
