// `npm run loadtest -- [--clients N] [--duration SECONDS] [--json] [options]`: drives the real server on
// loopback with many concurrent WebSocket and OpenAI-style HTTP clients, with random cancels and abrupt
// disconnects, under a KeepKV budget, and reports what happened: requests completed, cancelled and failed
// (by code), time to first token and inter-token latency percentiles, aggregate tokens/s, peak memory and
// its slope after warm-up, and whether every sequence went back to the pool.
//
// Bounded: clients stop starting requests after --duration seconds; what is in flight then gets at most
// --drain seconds to end. Loopback only: it starts its own server on 127.0.0.1 (or drives --url, which
// must be a loopback address). Seeded (--seed): the same seed makes the same choices (the timing of a
// real server still varies).
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { seededRandom } from "../lib/seeded-random.js";
import { httpClient, promptSource, Tally, wsClient, type LoadCtx } from "./lib/loadtest-clients.js";
import { LoadTestHelp, parseLoadTestArgs, type LoadTestOptions } from "./lib/loadtest-options.js";
import { formatReport, type LoadTestReport } from "./lib/loadtest-report.js";
import { metric, percentile, round, slope } from "./lib/loadtest-stats.js";
import { startServer, waitForHealth, type ServerHandle } from "./lib/server-process.js";
import { WsClient } from "./lib/ws-client.js";
import { errorMessage } from "../lib/error-message.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function rssOfPid(pid: number | null | undefined): { rss: number, hwm: number } | null {
    if (pid == null)
        return null;
    try {
        const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
        const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN) * 1024;
        return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
    } catch {
        return null;
    }
}


/** The server under load: one this run started (bench/lib/server-process.ts), or the one at --url. */
type ServerUnderTest = {
    base: string,
    handle: ServerHandle | null,
    output(): string,
    stop(): Promise<{ code: number | null, signal: string | null, seconds: number } | null>
};

/** The server's arguments for the load test's options (it listens on a free loopback port). */
export function loadTestServerArgs(opts: LoadTestOptions): string[] {
    return [
        "--host", "127.0.0.1", "--model", opts.model,
        "--threads", String(opts.threads), "--sequences", String(opts.sequences), "--context-size", String(opts.contextSize),
        "--policy", opts.policy, "--budget", opts.budget, "--batch-size", String(opts.batchSize),
        "--max-tokens", String(opts.maxTokens), "--max-queue", String(Math.max(64, opts.clients * 4)), "--queue-timeout", "300",
        "--rate-limit", "0", "--log-level", "warn", ...opts.serverArgs
    ];
}

async function startOwnServer(opts: LoadTestOptions): Promise<ServerUnderTest> {
    const handle = await startServer({
        args: loadTestServerArgs(opts),
        env: opts.apiKey != null ? { KEEPKV_API_KEY: opts.apiKey } : {},
        // readiness is awaited by the run, so that a server that never gets ready is stopped and reported
        waitReady: false,
        timeoutMs: 180_000
    });
    return {
        base: handle.url,
        handle,
        output: handle.output,
        async stop() {
            const t0 = performance.now();
            const exit = await handle.stop();
            return { ...exit, seconds: (performance.now() - t0) / 1000 };
        }
    };
}

async function scrape(base: string, headers: Record<string, string>): Promise<string> {
    return await (await fetch(`${base}/metrics`, { headers })).text();
}

export async function runLoadTest(opts: LoadTestOptions, progress: (line: string) => void = () => undefined): Promise<LoadTestReport> {
    const headers: Record<string, string> = opts.apiKey != null ? { Authorization: `Bearer ${opts.apiKey}` } : {};
    const server = opts.url != null
        ? { base: opts.url.replace(/\/+$/, ""), handle: null, output: () => "", stop: async () => null } satisfies ServerUnderTest
        : await startOwnServer(opts);
    // an exit before the load test stops the server is a crash
    let exitedEarly = false;
    let stopping = false;
    void server.handle?.exited.then(() => { if (!stopping) exitedEarly = true; });
    try {
        await waitForHealth({ url: server.base, output: server.output, exited: server.handle?.exited }, 180_000);
        const health = await (await fetch(`${server.base}/health`, { headers })).json() as { engine: { pid: number } };
        const kv = await (await fetch(`${server.base}/v1/kv`, { headers })).json() as { sequences: unknown[] };
        const sequences = kv.sequences.length;
        progress(`server ${server.base} ready (${sequences} sequences, engine pid ${health.engine.pid}); ${opts.clients} clients for ${opts.durationS} s`);
        const before = await scrape(server.base, headers);

        const tally = new Tally();
        const t0 = performance.now();
        const ctx: LoadCtx = {
            base: server.base,
            wsUrl: server.base.replace(/^http/, "ws") + "/v1/ws",
            headers,
            deadline: t0 + opts.durationS * 1000,
            tally,
            maxTokens: opts.maxTokens
        };
        const rng = seededRandom(opts.seed);
        const prompts = promptSource(seededRandom(opts.seed + 7));

        // memory: one sample a second, from /proc for the server this run started, else from the API
        const warmupS = opts.warmupS > 0 ? opts.warmupS : Math.max(10, opts.durationS / 5);
        const samples: { t: number, server: number | null, engine: number | null }[] = [];
        let peakServer = 0;
        let peakEngine = 0;
        let enginePid = health.engine.pid;
        let sampling = true;
        const sampler = (async () => {
            let lastScrape = 0;
            while (sampling) {
                const t = (performance.now() - t0) / 1000;
                let serverRss: number | null = null;
                let engineRss: number | null = null;
                try {
                    const h = await (await fetch(`${server.base}/health`, { headers })).json() as { engine: { pid: number, rss_bytes: number } };
                    enginePid = h.engine.pid ?? enginePid;
                    engineRss = rssOfPid(enginePid)?.rss ?? h.engine.rss_bytes;
                    if (server.handle != null)
                        serverRss = rssOfPid(server.handle.proc.pid)?.rss ?? null;
                    // like Prometheus would: scrape the metrics under load
                    if (serverRss == null || t - lastScrape >= 5) {
                        const text = await scrape(server.base, headers);
                        lastScrape = t;
                        serverRss ??= metric(text, "process_resident_memory_bytes");
                    }
                } catch {
                    // a sample lost; the next one counts
                }
                if (serverRss != null)
                    peakServer = Math.max(peakServer, serverRss);
                if (engineRss != null)
                    peakEngine = Math.max(peakEngine, engineRss);
                samples.push({ t, server: serverRss, engine: engineRss });
                await sleep(1000);
            }
        })();

        const ticker = setInterval(() => progress(`  ${Math.round((performance.now() - t0) / 1000)} s: ${tally.started} started, ${tally.completed} completed, ${tally.cancelled} cancelled, ${tally.disconnected} disconnected, ${tally.failed} failed`), 10_000);
        const clientRuns = Array.from({ length: opts.clients }, (_, i) => {
            const clientRng = seededRandom(Math.floor(rng() * 2 ** 31));
            const isHttp = opts.httpShare > 0 && (i + 1) % Math.max(1, Math.round(1 / opts.httpShare)) === 0;
            return isHttp ? httpClient(ctx, clientRng, prompts) : wsClient(ctx, clientRng, prompts, i);
        });
        // the duration, then at most --drain seconds for what is still in flight
        const drained = await Promise.race([
            Promise.all(clientRuns).then(() => true),
            sleep((opts.durationS + opts.drainS) * 1000).then(() => false)
        ]);
        clearInterval(ticker);
        const elapsedS = (performance.now() - t0) / 1000;
        if (!drained)
            tally.fail("all", "drain_timeout", `requests still in flight ${opts.drainS} s after the end`);
        sampling = false;
        await sampler;

        // every sequence back: nothing running or waiting, no slot busy, and a fresh request per sequence
        // starts at once
        let leaked = 0;
        let after = "";
        const settleDeadline = Date.now() + 30_000;
        for (;;) {
            const text = await scrape(server.base, headers);
            const slots = await (await fetch(`${server.base}/slots`, { headers })).json() as { is_processing: boolean }[];
            leaked = slots.filter((s) => s.is_processing).length;
            const running = metric(text, "keepkv_num_requests_running") + metric(text, "keepkv_num_requests_waiting");
            if ((leaked === 0 && running === 0) || Date.now() > settleDeadline) {
                leaked = Math.max(leaked, running);
                after = text;
                break;
            }
            await sleep(200);
        }
        // one request per sequence, a moment apart (each is placed before the next arrives): each must start
        // at once, and together they must reach every sequence. A request that ends early (an end of text at
        // temperature 1) frees its sequence for a later one of the round, so rounds repeat until every
        // sequence has been seen to start a request; a sequence that never came back is never free, and never seen
        const probe = await WsClient.connect(ctx.wsUrl, { headers, record: false });
        const seen = new Set<number>();
        let queued = 0;
        for (let round = 0; round < 5 && seen.size < sequences && queued === 0; round++) {
            const probes: Promise<{ immediate: boolean, sequence: number | null }>[] = [];
            for (let i = 0; i < sequences; i++) {
                probes.push(new Promise((resolve) => {
                    const id = `probe${round}-${i}`;
                    let immediate = false;
                    probe.route(id, (m) => {
                        if (m.type === "start")
                            immediate = m.queue_position === 0;
                        else if (m.type === "final")
                            resolve({ immediate, sequence: m.kv?.sequence ?? null });
                        else if (m.type === "error" || m.type === "closed")
                            resolve({ immediate: false, sequence: null });
                    });
                    probe.send({ type: "chat", id, prompt: "Once upon a time", max_tokens: Math.max(64, opts.maxTokens), temperature: 1 });
                }));
                await sleep(25);
            }
            for (const p of await Promise.all(probes)) {
                if (p.immediate && p.sequence != null)
                    seen.add(p.sequence);
                else
                    queued++;
            }
        }
        await probe.close();
        // with every sequence free, a request that waits means one did not come back
        leaked = Math.max(leaked, sequences - seen.size, queued > 0 ? 1 : 0);

        const diff = (name: string, labels = "") => metric(after, name, labels) - metric(before, name, labels);
        const finished: Record<string, number> = {};
        for (const reason of ["stop", "length", "cancel", "error", "shutdown"])
            finished[reason] = diff("keepkv_request_success_total", `finished_reason="${reason}"`);
        const errors: Record<string, number> = {};
        for (const line of after.split("\n")) {
            const match = /^keepkv_request_errors_total\{code="([^"]+)"\}/.exec(line);
            if (match != null) {
                const value = diff("keepkv_request_errors_total", `code="${match[1]}"`);
                if (value > 0)
                    errors[match[1]!] = value;
            }
        }
        const generationTokens = diff("keepkv_generation_tokens_total");

        // memory after warm-up
        const warm = samples.filter((s) => s.t >= warmupS && s.t <= opts.durationS);
        const mbPerMin = (key: "server" | "engine" | "total") => {
            const points = warm
                .map((s) => ({ x: s.t, y: key === "total" ? (s.server != null && s.engine != null ? s.server + s.engine : NaN) : s[key] ?? NaN }))
                .filter((p) => Number.isFinite(p.y));
            const perS = slope(points);
            return perS == null ? null : round(perS * 60 / 2 ** 20, 2);
        };
        const totalOf = (s: { server: number | null, engine: number | null } | undefined) =>
            s?.server != null && s.engine != null ? round((s.server + s.engine) / 2 ** 20) : null;
        const serverHwm = server.handle != null ? rssOfPid(server.handle.proc.pid)?.hwm ?? null : null;
        const engineHwm = rssOfPid(enginePid)?.hwm ?? null;
        const serverPeak = Math.max(peakServer, serverHwm ?? 0) || null;
        const enginePeak = Math.max(peakEngine, engineHwm ?? 0) || null;

        stopping = true;
        const stopped = await server.stop();
        const serverCrashed = exitedEarly || (opts.url == null && (stopped == null || stopped.code !== 0));
        const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
        const ttft = sorted(tally.ttftMs);
        const itl = sorted(tally.itlMs);
        const report: LoadTestReport = {
            clients: opts.clients,
            durationS: opts.durationS,
            seed: opts.seed,
            server: { url: server.base, started: opts.url == null, args: server.handle?.proc.spawnargs.slice(2) ?? null },
            elapsedS: round(elapsedS)!,
            requests: tally.started,
            completed: tally.completed,
            cancelled: tally.cancelled,
            disconnected: tally.disconnected,
            failed: tally.failed,
            failedByCode: tally.failedByCode,
            failureSamples: tally.failureSamples,
            cancelRaces: tally.cancelRaces,
            byApi: tally.byApi,
            ttftMs: { p50: round(percentile(ttft, 50)), p95: round(percentile(ttft, 95)), p99: round(percentile(ttft, 99)), samples: ttft.length },
            itlMs: { p50: round(percentile(itl, 50), 2), p95: round(percentile(itl, 95), 2), p99: round(percentile(itl, 99), 2), samples: itl.length },
            tokensPerSecond: round(tally.tokens / elapsedS)!,
            serverSide: {
                finished,
                errors,
                generationTokens,
                generationTokensPerSecond: round(generationTokens / elapsedS)!,
                compressions: diff("keepkv_kv_compressions_total"),
                merges: round(diff("keepkv_kv_merges_total"), 0)!,
                evictions: round(diff("keepkv_kv_evictions_total"), 0)!,
                engineRestarts: diff("keepkv_engine_restarts_total"),
                clientsDropped: diff("keepkv_clients_dropped_total")
            },
            memory: {
                warmupS,
                serverPeakRssBytes: serverPeak,
                enginePeakRssBytes: enginePeak,
                peakRssBytes: serverPeak != null && enginePeak != null ? serverPeak + enginePeak : null,
                serverSlopeMBPerMin: mbPerMin("server"),
                engineSlopeMBPerMin: mbPerMin("engine"),
                totalSlopeMBPerMin: mbPerMin("total"),
                totalAfterWarmupMB: totalOf(warm[0]),
                totalAtEndMB: totalOf(warm[warm.length - 1]),
                samples: samples.length,
                series: samples.filter((_, i) => i % 10 === 0).map((s) => [Math.round(s.t),
                    s.server == null ? null : round(s.server / 2 ** 20), s.engine == null ? null : round(s.engine / 2 ** 20)])
            },
            leakedSequences: leaked,
            sequences,
            serverExit: stopped,
            serverCrashed,
            ok: false
        };
        report.ok = report.failed === 0 && report.leakedSequences === 0 && !report.serverCrashed && report.serverSide.engineRestarts === 0;
        return report;
    } catch (err) {
        const stopped = await server.stop().catch(() => null);
        throw new Error(`${(err as Error).message}${stopped != null ? ` (server exit ${JSON.stringify(stopped)})` : ""}\n${server.output().slice(-4000)}`);
    }
}

async function main(): Promise<void> {
    let opts: LoadTestOptions;
    try {
        opts = parseLoadTestArgs(process.argv.slice(2));
    } catch (err) {
        if (err instanceof LoadTestHelp) {
            process.stdout.write(err.message);
            process.exit(0);
        }
        process.stderr.write(`loadtest: ${(err as Error).message}\n`);
        process.exit(2);
    }
    const report = await runLoadTest(opts, (line) => { if (!opts.json) process.stderr.write(line + "\n"); });
    process.stdout.write(opts.json ? JSON.stringify(report) + "\n" : formatReport(report));
    process.exit(report.ok ? 0 : 1);
}

if (process.argv[1] != null && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
    main().catch((err: unknown) => {
        process.stderr.write(`loadtest: ${errorMessage(err)}\n`);
        process.exit(1);
    });
}

export const loadTestEntry = fileURLToPath(import.meta.url);
