// The Grafana dashboard (deploy/grafana/dashboards/keepkv.json) against real data: two real servers
// (KeepKV on, with a budget, so the KV panels have data) get some traffic, a real Prometheus scrapes
// them, and every PromQL expression of the dashboard (its variables substituted as Grafana would) must
// name only metrics the servers export and return data. Grafana itself is not packaged for Debian and
// cannot run here; the test renders the panels with the data Prometheus returned in headless Chromium
// (docs/screenshots/grafana-preview.png), a preview of the layout and queries, not Grafana's own UI.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import { parse as parseYaml } from "yaml";
import { repoRoot } from "../../lib/paths.js";
import { openBrowser, saveScreenshot } from "../helpers/browser.js";
import { prometheusBinary, startPrometheus, type PrometheusHandle } from "../helpers/prometheus.js";
import { startServer, waitFor, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";
import type { WsFinalMessage } from "../../server/protocol/ws-messages.js";

const dashboardFile = path.join(repoRoot, "deploy", "grafana", "dashboards", "keepkv.json");

type Target = { expr: string, legendFormat?: string, refId: string, datasource?: { type: string, uid: string }, instant?: boolean, format?: string };
type Panel = {
    id: number, type: string, title: string, description?: string,
    gridPos: { x: number, y: number, w: number, h: number },
    datasource?: { type: string, uid: string },
    fieldConfig?: { defaults?: { unit?: string } },
    targets?: Target[]
};
type Variable = { name: string, type: string, query: string | { query: string }, includeAll?: boolean, multi?: boolean, allValue?: string, datasource?: { uid: string } };
type Dashboard = { uid: string, title: string, panels: Panel[], templating: { list: Variable[] }, schemaVersion: number };

const promqlWords = new Set([
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min", "clamp_max", "abs",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "vector", "scalar", "time", "label_replace", "absent", "sum_over_time", "avg_over_time", "max_over_time"
]);

/** The metric names an expression selects (strings, label matchers, ranges and groupings removed). */
export function metricNames(expr: string): string[] {
    const bare = expr
        .replace(/"(?:[^"\\]|\\.)*"/g, "\"\"")
        .replace(/\{[^}]*\}/g, " ")
        .replace(/\[[^\]]*\]/g, " ")
        .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
    return [...new Set([...bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)].map((m) => m[0]).filter((w) => !promqlWords.has(w)))];
}

/** Grafana's variables as the test substitutes them: all instances and models, a fixed rate window. */
function substitute(expr: string, rateInterval: string): string {
    return expr
        .replaceAll("$__rate_interval", rateInterval)
        .replaceAll("$__interval", "15s")
        .replaceAll("$__range", "5m")
        .replaceAll("$instance", ".*")
        .replaceAll("$model_name", ".*");
}

function exportedNames(exposition: string): Set<string> {
    return new Set(exposition.split("\n").filter((l) => l !== "" && !l.startsWith("#")).map((l) => /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(l)![0]));
}

function dataPanels(dashboard: Dashboard): Panel[] {
    return dashboard.panels.filter((p) => p.type !== "row");
}

function legendOf(format: string | undefined, labels: Record<string, string>): string {
    if (format == null || format === "" || format === "__auto")
        return Object.entries(labels).filter(([k]) => k !== "__name__").map(([k, v]) => `${k}=${v}`).join(", ") || "value";
    return format.replace(/\{\{\s*(\w+)\s*\}\}/g, (_m, name: string) => labels[name] ?? "");
}

describe("Grafana dashboard JSON", function () {
    const dashboard = JSON.parse(fs.readFileSync(dashboardFile, "utf8")) as Dashboard;

    it("parses, with datasource, replica and model variables as Grafana users expect", function () {
        assert.equal(dashboard.uid, "keepkv");
        assert.ok(dashboard.schemaVersion >= 36);
        const vars = new Map(dashboard.templating.list.map((v) => [v.name, v]));
        assert.equal(vars.get("datasource")?.type, "datasource");
        assert.equal(vars.get("datasource")?.query, "prometheus");
        for (const name of ["instance", "model_name"]) {
            const v = vars.get(name);
            assert.equal(v?.type, "query", name);
            assert.equal(v?.datasource?.uid, "${datasource}");
            assert.equal(v?.includeAll, true);
            assert.equal(v?.multi, true);
            assert.equal(v?.allValue, ".*");
            const query = typeof v!.query === "string" ? v!.query : v!.query.query;
            assert.match(query, new RegExp(`^label_values\\(keepkv_config_info.*, ${name}\\)$`));
        }
    });

    it("every panel queries the ${datasource} variable, filters by replica, and the panels do not overlap", function () {
        const ids = new Set<number>();
        const occupied = new Set<string>();
        for (const panel of dashboard.panels) {
            assert.ok(!ids.has(panel.id), `panel id ${panel.id} is unique`);
            ids.add(panel.id);
            const { x, y, w, h } = panel.gridPos;
            assert.ok(x >= 0 && w > 0 && x + w <= 24, `${panel.title} fits the 24-column grid`);
            for (let i = x; i < x + w; i++)
                for (let j = y; j < y + h; j++) {
                    assert.ok(!occupied.has(`${i},${j}`), `${panel.title} overlaps another panel at ${i},${j}`);
                    occupied.add(`${i},${j}`);
                }
            if (panel.type === "row")
                continue;
            assert.equal(panel.datasource?.uid, "${datasource}", panel.title);
            assert.ok((panel.targets ?? []).length > 0, `${panel.title} has queries`);
            for (const t of panel.targets!) {
                assert.equal(t.datasource?.uid, "${datasource}", `${panel.title} ${t.refId}`);
                for (const selector of t.expr.match(/keepkv_\w+(\{[^}]*\})?/g) ?? [])
                    assert.match(selector, /instance=~"\$instance"/, `${panel.title}: ${selector} follows the Replica variable`);
            }
        }
    });

    it("has the panels the issue asks for", function () {
        const exprs = dataPanels(dashboard).flatMap((p) => p.targets!.map((t) => t.expr)).join("\n");
        for (const needle of [
            /rate\(keepkv_generation_tokens_total/, /rate\(keepkv_prompt_tokens_total/,
            /histogram_quantile\(0\.99, sum by \(le\) \(rate\(keepkv_time_to_first_token_seconds_bucket/,
            /histogram_quantile\(0\.5, sum by \(le\) \(rate\(keepkv_inter_token_latency_seconds_bucket/,
            /keepkv_num_requests_running/, /keepkv_num_requests_waiting/, /by \(finished_reason\)/,
            /keepkv_kv_cache_usage_ratio/, /keepkv_kv_bytes_full\{[^}]*\}\) - sum\(keepkv_kv_bytes_allocated/,
            /rate\(keepkv_kv_merges_total/, /rate\(keepkv_kv_evictions_total/, /rate\(keepkv_kv_compression_seconds_total/,
            /sum by \(instance\) \(rate\(keepkv_generation_tokens_total/
        ])
            assert.match(exprs, needle);
        const units = new Map(dataPanels(dashboard).map((p) => [p.title, p.fieldConfig?.defaults?.unit]));
        assert.equal(units.get("Time to first token"), "s");
        assert.equal(units.get("K/V bytes and bytes saved"), "bytes");
        assert.equal(units.get("KV cache usage"), "percentunit");
    });

    it("the provisioning files parse and point Grafana at this dashboard", function () {
        const ds = parseYaml(fs.readFileSync(path.join(repoRoot, "deploy", "grafana", "provisioning", "datasources", "prometheus.yml"), "utf8")) as { apiVersion: number, datasources: { type: string, uid: string }[] };
        assert.equal(ds.apiVersion, 1);
        assert.equal(ds.datasources.length, 1);
        assert.equal(ds.datasources[0]!.type, "prometheus");
        const dashboards = parseYaml(fs.readFileSync(path.join(repoRoot, "deploy", "grafana", "provisioning", "dashboards", "keepkv.yml"), "utf8")) as { providers: { type: string }[] };
        assert.equal(dashboards.providers[0]!.type, "file");
    });
});

describe("Grafana dashboard queries against a real Prometheus scraping real servers", function () {
    const dashboard = JSON.parse(fs.readFileSync(dashboardFile, "utf8")) as Dashboard;
    let servers: ServerHandle[] = [];
    let prometheus: PrometheusHandle;
    let generated = 0;
    let trafficStart = 0;
    let trafficEnd = 0;

    async function traffic(server: ServerHandle, seed: number): Promise<void> {
        const client = await WsTestClient.connect(server.wsUrl);
        try {
            for (let round = 0; round < 3; round++) {
                const runs = [0, 1].map((i) => client.chat({
                    messages: [{ role: "user", content: `Once upon a time, a ${["fox", "girl", "duck", "king"][(seed + i + round) % 4]} went out.` }],
                    max_tokens: 100 + 60 * i + 40 * round, temperature: 0.8, seed: seed * 10 + round * 2 + i, conversation_id: `g${seed}-${i}`
                }));
                for (const run of runs) {
                    const final = await run.done;
                    assert.equal(final.type, "final");
                    generated += (final as WsFinalMessage).usage.completion_tokens;
                }
                await new Promise((r) => setTimeout(r, 1500));
            }
            // a cancel and a refused request, for the finish-reason and error panels
            const cancelled = client.chat({ prompt: "Once upon a time", max_tokens: 1500, temperature: 1 }, {
                onDelta: (d) => { if (d.seq === 0) client.send({ type: "cancel", id: cancelled.id }); }
            });
            const final = await cancelled.done as WsFinalMessage;
            assert.equal(final.finish_reason, "cancel");
            generated += final.usage.completion_tokens;
            const refused = client.chat({ prompt: "Once upon a time ".repeat(400), max_tokens: 10 });
            const error = await refused.done;
            // refused at once, or accepted and failed once tokenized: either way an error with its code
            assert.equal(error.type === "error" ? error.code : error.error?.code, "prompt_too_long");
        } finally {
            await client.close();
        }
    }

    before(async function () {
        if (!fs.existsSync(prometheusBinary))
            throw new Error(`${prometheusBinary} is missing: apt-get install prometheus (./scripts/setup.sh installs it)`);
        const args = ["--sequences", "2", "--policy", "keepkv", "--budget", "64", "--batch-size", "16", "--context-size", "1024"];
        servers = await Promise.all([startServer({ args }), startServer({ args })]);
        prometheus = await startPrometheus(servers.map((s) => ({ hostPort: `127.0.0.1:${s.port}` })));
        await waitFor("Prometheus to scrape both servers", async () => {
            const up = await prometheus.query("sum(up)");
            return up.length > 0 && Number(up[0]!.value[1]) === 2 ? true : undefined;
        });
        trafficStart = Date.now() / 1000;
        await Promise.all(servers.map((s, i) => traffic(s, i + 1)));
        trafficEnd = Date.now() / 1000;
        // Prometheus has the traffic once its counter shows every generated token
        await waitFor("Prometheus to scrape the traffic", async () => {
            const result = await prometheus.query("sum(keepkv_generation_tokens_total)");
            return result.length > 0 && Number(result[0]!.value[1]) === generated ? true : undefined;
        });
        // two more scrapes, so that rates over the last minute see the final values
        await new Promise((r) => setTimeout(r, 2500));
    });
    after(async function () {
        await prometheus?.stop();
        await Promise.all(servers.map((s) => s.stop()));
    });

    it("every expression names only metrics the live servers export", async function () {
        const exported = exportedNames(await (await fetch(`${servers[0]!.url}/metrics`)).text());
        const used = new Set<string>();
        for (const panel of dataPanels(dashboard))
            for (const t of panel.targets!) {
                const names = metricNames(t.expr);
                assert.ok(names.length > 0, `${panel.title} ${t.refId}: no metric in ${t.expr}`);
                for (const name of names) {
                    assert.ok(exported.has(name), `${panel.title} ${t.refId}: ${name} is not exported (${t.expr})`);
                    used.add(name);
                }
            }
        for (const v of dashboard.templating.list.filter((x) => x.type === "query")) {
            const query = typeof v.query === "string" ? v.query : v.query.query;
            assert.ok(exported.has(/^label_values\((\w+)/.exec(query)![1]!), query);
        }
        assert.ok(used.size >= 20, `${used.size} metrics used`);
    });

    it("every expression returns data from Prometheus after the traffic", async function () {
        const empty: string[] = [];
        for (const panel of dataPanels(dashboard))
            for (const t of panel.targets!) {
                const expr = substitute(t.expr, "1m");
                const result = await prometheus.query(expr);
                const finite = result.filter((r) => Number.isFinite(Number(r.value[1])));
                if (finite.length === 0)
                    empty.push(`${panel.title} ${t.refId}: ${expr} -> ${JSON.stringify(result)}`);
            }
        assert.deepEqual(empty, []);
    });

    it("the KV panels show KeepKV at work: merges, compression time, bytes saved, cells within the budget", async function () {
        const value = async (expr: string) => Number((await prometheus.query(substitute(expr, "1m")))[0]?.value[1]);
        assert.ok(await value('sum(rate(keepkv_kv_merges_total{instance=~"$instance"}[$__rate_interval]))') > 0);
        assert.ok(await value('sum(rate(keepkv_kv_compression_seconds_total{instance=~"$instance"}[$__rate_interval]))') > 0);
        const saved = await value('1 - sum(keepkv_kv_bytes_allocated{instance=~"$instance"}) / sum(keepkv_kv_bytes_full{instance=~"$instance"})');
        assert.ok(saved > 0.5 && saved < 1, `saved ${saved}`);
        const perSequence = await prometheus.query("keepkv_sequence_kv_cells_used");
        assert.equal(perSequence.length, 4, "2 replicas x 2 sequences");
        for (const s of perSequence)
            assert.ok(Number(s.value[1]) <= 64, `cells ${s.value[1]} within the budget`);
        const reasons = await prometheus.query(substitute('sum by (finished_reason) (increase(keepkv_request_success_total{instance=~"$instance"}[$__rate_interval]))', "1m"));
        assert.ok(reasons.some((r) => r.metric.finished_reason === "cancel" && Number(r.value[1]) > 0));
    });

    it("the Replica and Model variables list both servers and the model", async function () {
        const instances = await prometheus.query("group by (instance) (keepkv_config_info)");
        assert.deepEqual(instances.map((r) => r.metric.instance).sort(), servers.map((s) => `127.0.0.1:${s.port}`).sort());
        const models = await prometheus.query('group by (model_name) (keepkv_config_info{instance=~".*"})');
        assert.deepEqual(models.map((r) => r.metric.model_name), ["stories3M-q8_0.gguf"]);
        // one replica selected: per-replica panels show only it
        const one = await prometheus.query(`sum by (instance) (rate(keepkv_generation_tokens_total{instance=~"127.0.0.1:${servers[0]!.port}"}[1m]))`);
        assert.equal(one.length, 1);
    });

    it("renders a preview of the dashboard with the Prometheus data (docs/screenshots/grafana-preview.png)", async function () {
        const start = Math.floor(trafficStart) - 5;
        const end = Math.ceil(Math.max(trafficEnd, Date.now() / 1000));
        const panels: { type: string, title: string, gridPos: Panel["gridPos"], unit: string, series: { label: string, points: [number, number][] }[] }[] = [];
        for (const panel of dashboard.panels) {
            const series: { label: string, points: [number, number][] }[] = [];
            for (const t of panel.targets ?? []) {
                const expr = substitute(t.expr, "5s");
                if (t.instant === true) {
                    for (const r of await prometheus.query(expr))
                        series.push({ label: JSON.stringify(r.metric), points: [[Number(r.value[0]), Number(r.value[1])]] });
                    continue;
                }
                const res = await fetch(`${prometheus.url}/api/v1/query_range?query=${encodeURIComponent(expr)}&start=${start}&end=${end}&step=1`);
                const body = await res.json() as { status: string, data: { result: { metric: Record<string, string>, values: [number, string][] }[] } };
                assert.equal(body.status, "success", expr);
                for (const r of body.data.result)
                    series.push({ label: legendOf(t.legendFormat, r.metric), points: r.values.map(([ts, v]) => [ts * 1000, Number(v)]) });
            }
            panels.push({ type: panel.type, title: panel.title, gridPos: panel.gridPos, unit: panel.fieldConfig?.defaults?.unit ?? "short", series });
        }
        for (const p of panels.filter((x) => x.type !== "row"))
            assert.ok(p.series.some((s) => s.points.some(([, v]) => Number.isFinite(v))), `${p.title} has data over the traffic`);

        const server = http.createServer((req, res) => {
            if (req.url === "/chart.js") {
                res.writeHead(200, { "Content-Type": "text/javascript" });
                res.end(fs.readFileSync(path.join(repoRoot, "dashboard", "chart.js")));
            } else if (req.url === "/preview.js") {
                res.writeHead(200, { "Content-Type": "text/javascript" });
                res.end(previewScript);
            } else if (req.url === "/data.json") {
                res.writeHead(200, { "Content-Type": "application/json" });
                res.end(JSON.stringify({ title: dashboard.title, windowMs: (end - start) * 1000, panels }));
            } else {
                res.writeHead(200, { "Content-Type": "text/html" });
                res.end(previewHtml);
            }
        });
        await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
        const browser = await openBrowser({ width: 1600, height: 1000 });
        try {
            await browser.page.goto(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
            await browser.page.locator("body[data-rendered]").waitFor();
            assert.equal(await browser.page.locator(".panel").count(), panels.filter((p) => p.type !== "row").length);
            assert.deepEqual(browser.problems, []);
            await saveScreenshot(browser.page, "grafana-preview.png", { fullPage: true });
        } finally {
            await browser.close();
            server.close();
        }
    });
});

// ---- the preview page: panels on Grafana's 24-column grid, dark theme, charts from dashboard/chart.js

const previewHtml = `<!doctype html>
<html><head><meta charset="utf-8"><title>keepkv Grafana dashboard preview</title>
<style>
body { margin: 0; background: #111217; color: #ccccdc; font: 13px system-ui, sans-serif; }
header { padding: 10px 16px; border-bottom: 1px solid #2c2f36; display: flex; gap: 16px; align-items: baseline; }
header h1 { font-size: 16px; margin: 0; color: #fff; }
header .vars span { background: #22252b; border: 1px solid #2c2f36; padding: 3px 8px; margin-right: 6px; border-radius: 2px; }
header .note { margin-left: auto; color: #8e8e9a; font-size: 11px; }
.grid { display: grid; grid-template-columns: repeat(24, 1fr); grid-auto-rows: 30px; gap: 8px; padding: 8px 16px 16px; }
.row { color: #fff; font-weight: 600; font-size: 14px; align-self: end; }
.panel { background: #181b1f; border: 1px solid #2c2f36; border-radius: 2px; padding: 6px 8px; overflow: hidden; min-width: 0; }
.panel h3 { margin: 0 0 4px; font-size: 12px; font-weight: 500; color: #ccccdc; }
.stat { font-size: 30px; font-weight: 500; color: #73bf69; padding-top: 6px; }
table { border-collapse: collapse; font-size: 11px; width: 100%; }
td, th { border-bottom: 1px solid #2c2f36; padding: 3px 6px; text-align: left; }
.chart-svg .grid { stroke: #2c2f36; } .chart-svg .tick { fill: #8e8e9a; font-size: 10px; } .chart-svg .empty { fill: #8e8e9a; }
.legend { list-style: none; margin: 2px 0 0; padding: 0; display: flex; flex-wrap: wrap; gap: 2px 12px; font-size: 11px; }
.legend li { display: flex; align-items: center; gap: 4px; } .swatch { width: 14px; border-top: 3px solid; } .swatch.dashed { border-top-style: dashed; }
</style>
<script type="module" src="/preview.js"></script></head>
<body><header><h1>keepkv</h1><span class="vars"><span>Data source: Prometheus</span><span>Replica: All</span><span>Model: All</span></span>
<span class="note">Preview rendered by test/e2e/grafana.test.ts from deploy/grafana/dashboards/keepkv.json with data from a real Prometheus scraping two real servers (not Grafana's UI)</span></header>
<main class="grid" id="grid"></main></body></html>`;

const previewScript = `
import { LineChart, formatBytes, formatNumber } from "/chart.js";
const data = await (await fetch("/data.json")).json();
const fmt = (unit) => unit === "bytes" ? formatBytes
    : unit === "percentunit" ? (v) => (v * 100).toFixed(v < 0.1 ? 2 : 1) + "%"
    : unit === "s" ? (v) => v < 1 ? (v * 1000).toFixed(v < 0.01 ? 2 : 0) + " ms" : v.toFixed(2) + " s"
    : unit === "reqps" ? (v) => formatNumber(v) + " req/s" : formatNumber;
const grid = document.getElementById("grid");
for (const p of data.panels) {
    const el = document.createElement("section");
    el.style.gridColumn = (p.gridPos.x + 1) + " / span " + p.gridPos.w;
    el.style.gridRow = (p.gridPos.y + 1) + " / span " + p.gridPos.h;
    grid.append(el);
    if (p.type === "row") { el.className = "row"; el.textContent = p.title; continue; }
    el.className = "panel";
    const h = document.createElement("h3"); h.textContent = p.title; el.append(h);
    const f = fmt(p.unit);
    if (p.type === "stat") {
        const s = document.createElement("div"); s.className = "stat";
        const last = p.series[0]?.points.filter(([, v]) => Number.isFinite(v)).at(-1);
        s.textContent = last == null ? "No data" : f(last[1]);
        el.append(s);
    } else if (p.type === "table") {
        const rows = p.series.map((s) => JSON.parse(s.label));
        const cols = ["instance", "model_name", "policy", "budget", "variant", "context_size", "sequences", "cache_type_k", "keepkv_version"];
        const t = document.createElement("table");
        t.innerHTML = "<tr>" + cols.map((c) => "<th>" + c + "</th>").join("") + "</tr>";
        for (const r of rows) { const tr = document.createElement("tr"); for (const c of cols) { const td = document.createElement("td"); td.textContent = r[c] ?? ""; tr.append(td); } t.append(tr); }
        el.append(t);
    } else {
        const box = document.createElement("div"); el.append(box);
        const chart = new LineChart(box, { format: f, windowMs: data.windowMs, height: p.gridPos.h * 38 - 70 });
        p.series.forEach((s, i) => { for (const [t, v] of s.points) chart.add("s" + i, t, v, s.label); });
        chart.render();
    }
}
requestAnimationFrame(() => requestAnimationFrame(() => document.body.dataset.rendered = "1"));
`;
