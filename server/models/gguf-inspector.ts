// Reads GGUF headers in a worker thread with a heap limit and a time limit per file, one file at a time.
// A file that makes the reader run out of time or memory costs the worker (stopped, and started again for
// the next file) and is reported as `inspection_failed`; the server's own heap and event loop never see it.
import { Worker } from "node:worker_threads";
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
    /** the worker's old-generation heap limit, MiB */
    heapMb: number,
    /** a worker without work for this long exits (it is started again on demand), milliseconds */
    idleMs: number
};

/**
 * The defaults: real headers (tens of MB for the largest vocabularies) read in well under a second;
 * the reader keeps at most 16 MiB of metadata.
 */
export const defaultInspectorOptions: InspectorOptions = { timeoutMs: 15_000, heapMb: 96, idleMs: 10_000 };

type Job = { id: number, file: string, resolve: (report: HeaderReport) => void };

export class GgufInspector {
    private worker: Worker | null = null;
    private readonly queue: Job[] = [];
    private current: Job | null = null;
    private timer: NodeJS.Timeout | null = null;
    private idleTimer: NodeJS.Timeout | null = null;
    private nextId = 1;
    /** workers stopped for a time or memory limit, or that died (for the tests) */
    failures = 0;

    constructor(private readonly opts: InspectorOptions = defaultInspectorOptions) {}

    read(file: string): Promise<HeaderReport> {
        return new Promise((resolve) => {
            this.queue.push({ id: this.nextId++, file, resolve });
            this.pump();
        });
    }

    /** Stops the worker (a job in flight is reported as failed). */
    async close(): Promise<void> {
        const worker = this.worker;
        this.worker = null;
        this.failCurrent("the inspector was closed");
        for (const job of this.queue.splice(0))
            job.resolve({ ok: false, size: 0, mtimeMs: 0, code: "inspection_failed", message: "the inspector was closed" });
        await worker?.terminate();
    }

    private start(): Worker {
        const worker = new Worker(new URL("./gguf-inspect-worker.js", import.meta.url), {
            resourceLimits: { maxOldGenerationSizeMb: this.opts.heapMb, maxYoungGenerationSizeMb: 16, stackSizeMb: 4 }
        });
        // an idle worker must not keep the process alive
        worker.unref();
        worker.on("message", (msg: { id: number, report: HeaderReport }) => {
            if (worker !== this.worker || this.current?.id !== msg.id)
                return;
            const job = this.current;
            this.clearTimer();
            this.current = null;
            job.resolve(msg.report);
            this.pump();
        });
        worker.on("error", (err: Error & { code?: string }) => {
            if (worker !== this.worker)
                return;
            this.worker = null;
            this.failures++;
            this.failCurrent(err.code === "ERR_WORKER_OUT_OF_MEMORY"
                ? `reading the header needed more than the reader's ${this.opts.heapMb} MiB memory limit`
                : `the header reader failed: ${err.message}`);
            this.pump();
        });
        worker.on("exit", () => {
            if (worker !== this.worker)
                return;
            this.worker = null;
            this.failures++;
            this.failCurrent("the header reader exited");
            this.pump();
        });
        return worker;
    }

    private pump(): void {
        if (this.current != null)
            return;
        const job = this.queue.shift();
        if (job == null) {
            this.scheduleIdle();
            return;
        }
        if (this.idleTimer != null) {
            clearTimeout(this.idleTimer);
            this.idleTimer = null;
        }
        this.worker ??= this.start();
        this.current = job;
        this.timer = setTimeout(() => {
            const worker = this.worker;
            this.worker = null;
            this.failures++;
            void worker?.terminate();
            this.failCurrent(`reading the header took longer than ${this.opts.timeoutMs / 1000} s`);
            this.pump();
        }, this.opts.timeoutMs);
        this.timer.unref();
        // held while it works, so that a caller awaiting a header keeps the process alive
        this.worker.ref();
        this.worker.postMessage({ id: job.id, file: job.file } satisfies HeaderRequest);
    }

    private failCurrent(message: string): void {
        this.clearTimer();
        const job = this.current;
        this.current = null;
        job?.resolve({ ok: false, size: 0, mtimeMs: 0, code: "inspection_failed", message });
    }

    private clearTimer(): void {
        if (this.timer != null)
            clearTimeout(this.timer);
        this.timer = null;
    }

    private scheduleIdle(): void {
        if (this.worker == null || this.idleTimer != null)
            return;
        this.worker.unref();
        this.idleTimer = setTimeout(() => {
            this.idleTimer = null;
            const worker = this.worker;
            if (worker == null || this.current != null)
                return;
            this.worker = null;
            void worker.terminate();
        }, this.opts.idleMs);
        this.idleTimer.unref();
    }
}
