// The load test's report (bench/loadtest.ts): its shape, which --json prints, and the text form.
import type { Tally } from "./loadtest-clients.js";

export type LoadTestReport = {
    clients: number,
    durationS: number,
    seed: number,
    server: { url: string, started: boolean, args: string[] | null },
    elapsedS: number,
    requests: number,
    completed: number,
    cancelled: number,
    disconnected: number,
    /** unprovoked failures: every error, refusal or unexpected end the load test did not cause itself */
    failed: number,
    failedByCode: Record<string, number>,
    failureSamples: string[],
    cancelRaces: number,
    byApi: Tally["byApi"],
    ttftMs: { p50: number | null, p95: number | null, p99: number | null, samples: number },
    itlMs: { p50: number | null, p95: number | null, p99: number | null, samples: number },
    tokensPerSecond: number,
    serverSide: {
        finished: Record<string, number>,
        errors: Record<string, number>,
        generationTokens: number,
        generationTokensPerSecond: number,
        compressions: number,
        merges: number,
        evictions: number,
        engineRestarts: number,
        clientsDropped: number
    },
    memory: {
        warmupS: number,
        serverPeakRssBytes: number | null,
        enginePeakRssBytes: number | null,
        peakRssBytes: number | null,
        /** RSS slope after warm-up, MB per minute (least squares over one sample a second) */
        serverSlopeMBPerMin: number | null,
        engineSlopeMBPerMin: number | null,
        totalSlopeMBPerMin: number | null,
        /** RSS at the end of warm-up and at the end of the load, MB */
        totalAfterWarmupMB: number | null,
        totalAtEndMB: number | null,
        samples: number,
        /** one sample every 10 s: seconds, server and engine RSS in MB */
        series: [number, number | null, number | null][]
    },
    /** sequences not back in the pool after the load: busy ones, and ones a fresh request could not get */
    leakedSequences: number,
    sequences: number,
    serverExit: { code: number | null, signal: string | null, seconds: number } | null,
    serverCrashed: boolean,
    ok: boolean
};

function mb(bytes: number | null): string {
    return bytes == null ? "?" : `${(bytes / 2 ** 20).toFixed(1)} MB`;
}

export function formatReport(r: LoadTestReport): string {
    const lines = [
        `keepkv load test: ${r.clients} clients, ${r.durationS} s (ran ${r.elapsedS} s), seed ${r.seed}`,
        `server: ${r.server.started ? `started with ${r.server.args!.join(" ")}` : r.server.url}`,
        "",
        `requests            ${r.requests}`,
        `  completed         ${r.completed}`,
        `  cancelled         ${r.cancelled}   (by a cancel message; ${r.cancelRaces} more finished before their cancel arrived)`,
        `  disconnected      ${r.disconnected}   (the client hung up mid-request on purpose)`,
        `  failed            ${r.failed}   ${Object.entries(r.failedByCode).map(([c, n]) => `${c}: ${n}`).join(", ")}`,
        ...r.failureSamples.map((s) => `      ${s}`),
        `time to first token p50 ${r.ttftMs.p50} ms, p95 ${r.ttftMs.p95} ms, p99 ${r.ttftMs.p99} ms (${r.ttftMs.samples} requests)`,
        `inter-token latency p50 ${r.itlMs.p50} ms, p95 ${r.itlMs.p95} ms, p99 ${r.itlMs.p99} ms (${r.itlMs.samples} gaps)`,
        `throughput          ${r.tokensPerSecond} tokens/s received (server: ${r.serverSide.generationTokensPerSecond} tokens/s generated)`,
        `server finished     ${Object.entries(r.serverSide.finished).map(([k, v]) => `${k} ${v}`).join(", ")}`,
        `server errors       ${Object.entries(r.serverSide.errors).map(([k, v]) => `${k} ${v}`).join(", ") || "none"}`,
        `KV compression      ${r.serverSide.compressions} compressions, ${r.serverSide.merges} cells merged, ${r.serverSide.evictions} evicted`,
        `peak RSS            server ${mb(r.memory.serverPeakRssBytes)}, engine ${mb(r.memory.enginePeakRssBytes)}, together ${mb(r.memory.peakRssBytes)}`,
        `RSS after warm-up   ${r.memory.totalAfterWarmupMB} MB -> ${r.memory.totalAtEndMB} MB; slope server ${r.memory.serverSlopeMBPerMin}, engine ${r.memory.engineSlopeMBPerMin}, together ${r.memory.totalSlopeMBPerMin} MB/min (after ${r.memory.warmupS} s)`,
        `sequences           ${r.sequences - r.leakedSequences} of ${r.sequences} back in the pool${r.leakedSequences > 0 ? ` (${r.leakedSequences} LEAKED)` : ""}`,
        `engine restarts     ${r.serverSide.engineRestarts}`,
        `server exit         ${r.serverExit == null ? "not started here" : `code ${r.serverExit.code} after SIGTERM in ${r.serverExit.seconds.toFixed(1)} s`}`,
        "",
        r.ok ? "OK: no unprovoked failures, every sequence returned" : "NOT OK"
    ];
    return lines.join("\n") + "\n";
}
