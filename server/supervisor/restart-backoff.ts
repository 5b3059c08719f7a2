// How long the supervisor waits before it starts the engine again: doubling with every restart up to a
// ceiling, and back to the first delay once an engine has served for a while (a crash after a minute of
// good service is not part of a crash loop). A failed restart attempt never resets it: the engine that
// served long ago is not the one failing now. No timers and no clock: the supervisor says what happened.

export type BackoffPolicy = {
    initialMs: number,
    maxMs: number,
    /** an engine that was ready for longer than this resets the backoff */
    stableAfterMs: number
};

export class RestartBackoff {
    private nextMs: number;

    constructor(private readonly policy: BackoffPolicy) {
        this.nextMs = policy.initialMs;
    }

    /** The delay before restarting an engine that was lost after serving for `servedMs`. */
    afterLoss(servedMs: number): number {
        if (servedMs > this.policy.stableAfterMs)
            this.nextMs = this.policy.initialMs;
        return this.take();
    }

    /** The delay before the next attempt after a restart attempt failed (the engine never served). */
    afterFailedStart(): number {
        return this.take();
    }

    private take(): number {
        const delay = this.nextMs;
        this.nextMs = Math.min(this.nextMs * 2, this.policy.maxMs);
        return delay;
    }
}
