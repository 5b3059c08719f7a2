// Per-client request rate limit (`--rate-limit`): a token bucket per client address and one per API key
// (named by its principal). A client may send `perMinute` requests at once, then one every 60/perMinute
// seconds. Shared by the WebSocket and HTTP APIs, so that a client cannot get around it by switching between them. A request
// with a missing or wrong token takes from its address's bucket too, and an address whose bucket is
// empty has its tokens refused unchecked, so that guessing keys is as slow as the limit.
export type RateDecision = { ok: true } | { ok: false, retryAfterS: number };

type Bucket = { tokens: number, at: number };

/** The bucket of a client address. */
export function addressBucket(address: string): string {
    return `address:${address}`;
}

/**
 * The bucket of an accepted API key: its principal's name (security/api-keys.ts), so that every address
 * using one key shares one allowance. Names cannot hold ":", so no name collides with an address bucket.
 */
export function principalBucket(name: string): string {
    return `key:${name}`;
}

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

    /**
     * Takes one request from each of the buckets (a client's address and its key), or from none when any
     * of them is empty: a refused request costs nothing.
     */
    takeAll(clients: readonly string[], now = Date.now()): RateDecision {
        if (!this.enabled)
            return { ok: true };
        const retryAfterS = Math.max(0, ...clients.map((client) => this.retryAfterS(client, now)));
        if (retryAfterS > 0)
            return { ok: false, retryAfterS };
        for (const client of clients)
            this.take(client, now);
        return { ok: true };
    }

    /** Seconds until the client's bucket holds one request again (0: it does now). */
    retryAfterS(client: string, now = Date.now()): number {
        const tokens = this.tokensOf(client, now);
        return tokens >= 1 || !this.enabled ? 0 : Math.max(1, Math.ceil((1 - tokens) / this.perMs / 1000));
    }

    /** Whether the client's bucket is empty now (takes nothing). */
    exhausted(client: string, now = Date.now()): boolean {
        return this.enabled && this.tokensOf(client, now) < 1;
    }

    private tokensOf(client: string, now: number): number {
        const bucket = this.buckets.get(client);
        return bucket == null ? this.perMinute : Math.min(this.perMinute, bucket.tokens + (now - bucket.at) * this.perMs);
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
