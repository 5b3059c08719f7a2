// Open connections, capped in total and per client address (`--max-connections`,
// `--max-connections-per-address`), so that one client cannot hold every socket and file descriptor the
// server has. HTTP and WebSocket share the count: a WebSocket is an HTTP connection that was upgraded.

export type ConnectionDecision = { ok: true, release: () => void } | { ok: false, message: string };

export class ConnectionLimiter {
    private open = 0;
    private readonly perAddress = new Map<string, number>();

    constructor(readonly maxTotal: number, readonly maxPerAddress: number) {}

    /** connections counted now (for tests) */
    get total(): number {
        return this.open;
    }

    /**
     * Counts one more connection, from `address` (null: counted in the total only, as a reverse proxy's
     * connections are). The release function is idempotent: call it when the connection closes.
     */
    acquire(address: string | null): ConnectionDecision {
        if (this.open >= this.maxTotal)
            return { ok: false, message: `the server has ${this.open} connections open (max-connections); retry later` };
        const mine = address == null ? 0 : this.perAddress.get(address) ?? 0;
        if (address != null && mine >= this.maxPerAddress)
            return { ok: false, message: `this address has ${mine} connections open (max-connections-per-address); close some or retry later` };
        this.open++;
        if (address != null)
            this.perAddress.set(address, mine + 1);
        let released = false;
        return {
            ok: true,
            release: () => {
                if (released)
                    return;
                released = true;
                this.open--;
                if (address == null)
                    return;
                const left = (this.perAddress.get(address) ?? 1) - 1;
                if (left <= 0)
                    this.perAddress.delete(address);
                else
                    this.perAddress.set(address, left);
            }
        };
    }
}
