// The slot pool: which request or conversation holds each sequence, eviction of idle conversations
// (least recently used first), and whose tokens a sequence's cache holds.
import assert from "node:assert/strict";
import { SlotPool } from "../../../server/scheduler/slot-pool.js";

describe("SlotPool", function () {
    it("hands out free sequences in order and refuses when every one runs a request", function () {
        const pool = new SlotPool(2);
        assert.deepEqual(pool.acquire(1, "alice", null), { slot: 0, reused: false, evicted: null, clearCache: false });
        assert.deepEqual(pool.acquire(2, "alice", null), { slot: 1, reused: false, evicted: null, clearCache: false });
        assert.equal(pool.acquire(3, "alice", null), null);
        assert.equal(pool.busy, 2);
        assert.equal(pool.available, 0);
        pool.release(0, 10, false);
        assert.equal(pool.available, 1);
        assert.equal(pool.acquire(3, "alice", null)?.slot, 0);
    });

    it("gives a conversation back its own sequence, reused, and keeps it reserved while idle", function () {
        const pool = new SlotPool(2);
        assert.equal(pool.acquire(1, "alice", "c1")?.slot, 0);
        assert.ok(pool.conversationRunning("alice", "c1"));
        pool.release(0, 10, true);
        assert.ok(!pool.conversationRunning("alice", "c1"));
        assert.equal(pool.available, 2, "an idle conversation's sequence counts as available: it can be evicted");
        assert.equal(pool.acquire(2, "bob", null)?.slot, 1, "a free sequence is taken before an idle conversation's");
        assert.deepEqual(pool.acquire(3, "alice", "c1"), { slot: 0, reused: true, evicted: null, clearCache: false });
    });

    it("evicts the least recently used idle conversation when no sequence is free", function () {
        const pool = new SlotPool(3);
        pool.acquire(1, "alice", "old");
        pool.acquire(2, "alice", "newer");
        pool.acquire(3, "alice", null);
        pool.release(1, 20, true);
        pool.release(0, 10, true);
        assert.deepEqual(pool.acquire(4, "alice", "third"), { slot: 0, reused: false, evicted: "old", clearCache: false });
        assert.deepEqual(pool.acquire(5, "alice", null), { slot: 1, reused: false, evicted: "newer", clearCache: false });
        assert.equal(pool.snapshot()[1]!.conversation, null);
    });

    it("treats the same conversation id of two principals as two conversations", function () {
        const pool = new SlotPool(2);
        pool.acquire(1, "alice", "c");
        pool.release(0, 10, true);
        assert.ok(!pool.conversationRunning("bob", "c"));
        const bob = pool.acquire(2, "bob", "c");
        assert.equal(bob?.reused, false);
        assert.equal(bob?.slot, 1);
        assert.ok(pool.conversationRunning("bob", "c"));
        assert.ok(!pool.conversationRunning("alice", "c"));
    });

    it("asks for the cache to be cleared when a sequence last held another principal's tokens", function () {
        const pool = new SlotPool(1);
        pool.acquire(1, "alice", "c");
        pool.release(0, 10, false);
        assert.equal(pool.snapshot()[0]!.owner, "alice", "the owner outlives the conversation: the cache still holds its tokens");
        assert.equal(pool.acquire(2, "alice", null)?.clearCache, false);
        pool.release(0, 20, false);
        assert.deepEqual(pool.acquire(3, "bob", null), { slot: 0, reused: false, evicted: null, clearCache: true });
        assert.equal(pool.snapshot()[0]!.owner, "bob");
    });

    it("expires conversations idle for at least idleMs, and only those", function () {
        const pool = new SlotPool(3);
        pool.acquire(1, "alice", "stale");
        pool.acquire(2, "alice", "fresh");
        pool.acquire(3, "alice", "running");
        pool.release(0, 100, true);
        pool.release(1, 900, true);
        assert.deepEqual(pool.expire(1100, 1000), [0]);
        assert.deepEqual(pool.expire(1100, 1000), [], "an expired conversation is not reported twice");
        assert.deepEqual(pool.snapshot().map((s) => s.conversation), [null, "fresh", "running"]);
        assert.deepEqual(pool.expire(5000, 1000), [1], "a running request's conversation never expires");
    });

    it("forgets everything on reset, at the new size", function () {
        const pool = new SlotPool(1);
        pool.acquire(1, "alice", "c");
        pool.reset(3);
        assert.equal(pool.size, 3);
        assert.deepEqual(pool.snapshot()[0], { index: 0, request: null, conversation: null, owner: null, lastUsed: 0 });
        assert.equal(pool.acquire(2, "bob", null)?.clearCache, false);
    });

    it("snapshots are copies", function () {
        const pool = new SlotPool(1);
        const before = pool.snapshot();
        pool.acquire(1, "alice", "c");
        assert.equal(before[0]!.request, null);
        assert.equal(pool.snapshot()[0]!.request, 1);
    });

    it("ignores the release of a sequence it does not have", function () {
        const pool = new SlotPool(1);
        pool.release(5, 10, false);
        assert.equal(pool.size, 1);
    });
});
