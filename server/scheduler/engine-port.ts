// The contract between the scheduler and the engine's supervisor, in both directions: the scheduler
// drives an EnginePort (jobs, cancels, releases) and hears back through an EngineListener. The
// supervisor implements the port with a child process; the unit tests implement it with a fake, so the
// scheduler's queue and slot logic runs without a model.
import type { EngineModelInfo, EngineStatsSnapshot, FromEngine, ToEngine } from "../protocol/engine-ipc.js";
import type { EngineState } from "../protocol/http-messages.js";

export type { EngineState };

export type EngineExit = {
    code: number | null,
    signal: string | null,
    /** crashed, stalled (killed by the watchdog), or init_failed */
    reason: string,
    at: string,
    /** the last lines the engine wrote to stderr (a native assert lands here) */
    stderrTail: string[]
};

/** What the scheduler tells the engine: the rest of ToEngine belongs to the supervisor and the model switch. */
export type JobCommand = Extract<ToEngine, { t: "generate" | "cancel" | "release" }>;

export interface EnginePort {
    /** only a "ready" engine takes jobs */
    readonly state: EngineState;
    /** false when the engine cannot take the message now (not running, or not ready) */
    send(message: JobCommand): boolean;
}

export interface EngineListener {
    /** a message about a job (started, tokens, done) */
    onJobMessage(message: Extract<FromEngine, { job: number }>, receivedAt: number): void;
    /** the engine serves (first start, after a restart, or after a model switch) */
    onReady(info: EngineModelInfo, stats: EngineStatsSnapshot): void;
    /** the engine died or was killed; every job it held is lost */
    onLost(exit: EngineExit): void;
    onStats(stats: EngineStatsSnapshot): void;
    /** whether jobs are running (the watchdog only expects messages then) */
    busy(): boolean;
    /** a restart attempt failed (the model file went missing or bad, or the engine died loading it); another follows */
    onRestartFailed?(message: string): void;
    /** a conversation state was saved, restored, missed, refused or removed */
    onStateEvent?(event: Extract<FromEngine, { t: "state" }>): void;
}
