// The one mapping of the engine's KV statistics to the wire, for the final message of a request
// (WebSocket and OpenAI) and for GET /v1/kv: both show a sequence with the same names.
import type { KeepKvContextStats, KeepKvSequenceStats } from "./engine-ipc.js";
import type { KvResponse, KvSequenceEntry } from "./http-messages.js";
import type { WireKvStats, WireSequenceKv } from "./ws-messages.js";

export function wireSequenceKv(kv: KeepKvSequenceStats): WireSequenceKv {
    return {
        logical_tokens: kv.logicalTokens,
        cells_used: kv.cellsUsed,
        budget: kv.budget,
        capacity: kv.capacity,
        kv_bytes_used: kv.kvBytesUsed,
        merges: kv.merges,
        evictions: kv.evictions,
        compressions: kv.compressions,
        compression_seconds: kv.compressionSeconds,
        vote_max: kv.voteMax,
        vote_mean: kv.voteMean
    };
}

/** The `kv` of a final message: the statistics of the sequence the request ran on, or null. */
export function wireFinalKv(policy: string, kv: KeepKvSequenceStats | null, slot: number): WireKvStats | null {
    return kv == null ? null : { sequence: slot, policy, ...wireSequenceKv(kv) };
}

/** Who holds a sequence, as the caller may see it. */
export type SequenceHolder = Pick<KvSequenceEntry, "busy" | "held" | "conversation_id">;

/** GET /v1/kv: the context's statistics, and each sequence's with whoever holds it. */
export function wireKvResponse(context: KeepKvContextStats, rssBytes: number, holder: (sequence: number) => SequenceHolder): KvResponse {
    return {
        policy: context.policy,
        capacity_cells: context.capacityCells,
        kv_bytes_allocated: context.kvBytesAllocated,
        kv_bytes_used: context.kvBytesUsed,
        kv_bytes_full: context.kvBytesFull,
        merges: context.merges,
        evictions: context.evictions,
        compressions: context.compressions,
        compression_seconds: context.compressionSeconds,
        engine_rss_bytes: rssBytes,
        sequences: context.sequences.map((seq, slot) => ({ sequence: slot, ...holder(slot), ...wireSequenceKv(seq) }))
    };
}
