// Which request or conversation holds each sequence of the engine's context.
//
// Eviction rule for idle conversations: when a request of a conversation ends, its sequence stays
// reserved for that conversation (its KV cache is kept) until either
//   - the conversation has been idle for `conversation-idle` seconds, or
//   - a new request needs a sequence and none is free: the least recently used idle conversation loses
//     its sequence first.
// A conversation that lost its sequence still works: its next request evaluates the whole history again.
//
// Conversations belong to a principal (the caller's key name): a conversation is the pair (principal,
// id), so the same id named by two principals is two conversations. A sequence also remembers whose
// tokens its cache holds (`owner`, kept after the conversation leaves it): a request of another
// principal gets it with `clearCache`, so that its cached_tokens can never measure a prefix of somebody
// else's history.

export type SlotState = {
    index: number,
    /** internal id of the request running on it, or null */
    request: number | null,
    /** id of the conversation (of `owner`) that holds it, or null */
    conversation: string | null,
    /** the principal whose tokens its cache holds, or null (an empty cache) */
    owner: string | null,
    /** monotonic ms of the end of its last request */
    lastUsed: number
};

export type Acquired = {
    slot: number,
    reused: boolean,
    evicted: string | null,
    /** the cache holds another principal's tokens: the engine must empty it before this request */
    clearCache: boolean
};

export class SlotPool {
    private slots: SlotState[] = [];

    constructor(size: number) {
        this.reset(size);
    }

    /** Forgets everything (a new engine, or a new model). */
    reset(size: number): void {
        this.slots = Array.from({ length: size }, (_, index) => ({ index, request: null, conversation: null, owner: null, lastUsed: 0 }));
    }

    get size(): number {
        return this.slots.length;
    }

    get busy(): number {
        return this.slots.filter((s) => s.request != null).length;
    }

    /** Sequences a new request could get now (free ones, and idle conversations that can be evicted). */
    get available(): number {
        return this.slots.filter((s) => s.request == null).length;
    }

    snapshot(): readonly SlotState[] {
        return this.slots.map((s) => ({ ...s }));
    }

    /** Whether the principal's conversation has a request running. */
    conversationRunning(principal: string, conversation: string): boolean {
        return this.slots.some((s) => s.owner === principal && s.conversation === conversation && s.request != null);
    }

    acquire(request: number, principal: string, conversation: string | null): Acquired | null {
        if (conversation != null) {
            const own = this.slots.find((s) => s.owner === principal && s.conversation === conversation);
            if (own != null && own.request == null) {
                own.request = request;
                return { slot: own.index, reused: true, evicted: null, clearCache: false };
            }
        }
        const free = this.slots.find((s) => s.request == null && s.conversation == null);
        const victim = free ?? this.slots
            .filter((s) => s.request == null)
            .sort((a, b) => a.lastUsed - b.lastUsed)[0];
        if (victim == null)
            return null;
        const evicted = victim.conversation;
        const clearCache = victim.owner != null && victim.owner !== principal;
        victim.request = request;
        victim.conversation = conversation;
        victim.owner = principal;
        return { slot: victim.index, reused: false, evicted, clearCache };
    }

    release(slot: number, now: number, keepConversation: boolean): void {
        const state = this.slots[slot];
        if (state == null)
            return;
        state.request = null;
        state.lastUsed = now;
        if (!keepConversation)
            state.conversation = null;
    }

    /** Frees the sequences of conversations idle for longer than `idleMs`; returns their slots. */
    expire(now: number, idleMs: number): number[] {
        const freed: number[] = [];
        for (const s of this.slots) {
            if (s.request == null && s.conversation != null && now - s.lastUsed >= idleMs) {
                s.conversation = null;
                freed.push(s.index);
            }
        }
        return freed;
    }
}
