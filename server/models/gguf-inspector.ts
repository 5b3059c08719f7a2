// Reads GGUF headers in a child process with a heap limit and a time limit per file, one file at a time.
// A file that makes the reader run out of time or memory costs that process (killed, and started again for
// the next file) and is reported as `inspection_failed`; the server's own heap and event loop never see it.
// A process, not a worker thread: a worker's resourceLimits are best-effort, and some allocations past
// them abort the whole process (nodejs/node#47224; measured here with one large array filled in a worker
// with a 64 MiB limit), and a --max-old-space-size given to the server overrides them (nodejs/node#43991).
import { fork, type ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import type { ModelFileErrorCode } from "../protocol/model-file-errors.js";
import type { GgufHeader } from "./gguf-header.js";

export type HeaderRequest = { id: number, file: string };

/** What the worker found: the header, or why there is none (with the file's size and time when it could stat it). */
export type HeaderReport =
    | { ok: true, size: number, mtimeMs: number, header: GgufHeader }
    | { ok: false, size: number, mtimeMs: number, code: ModelFileErrorCode, message: string };

export type InspectorOptions = {
    /** per file, milliseconds */
    timeoutMs: number,
    /** the reader process's heap limit (--max-old-space-size), MiB */
    heapMb: number,
    /** a reader process without work for this long exits (it is started again on demand), milliseconds */
    idleMs: number
};

/**
 * The defaults: real headers (tens of MB for the largest vocabularies) read in well under a second;
 * the reader keeps at most 16 MiB of metadata (its worst case, measured: 60 000 keys of 250 bytes, fits 96 MiB
 * of heap and not 24).
 */
export const defaultInspectorOptions: InspectorOptions = { timeoutMs: 15_000, heapMb: 128, idleMs: 10_000 };

/** Starting the reader process: the same for every file, so not part of a file's time limit. */
const processStartTimeoutMs = 30_000;

type Job = { id: number, file: string, resolve: (report: HeaderReport) => void };


export class GgufInspector {
    private child: ChildProcess | null = null;
    /** the child has loaded its code: a job's time limit runs from its post, not from the child's start */
    private ready = false;
    /** the end of the child's stderr: says whether it died of its heap limit */
    private stderrTail = "";
    private readonly queue: Job[] = [];
    private current: Job | null = null;
    private timer: NodeJS.Timeout | null = null;
    private idleTimer: NodeJS.Timeout | null = null;
    private nextId = 1;
    /** reader processes killed for a time limit, or that died */
    failures = 0;

    constructor(private readonly opts: InspectorOptions = defaultInspectorOptions) {}

    read(file: string): Promise<HeaderReport> {
        return new Promise((resolve) => {
            this.queue.push({ id: this.nextId++, file, resolve });
            this.pump();
        });
    }

    /** Stops the reader process; jobs in flight or waiting are reported as failed. */
    close(): void {
        const child = this.child;
        this.child = null;
        this.ready = false;
        this.clearTimer();
        if (this.idleTimer != null)
            clearTimeout(this.idleTimer);
        this.idleTimer = null;
        for (const job of [...(this.current != null ? [this.current] : []), ...this.queue.splice(0)])
            job.resolve(failed("the inspector was closed"));
        this.current = null;
        child?.kill("SIGKILL");
    }

    private start(): void {
        const child = fork(new URL("./gguf-reader-process.js", import.meta.url), [], {
            execArgv: [`--max-old-space-size=${this.opts.heapMb}`, "--max-semi-space-size=8"],
            serialization: "advanced",
            stdio: ["ignore", "ignore", "pipe", "ipc"]
        });
        this.child = child;
        this.ready = false;
        this.stderrTail = "";
        child.stderr!.setEncoding("utf8").on("data", (d: string) => {
            if (child === this.child)
                this.stderrTail = (this.stderrTail + d).slice(-4096);
        });
        child.on("message", (msg: { ready: true } | { id: number, report: HeaderReport }) => {
            if (child !== this.child)
                return;
            if ("ready" in msg) {
                this.clearTimer();
                this.ready = true;
            } else if (this.current?.id === msg.id) {
                const job = this.current;
                this.clearTimer();
                this.current = null;
                job.resolve(msg.report);
            }
            this.pump();
        });
        child.on("error", (err) => {
            if (child === this.child)
                this.lost(`the header reader failed: ${err.message}`);
        });
        // "close", not "exit": the end of stderr (the heap-limit message) has arrived by then
        child.on("close", (code, signal) => {
            if (child !== this.child)
                return;
            this.lost(/heap out of memory|Allocation failed/.test(this.stderrTail)
                ? `reading the header needed more than the reader's ${this.opts.heapMb} MiB memory limit`
                : `the header reader exited (${signal ?? `code ${code}`})`);
        });
        // a process that does not start in time costs the first job waiting for it
        this.startTimer(processStartTimeoutMs, "the header reader did not start");
    }

    private pump(): void {
        if (this.current != null)
            return;
        if (this.queue.length === 0) {
            this.scheduleIdle();
            return;
        }
        if (this.idleTimer != null) {
            clearTimeout(this.idleTimer);
            this.idleTimer = null;
        }
        if (this.child == null)
            this.start();
        // held while there is work, so that a caller awaiting a header keeps the process alive
        this.hold(true);
        if (!this.ready)
            return;
        const job = this.queue.shift()!;
        this.current = job;
        this.startTimer(this.opts.timeoutMs, `reading the header took longer than ${this.opts.timeoutMs / 1000} s`);
        this.child!.send({ id: job.id, file: job.file } satisfies HeaderRequest);
    }

    private hold(held: boolean): void {
        const child = this.child;
        if (child == null)
            return;
        const stderr = child.stderr as Socket | null;
        if (held) {
            child.ref();
            child.channel?.ref();
            stderr?.ref();
        } else {
            child.unref();
            child.channel?.unref();
            stderr?.unref();
        }
    }

    private startTimer(ms: number, message: string): void {
        this.clearTimer();
        this.timer = setTimeout(() => {
            const child = this.child;
            this.lost(message);
            child?.kill("SIGKILL");
        }, ms);
    }

    /** The reader process is gone (time or memory limit, a crash): its job fails, the next one gets a new process. */
    private lost(message: string): void {
        this.child = null;
        this.ready = false;
        this.failures++;
        this.clearTimer();
        const job = this.current ?? this.queue.shift();
        this.current = null;
        job?.resolve(failed(message));
        this.pump();
    }

    private clearTimer(): void {
        if (this.timer != null)
            clearTimeout(this.timer);
        this.timer = null;
    }

    private scheduleIdle(): void {
        if (this.child == null || this.idleTimer != null)
            return;
        // an idle reader must not keep the server's process alive
        this.hold(false);
        this.idleTimer = setTimeout(() => {
            this.idleTimer = null;
            const child = this.child;
            if (child == null || this.current != null || this.queue.length > 0)
                return;
            this.child = null;
            this.ready = false;
            child.disconnect();
        }, this.opts.idleMs);
        this.idleTimer.unref();
    }
}

function failed(message: string): HeaderReport {
    return { ok: false, size: 0, mtimeMs: 0, code: "inspection_failed", message };
}
