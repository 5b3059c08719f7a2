// The engine's KV statistics for `/metrics` and `/v1/kv`, read at most once per `maxAgeMs` however often
// they are asked for: a scraper or a dashboard polling in a loop would otherwise put a stats request in
// the engine's queue for every call, between the batches of real work. Readers that arrive while a read
// is in flight share it. A snapshot is read again early when its `version` changed (a request finished,
// the engine restarted), so that an answer after a request ended shows that request.

export class StatsCache<T> {
    private value: T | null = null;
    private at = -Infinity;
    private valueVersion = -1;
    private pending: Promise<T | null> | null = null;

    constructor(
        private readonly read: (timeoutMs: number) => Promise<T | null>,
        private readonly maxAgeMs: number,
        private readonly version: () => number,
        private readonly now: () => number = () => Date.now()
    ) {}

    async get(timeoutMs: number): Promise<T | null> {
        const version = this.version();
        if (this.value != null && this.valueVersion === version && this.now() - this.at < this.maxAgeMs)
            return this.value;
        if (this.pending != null)
            return await this.pending;
        this.pending = this.read(timeoutMs).then((value) => {
            if (value != null) {
                this.value = value;
                this.at = this.now();
                this.valueVersion = version;
            }
            return value;
        }).finally(() => {
            this.pending = null;
        });
        return await this.pending;
    }
}
