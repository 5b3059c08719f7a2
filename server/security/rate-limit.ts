// Per-client request rate limit (`--rate-limit`): a token bucket per client address. A client may send
// `perMinute` requests at once, then one every 60/perMinute seconds. Shared by the WebSocket and HTTP
// APIs, so that a client cannot get around it by switching between them.

export type RateDecision = { ok: true } | { ok: false, retryAfterS: number };

type Bucket = { tokens: number, at: number };

export class RateLimiter {
    private readonly buckets = new Map<string, Bucket>();
    private readonly perMs: number;

    /**
     * @param perMinute requests per minute per client; 0 disables the limit
     * @param maxClients clients remembered at most (a flood of distinct addresses cannot grow memory
     *   without bound: when the table is full, clients whose bucket has refilled are forgotten first,
     *   then the oldest)
     */
    constructor(readonly perMinute: number, private readonly maxClients = 100_000) {
        this.perMs = perMinute / 60_000;
    }

    get enabled(): boolean {
        return this.perMinute > 0;
    }

    /** clients currently remembered (for tests) */
    get size(): number {
        return this.buckets.size;
    }

    /** Takes one request from the client's bucket. */
    take(client: string, now = Date.now()): RateDecision {
        if (!this.enabled)
            return { ok: true };
        let bucket = this.buckets.get(client);
        if (bucket == null) {
            if (this.buckets.size >= this.maxClients)
                this.sweep(now);
            bucket = { tokens: this.perMinute, at: now };
            this.buckets.set(client, bucket);
        } else {
            bucket.tokens = Math.min(this.perMinute, bucket.tokens + (now - bucket.at) * this.perMs);
            bucket.at = now;
        }
        if (bucket.tokens >= 1) {
            bucket.tokens -= 1;
            return { ok: true };
        }
        return { ok: false, retryAfterS: Math.max(1, Math.ceil((1 - bucket.tokens) / this.perMs / 1000)) };
    }

    private sweep(now: number): void {
        for (const [client, bucket] of this.buckets)
            if (bucket.tokens + (now - bucket.at) * this.perMs >= this.perMinute)
                this.buckets.delete(client);
        // still full: forget the oldest (insertion order) until a tenth is free
        if (this.buckets.size >= this.maxClients) {
            let drop = this.buckets.size - Math.floor(this.maxClients * 0.9);
            for (const client of this.buckets.keys()) {
                if (drop-- <= 0)
                    break;
                this.buckets.delete(client);
            }
        }
    }
}
