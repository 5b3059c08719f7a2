// Runs the engine in a child process and keeps it running: restarts it with exponential backoff when
// it dies or hangs, reloading the model it served, and tells its listener what happened so that the
// requests it held can be answered.
import { fork, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import { fileURLToPath } from "node:url";
import type { Logger } from "../logger.js";
import { inspectModelFile } from "../models/gguf-inspect.js";
import type { EngineState, ModelFileState } from "../protocol/http-messages.js";
import type { EngineExit, EngineListener, EnginePort } from "../scheduler/engine-port.js";
import { LineSplitter, StderrLog, withStderrReason } from "./engine-stderr.js";
import {
    monoMs, type EngineModelInfo, type EngineModelSettings, type EngineStatsSnapshot, type FromEngine, type StateStoreOptions,
    type ToEngine
} from "../protocol/engine-ipc.js";
import { RestartBackoff } from "./restart-backoff.js";

const engineEntry = fileURLToPath(new URL("../engine/engine-process.js", import.meta.url));

type FileIdentity = { dev: number, ino: number, size: number, mtimeMs: number };

function fileIdentity(file: string): FileIdentity | null {
    try {
        const stat = fs.statSync(file);
        return { dev: stat.dev, ino: stat.ino, size: stat.size, mtimeMs: stat.mtimeMs };
    } catch {
        return null;
    }
}

export class EngineStartError extends Error {
    constructor(readonly code: string, message: string) {
        super(message);
        this.name = "EngineStartError";
    }
}

export type SupervisorOptions = {
    /** ms without any message (while busy) or heartbeat before the engine counts as hung; 0: never */
    stallTimeoutMs: number,
    backoffInitialMs?: number,
    backoffMaxMs?: number,
    /** an engine that ran this long resets the backoff */
    stableAfterMs?: number,
    /** where the engine saves conversation states; null: nowhere */
    state?: StateStoreOptions | null
};

type Pending = { resolve: (m: FromEngine) => void, reject: (e: Error) => void, timer: NodeJS.Timeout };

/** One spawn's start, settled by the first of: ready, init_failed, exit. */
type StartAttempt = { settled: boolean, resolve: (info: EngineModelInfo) => void, reject: (err: Error) => void };

export class EngineSupervisor implements EnginePort {
    private child: ChildProcess | null = null;
    private stateValue: EngineState = "stopped";
    private settings: EngineModelSettings | null = null;
    private infoValue: EngineModelInfo | null = null;
    private restartsValue = 0;
    private lastExitValue: EngineExit | null = null;
    private readonly backoff: RestartBackoff;
    private readyAt = 0;
    private lastJobActivityAt = 0;
    private lastHeartbeatAt = 0;
    private lastRss = 0;
    private watchdog: NodeJS.Timeout | null = null;
    private restartTimer: NodeJS.Timeout | null = null;
    private nonce = 0;
    private readonly pending = new Map<number, Pending>();
    private readonly stderr = new StderrLog();
    private killReason: string | null = null;
    private lastStartErrorValue: { message: string, at: string } | null = null;
    private reportedFileState: ModelFileState | null = "ok";
    private fileCheckAt = 0;
    private loadedFile: FileIdentity | null = null;
    private readonly opts: Required<SupervisorOptions>;

    constructor(private readonly listener: EngineListener, private readonly log: Logger, opts: SupervisorOptions) {
        this.opts = { backoffInitialMs: 500, backoffMaxMs: 30_000, stableAfterMs: 60_000, state: null, ...opts };
        this.backoff = new RestartBackoff({
            initialMs: this.opts.backoffInitialMs, maxMs: this.opts.backoffMaxMs, stableAfterMs: this.opts.stableAfterMs
        });
    }

    get state(): EngineState { return this.stateValue; }
    get info(): EngineModelInfo | null { return this.infoValue; }
    get restarts(): number { return this.restartsValue; }
    get lastExit(): EngineExit | null { return this.lastExitValue; }
    get pid(): number | null { return this.child?.pid ?? null; }
    get rssBytes(): number { return this.lastRss; }
    get activeSettings(): EngineModelSettings | null { return this.settings; }
    /** why the last restart attempt failed, until one succeeds */
    get lastStartError(): { message: string, at: string } | null { return this.lastStartErrorValue; }

    /** Whether the serving model's file is still the one the engine loaded. */
    modelFileState(): ModelFileState | null {
        if (this.settings == null || this.loadedFile == null)
            return null;
        const now = fileIdentity(this.settings.modelPath);
        if (now == null)
            return "missing";
        const was = this.loadedFile;
        return now.dev === was.dev && now.ino === was.ino && now.size === was.size && now.mtimeMs === was.mtimeMs ? "ok" : "changed";
    }

    /** Starts the engine and waits until it serves. Fails (without retrying) when the first start fails. */
    async start(settings: EngineModelSettings): Promise<EngineModelInfo> {
        this.settings = settings;
        this.stateValue = "starting";
        const ready = await this.spawn();
        this.watchdog = setInterval(() => {
            this.checkStall();
            this.checkModelFile();
        }, 1000);
        this.watchdog.unref();
        return ready;
    }

    send(message: ToEngine): boolean {
        if (this.child == null || this.stateValue !== "ready" || !this.child.connected)
            return false;
        if (message.t === "generate")
            this.lastJobActivityAt = monoMs();
        // an engine that died a moment ago (its exit not yet seen) makes the write fail: the exit handler
        // deals with its requests, the failed write must not become an uncaught error
        this.child.send(message, (err) => {
            if (err != null)
                this.log.debug("message to the engine not delivered", { t: message.t, error: err.message });
        });
        return true;
    }

    /** Fresh statistics from the engine, or null when it does not answer in time. */
    async stats(timeoutMs = 500): Promise<EngineStatsSnapshot | null> {
        try {
            const reply = await this.request({ t: "stats", nonce: ++this.nonce }, timeoutMs);
            return reply.t === "stats" ? reply.stats : null;
        } catch {
            return null;
        }
    }

    /** Loads a second model beside the serving one. The serving model is untouched whatever happens. */
    async stageModel(settings: EngineModelSettings, timeoutMs: number): Promise<EngineModelInfo> {
        this.stderr.mark();
        const reply = await this.request({ t: "load_model", nonce: ++this.nonce, settings }, timeoutMs);
        if (reply.t === "model_loaded")
            return reply.info;
        if (reply.t === "model_load_failed")
            // llama.cpp says why on stderr ("K cache type q8_0 ... does not divide n_embd_head_k=8")
            throw new EngineStartError("MODEL_LOAD_FAILED", withStderrReason(reply.message, this.stderr.sinceMark));
        throw new Error(`unexpected engine reply ${reply.t}`);
    }

    async discardStaged(): Promise<void> {
        await this.request({ t: "discard_model", nonce: ++this.nonce }, 30_000).catch(() => undefined);
    }

    /** Swaps the staged model in; restarts after this reload the new model. */
    async activateStaged(settings: EngineModelSettings): Promise<EngineModelInfo> {
        const reply = await this.request({ t: "activate_model", nonce: ++this.nonce }, 60_000);
        if (reply.t !== "model_activated")
            throw new Error(`unexpected engine reply ${reply.t}`);
        this.settings = settings;
        this.infoValue = reply.info;
        this.loadedFile = fileIdentity(settings.modelPath);
        this.reportedFileState = "ok";
        this.listener.onReady(reply.info, reply.stats);
        return reply.info;
    }

    /** Kills the engine on purpose (the watchdog, or an operator); it restarts like after a crash. */
    kill(reason: string): void {
        if (this.child != null && this.child.exitCode == null && this.child.signalCode == null) {
            this.killReason = reason;
            this.child.kill("SIGKILL");
        }
    }

    async stop(timeoutMs: number): Promise<void> {
        this.stateValue = "stopping";
        if (this.watchdog != null)
            clearInterval(this.watchdog);
        if (this.restartTimer != null)
            clearTimeout(this.restartTimer);
        const child = this.child;
        if (child == null || child.exitCode != null || child.signalCode != null) {
            this.stateValue = "stopped";
            return;
        }
        const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
        if (child.connected)
            child.send({ t: "shutdown" } satisfies ToEngine, (err) => {
                if (err != null)
                    child.kill("SIGTERM");
            });
        else
            child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        await exited;
        clearTimeout(timer);
        this.stateValue = "stopped";
    }

    private request(message: ToEngine & { nonce: number }, timeoutMs: number): Promise<FromEngine> {
        return new Promise((resolve, reject) => {
            if (!this.send(message)) {
                reject(new Error("the engine is not running"));
                return;
            }
            const timer = setTimeout(() => {
                this.pending.delete(message.nonce);
                reject(new Error(`the engine did not answer "${message.t}" within ${timeoutMs} ms`));
            }, timeoutMs);
            this.pending.set(message.nonce, { resolve, reject, timer });
        });
    }

    /** Forks an engine for the current settings; resolves when it serves, rejects when its start fails. */
    private spawn(): Promise<EngineModelInfo> {
        const settings = this.settings!;
        // what the engine is about to map: a later change on disk shows in modelFileState()
        this.loadedFile = fileIdentity(settings.modelPath);
        this.reportedFileState = "ok";
        return new Promise((resolve, reject) => {
            const start: StartAttempt = { settled: false, resolve, reject };
            this.stderr.clearTail();
            this.killReason = null;
            const child = fork(engineEntry, [], {
                execArgv: [],
                stdio: ["ignore", "inherit", "pipe", "ipc"],
                serialization: "json"
            });
            this.child = child;
            this.collectStderr(child);
            child.on("message", (message: FromEngine) => this.onEngineMessage(child, message, start));
            // (a failed IPC write lands here when no callback took it; never let it escape)
            child.on("error", (err) => this.log.warn("engine process error", { pid: child.pid, error: err.message }));
            child.on("exit", (code, signal) => this.onEngineExit(child, code, signal, start));
            child.send({ t: "init", settings, state: this.opts.state } satisfies ToEngine, (err) => {
                if (err != null)
                    this.log.warn("could not send the engine its settings", { pid: child.pid, error: err.message });
            });
        });
    }

    private collectStderr(child: ChildProcess): void {
        const lines = new LineSplitter();
        child.stderr!.setEncoding("utf8");
        child.stderr!.on("data", (chunk: string) => {
            for (const line of lines.push(chunk)) {
                this.stderr.add(line);
                this.log.warn("engine stderr", { pid: child.pid, line });
            }
        });
    }

    private onEngineMessage(child: ChildProcess, message: FromEngine, start: StartAttempt): void {
        const now = monoMs();
        switch (message.t) {
            case "ready":
                this.onEngineReady(child, message, now, start);
                return;
            case "init_failed":
                this.onInitFailed(message, start);
                return;
            case "state":
                this.listener.onStateEvent?.(message);
                return;
            case "heartbeat":
                this.lastHeartbeatAt = now;
                this.lastRss = message.rssBytes;
                return;
            case "stats":
            case "model_loaded":
            case "model_load_failed":
            case "model_activated":
            case "model_discarded":
                if (message.t === "stats" || message.t === "model_activated") {
                    this.lastRss = message.stats.rssBytes;
                    this.listener.onStats(message.stats);
                }
                this.answerPending(message);
                return;
            default:
                this.lastJobActivityAt = now;
                this.listener.onJobMessage(message, now);
        }
    }

    private onEngineReady(child: ChildProcess, message: Extract<FromEngine, { t: "ready" }>, now: number, start: StartAttempt): void {
        this.stateValue = "ready";
        this.infoValue = message.info;
        this.lastStartErrorValue = null;
        this.readyAt = now;
        this.lastHeartbeatAt = now;
        this.lastRss = message.stats.rssBytes;
        this.log.info("engine ready", {
            pid: child.pid, model: message.info.name, context: message.info.contextSize,
            sequences: message.info.sequences, chat_format: message.info.chatFormat, keepkv: message.info.keepKvVersion
        });
        this.listener.onReady(message.info, message.stats);
        if (!start.settled) {
            start.settled = true;
            start.resolve(message.info);
        }
    }

    private onInitFailed(message: Extract<FromEngine, { t: "init_failed" }>, start: StartAttempt): void {
        if (start.settled)
            return;
        start.settled = true;
        // llama.cpp says why on stderr ("failed to allocate buffer for kv cache"), on another pipe than
        // this message: give its lines a moment to arrive
        setTimeout(() => {
            const text = withStderrReason(message.message, this.stderr.tail);
            this.log.error("engine could not load the model", { code: message.code, error: text });
            start.reject(new EngineStartError(message.code, text));
        }, 100);
    }

    /** A reply to request(): hands it to its waiter. */
    private answerPending(message: Extract<FromEngine, { nonce: number }>): void {
        const waiter = this.pending.get(message.nonce);
        if (waiter == null)
            return;
        this.pending.delete(message.nonce);
        clearTimeout(waiter.timer);
        waiter.resolve(message);
    }

    private onEngineExit(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null, start: StartAttempt): void {
        if (this.child === child)
            this.child = null;
        for (const [nonce, waiter] of this.pending) {
            clearTimeout(waiter.timer);
            waiter.reject(new Error("the engine exited"));
            this.pending.delete(nonce);
        }
        const wasReady = this.stateValue === "ready";
        const tail = this.stderr.tail.slice();
        const exit: EngineExit = {
            code, signal,
            reason: this.killReason ?? (start.settled && wasReady ? "crashed" : "init_failed"),
            at: new Date().toISOString(),
            stderrTail: tail
        };
        if (!start.settled) {
            start.settled = true;
            start.reject(new EngineStartError("ENGINE_EXITED",
                `the engine exited while loading the model (code ${code}, signal ${signal})${tail.length > 0 ? ": " + tail.slice(-3).join(" | ") : ""}`));
        }
        if (this.stateValue === "stopping" || this.stateValue === "stopped")
            return;
        this.lastExitValue = exit;
        // an engine that never became ready failed its start: the rejection above is handled by start()
        // (first start: the server does not come up) or by the restart loop
        if (!wasReady)
            return;
        this.log.error("engine lost", { pid: child.pid, code, signal, reason: exit.reason });
        this.stateValue = "restarting";
        this.infoValue = null;
        this.listener.onLost(exit);
        this.scheduleRestart(this.backoff.afterLoss(monoMs() - this.readyAt));
    }

    private scheduleRestart(delay: number): void {
        this.restartsValue++;
        this.log.info("engine restarting", { in_ms: delay, restarts: this.restartsValue });
        this.restartTimer = setTimeout(() => {
            this.restartTimer = null;
            if (this.stateValue !== "restarting")
                return;
            this.stateValue = "starting";
            this.respawn().catch((err: unknown) => {
                const message = (err as Error).message;
                this.log.error("engine restart failed", { error: message });
                if (this.stateValue === "starting") {
                    this.stateValue = "restarting";
                    this.lastStartErrorValue = { message, at: new Date().toISOString() };
                    this.listener.onRestartFailed?.(message);
                    this.scheduleRestart(this.backoff.afterFailedStart());
                }
            });
        }, delay);
    }

    /**
     * A restart: the model file is checked first (no native code), so that a file deleted, truncated or
     * replaced by something that is not a model while the server ran gives a clear reason instead of an
     * engine that dies loading it.
     */
    private async respawn(): Promise<EngineModelInfo> {
        const file = this.settings!.modelPath;
        const inspection = await inspectModelFile(file);
        if (!inspection.valid)
            throw new EngineStartError("MODEL_FILE_INVALID", `the model file ${file} cannot be loaded: ${inspection.error}`);
        if (this.stateValue !== "starting")
            throw new EngineStartError("ENGINE_STOPPING", "the server is stopping");
        return await this.spawn();
    }

    /** Every few seconds: says once in the log when the serving model's file is deleted or changed. */
    private checkModelFile(): void {
        const now = monoMs();
        if (this.stateValue !== "ready" || now - this.fileCheckAt < 5000)
            return;
        this.fileCheckAt = now;
        const state = this.modelFileState();
        if (state === this.reportedFileState)
            return;
        this.reportedFileState = state;
        const file = this.settings?.modelPath;
        if (state === "missing")
            this.log.warn("the model file was deleted: the engine serves what it loaded, but cannot start again until the file is back", { file });
        else if (state === "changed")
            this.log.warn("the model file changed on disk: the engine maps its weights from the file, so a file modified in place changes (or crashes) "
                + "what it computes; the next engine start loads the new file", { file });
        else if (state === "ok")
            this.log.info("the model file is back as loaded", { file });
    }

    private checkStall(): void {
        if (this.opts.stallTimeoutMs <= 0 || this.stateValue !== "ready")
            return;
        const now = monoMs();
        // a hung event loop stops the heartbeats; a hung native evaluation (on a worker thread) stops
        // the job messages while the heartbeats go on
        const silentFor = Math.max(now - this.lastHeartbeatAt, this.listener.busy() ? now - this.lastJobActivityAt : 0);
        if (silentFor > this.opts.stallTimeoutMs) {
            this.log.error("engine hung, killing it", { silent_ms: Math.round(silentFor), pid: this.child?.pid });
            this.kill("stalled");
        }
    }
}
