// How long the supervisor waits before it starts the engine again: doubling with every restart up to a
// ceiling, and back to the first delay once an engine has served for a while (a crash after a minute of
// good service is not part of a crash loop). No timers and no clock: the supervisor says what happened.

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

    /**
     * The delay before the next start. `now` and `readyAt` (when the engine last became ready; 0: never)
     * are on one monotonic clock.
     */
    delay(now: number, readyAt: number): number {
        if (readyAt > 0 && now - readyAt > this.policy.stableAfterMs)
            this.nextMs = this.policy.initialMs;
        const delay = this.nextMs;
        this.nextMs = Math.min(this.nextMs * 2, this.policy.maxMs);
        return delay;
    }
}
