// The load test, CI-sized: `npm run loadtest -- --clients 12 --duration 40 --json` against a real server
// under a KeepKV budget (the full run is 32 clients for 5 minutes; see docs/reliability.md). Timing is
// reported, never judged; correctness is: no failure the load test did not provoke, every sequence back
// in the pool, no engine restart, a clean exit on SIGTERM, the server's own counts agreeing with the
// clients', and memory flat after warm-up (a generous bound on the RSS slope).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { loadTestEntry } from "../../bench/loadtest.js";
import { loadTestDefaults, parseLoadTestArgs } from "../../bench/lib/loadtest-options.js";
import type { LoadTestReport } from "../../bench/lib/loadtest-report.js";
import { percentile, slope } from "../../bench/lib/loadtest-stats.js";
import { repoRoot } from "../../lib/paths.js";
import { seededRandom } from "../../lib/seeded-random.js";

const clients = Number(process.env.KEEPKV_LOADTEST_CLIENTS ?? 12);
const duration = Number(process.env.KEEPKV_LOADTEST_DURATION ?? 40);

function runLoadTest(args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
    return new Promise((resolve) => {
        const proc = spawn(process.execPath, [loadTestEntry, ...args], { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "";
        let stderr = "";
        proc.stdout.setEncoding("utf8").on("data", (d: string) => { stdout += d; });
        proc.stderr.setEncoding("utf8").on("data", (d: string) => { stderr += d; });
        proc.on("exit", (code) => resolve({ code, stdout, stderr }));
    });
}

describe("load test", function () {
    it("its statistics: seeded choices, percentiles, least-squares slope", function () {
        const a = seededRandom(42);
        const b = seededRandom(42);
        assert.deepEqual([a(), a(), a()], [b(), b(), b()]);
        assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50), 5);
        assert.equal(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95), 10);
        assert.equal(percentile([], 50), null);
        assert.equal(slope([{ x: 0, y: 1 }, { x: 1, y: 3 }, { x: 2, y: 5 }]), 2);
    });

    it("its options: the defaults, every option, repeated server arguments, and a clear error for an unknown option or a bad value", function () {
        assert.deepEqual(parseLoadTestArgs([]), loadTestDefaults);
        const opts = parseLoadTestArgs([
            "--clients", "12", "--duration", "25", "--warmup", "3", "--drain", "9", "--seed", "7", "--json", "--http-share", "2",
            "--url", "http://127.0.0.1:9/", "--api-key", "k", "--model", "/m.gguf", "--sequences", "4", "--context-size", "512",
            "--policy", "off", "--budget", "none", "--batch-size", "8", "--threads", "2", "--max-tokens", "40",
            "--server-arg", "--log-level", "--server-arg", "info", "--server-arg=--metrics"
        ]);
        assert.deepEqual(opts, {
            clients: 12, durationS: 25, warmupS: 3, drainS: 9, seed: 7, json: true, httpShare: 1, url: "http://127.0.0.1:9/",
            apiKey: "k", model: "/m.gguf", sequences: 4, contextSize: 512, policy: "off", budget: "none", batchSize: 8,
            threads: 2, maxTokens: 40, serverArgs: ["--log-level", "info", "--metrics"]
        });
        assert.throws(() => parseLoadTestArgs(["--client", "3"]), /unknown option --client\n[\s\S]*Usage: npm run -s loadtest/);
        assert.throws(() => parseLoadTestArgs(["--clients", "0"]), /--clients needs a number >= 1, got 0/);
        assert.throws(() => parseLoadTestArgs(["--duration", "soon"]), /--duration needs a number >= 1, got soon/);
        assert.throws(() => parseLoadTestArgs(["--seed"]), /--seed/);
        assert.throws(() => parseLoadTestArgs(["extra"]), /Unexpected argument 'extra'/);
    });

    it(`${clients} WebSocket and HTTP clients for ${duration} s under a KeepKV budget, with cancels and disconnects: no unprovoked failure, every sequence back`, async function () {
        const { code, stdout, stderr } = await runLoadTest(["--clients", String(clients), "--duration", String(duration), "--json", "--seed", "7"]);
        let report: LoadTestReport;
        try {
            report = JSON.parse(stdout.trim().split("\n").at(-1)!) as LoadTestReport;
        } catch {
            assert.fail(`no JSON report (exit ${code}):\n${stdout}\n${stderr}`);
        }
        const summary = JSON.stringify({ ...report, memory: { ...report.memory, series: undefined } }, null, 1);
        assert.equal(report.failed, 0, `unprovoked failures: ${JSON.stringify(report.failedByCode)} ${report.failureSamples.join(" | ")}`);
        assert.equal(report.leakedSequences, 0, summary);
        assert.equal(report.serverCrashed, false, summary);
        assert.deepEqual({ code: report.serverExit?.code, signal: report.serverExit?.signal }, { code: 0, signal: null }, "exit 0 on SIGTERM");
        assert.equal(report.serverSide.engineRestarts, 0);
        assert.equal(code, 0, "the load test exits 0 when all is well");

        // it did what it says: a mix of APIs and outcomes, under compression
        assert.ok(report.completed > 20, summary);
        assert.ok(report.cancelled > 0 && report.disconnected > 0, summary);
        for (const api of ["ws", "http_sse", "http"])
            assert.ok((report.byApi[api]?.completed ?? 0) > 0, `no ${api} request completed: ${JSON.stringify(report.byApi)}`);
        assert.ok(report.serverSide.compressions > 0 && report.serverSide.merges > 0, "the KV budget compressed");
        assert.ok(report.ttftMs.p50 != null && report.itlMs.p99 != null && report.tokensPerSecond > 0);

        // the server's counts agree with the clients': nothing failed there either, and every request the
        // clients ended on purpose was cancelled there
        assert.equal(report.serverSide.finished.error, 0);
        assert.equal(report.serverSide.finished.shutdown, 0);
        assert.deepEqual(report.serverSide.errors, {}, "no request refused or failed on the server");
        const serverEnded = report.serverSide.finished.stop! + report.serverSide.finished.length! + report.serverSide.finished.cancel!;
        const clientEnded = report.completed + report.cancelled + report.disconnected;
        // (an HTTP client that hangs up before its request arrived leaves nothing to count)
        assert.ok(serverEnded <= clientEnded && serverEnded >= clientEnded - report.disconnected, `server ${serverEnded}, clients ${clientEnded}`);
        assert.ok(report.serverSide.finished.cancel! >= report.cancelled, "every cancel reached the server");

        // memory flat after warm-up: a generous bound on the slope of server + engine RSS
        assert.ok(report.memory.totalSlopeMBPerMin != null, summary);
        assert.ok(report.memory.totalSlopeMBPerMin! < 120, `RSS grows ${report.memory.totalSlopeMBPerMin} MB/min after warm-up`);
        assert.ok(report.memory.peakRssBytes! < 2 * 2 ** 30, "peak RSS of server and engine under 2 GiB");
    });

    it("refuses a non-loopback target", async function () {
        const { code, stderr } = await runLoadTest(["--url", "http://192.0.2.1:8080", "--duration", "1"]);
        assert.equal(code, 2);
        assert.match(stderr, /loopback/);
    });
});
