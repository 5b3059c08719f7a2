// The one mapping of the engine's KV statistics to the wire: a final's `kv` and GET /v1/kv name a
// sequence's numbers alike. Compared as JSON text, so that the order of the keys is checked too.
import assert from "node:assert/strict";
import type { KeepKvContextStats, KeepKvSequenceStats } from "../../../server/protocol/engine-ipc.js";
import { wireFinalKv, wireKvResponse } from "../../../server/protocol/kv-wire.js";

function sequence(sequenceId: number): KeepKvSequenceStats {
    return {
        sequenceId, logicalTokens: 100 + sequenceId, cellsUsed: 64, budget: null, capacity: 2048, kvBytesUsed: 4096, cellsRemoved: 36,
        merges: 30, evictions: 6, compressions: 3, compressionSeconds: 0.5, voteMax: 5, voteMean: 1.25
    };
}

const sequenceJson = (logical: number) => `"logical_tokens":${logical},"cells_used":64,"budget":null,"capacity":2048,"kv_bytes_used":4096,`
    + `"merges":30,"evictions":6,"compressions":3,"compression_seconds":0.5,"vote_max":5,"vote_mean":1.25`;

describe("KV statistics on the wire", function () {
    it("a final's kv: the request's sequence, the policy, then the sequence's statistics", function () {
        assert.equal(JSON.stringify(wireFinalKv("keepkv", sequence(1), 3)), `{"sequence":3,"policy":"keepkv",${sequenceJson(101)}}`);
        assert.equal(wireFinalKv("off", null, 0), null);
    });

    it("GET /v1/kv: the context's totals, and each sequence with whoever holds it", function () {
        const context: KeepKvContextStats = {
            policy: "evict", capacityCells: 4096, kvBytesAllocated: 8192, kvBytesUsed: 4096, kvBytesFull: 16384, keepKvBytes: 12,
            cellsRemoved: 72, merges: 60, evictions: 12, compressions: 6, compressionSeconds: 1, sequences: [sequence(0), sequence(1)]
        };
        const holders = [
            { busy: true, held: true, conversation_id: "conv_a" },
            { busy: false, held: false, conversation_id: null }
        ];
        const body = wireKvResponse(context, 1234, (slot) => holders[slot]!);
        assert.equal(JSON.stringify(body), `{"policy":"evict","capacity_cells":4096,"kv_bytes_allocated":8192,"kv_bytes_used":4096,`
            + `"kv_bytes_full":16384,"merges":60,"evictions":12,"compressions":6,"compression_seconds":1,"engine_rss_bytes":1234,"sequences":[`
            + `{"sequence":0,"busy":true,"held":true,"conversation_id":"conv_a",${sequenceJson(100)}},`
            + `{"sequence":1,"busy":false,"held":false,"conversation_id":null,${sequenceJson(101)}}]}`);
    });
});
