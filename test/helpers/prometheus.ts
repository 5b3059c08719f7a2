// A real Prometheus (Debian's /usr/bin/prometheus) on a free loopback port, scraping given targets, and
// promtool. Shared by the metrics, dashboard and load tests.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { freePort } from "./free-port.js";

export const prometheusBinary = process.env.KEEPKV_PROMETHEUS ?? "/usr/bin/prometheus";
export const promtoolBinary = process.env.KEEPKV_PROMTOOL ?? "/usr/bin/promtool";

export type PrometheusHandle = {
    url: string,
    dir: string,
    /** an instant PromQL query; the `result` array of the answer */
    query(promql: string): Promise<{ metric: Record<string, string>, value: [number, string] }[]>,
    stop(): Promise<void>
};

export type ScrapeTarget = { hostPort: string, bearerToken?: string };

/** `promtool check metrics` on an exposition: its exit status and output. */
export function promtoolCheckMetrics(exposition: string): { status: number | null, output: string } {
    const result = spawnSync(promtoolBinary, ["check", "metrics"], { input: exposition, encoding: "utf8" });
    return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

export async function startPrometheus(targets: ScrapeTarget[], opts: { scrapeIntervalS?: number } = {}): Promise<PrometheusHandle> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-prom-"));
    const interval = opts.scrapeIntervalS ?? 1;
    const jobs = targets.map((t, i) => [
        `  - job_name: keepkv${i}`,
        `    scrape_interval: ${interval}s`,
        `    scrape_timeout: ${interval}s`,
        ...(t.bearerToken != null ? ["    authorization:", "      type: Bearer", `      credentials: ${JSON.stringify(t.bearerToken)}`] : []),
        "    static_configs:",
        `      - targets: [${JSON.stringify(t.hostPort)}]`
    ].join("\n"));
    fs.writeFileSync(path.join(dir, "prometheus.yml"), `global:\n  scrape_interval: ${interval}s\nscrape_configs:\n${jobs.join("\n")}\n`);
    const port = await freePort();
    const proc: ChildProcess = spawn(prometheusBinary, [
        `--config.file=${path.join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${path.join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--log.level=warn"
    ], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    proc.stdout!.on("data", (d: Buffer) => { output += d.toString(); });
    proc.stderr!.on("data", (d: Buffer) => { output += d.toString(); });
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 60_000;
    for (;;) {
        if (proc.exitCode != null)
            throw new Error(`prometheus exited (${proc.exitCode}):\n${output}`);
        try {
            if ((await fetch(`${url}/-/ready`)).status === 200)
                break;
        } catch {
            // not up yet
        }
        if (Date.now() > deadline)
            throw new Error(`prometheus was not ready within 60 s:\n${output}`);
        await new Promise((r) => setTimeout(r, 200));
    }
    return {
        url,
        dir,
        async query(promql) {
            const res = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`);
            const body = await res.json() as { status: string, data?: { result: { metric: Record<string, string>, value: [number, string] }[] }, error?: string };
            if (body.status !== "success")
                throw new Error(`PromQL ${promql}: ${body.error}`);
            return body.data!.result;
        },
        async stop() {
            proc.kill("SIGTERM");
            await exited;
            fs.rmSync(dir, { recursive: true, force: true });
        }
    };
}
