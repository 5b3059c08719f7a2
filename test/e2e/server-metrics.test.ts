import assert from "node:assert/strict";
import { series } from "../helpers/metrics-text.js";
import { promtoolCheckMetrics, startPrometheus, type PrometheusHandle } from "../helpers/prometheus.js";
import { startServer, waitFor, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";
import type { WsFinalMessage } from "../../server/protocol/ws-messages.js";

describe("Prometheus metrics", function () {
    let server: ServerHandle;
    let prometheus: PrometheusHandle | null = null;
    let generated = 0;
    let prompted = 0;

    before(async function () {
        server = await startServer({ args: ["--sequences", "2"] });
        const client = await WsTestClient.connect(server.wsUrl);
        const runs = Array.from({ length: 5 }, (_, i) => client.chat({ prompt: `Once upon a time ${i}`, max_tokens: 20 + i * 7 }));
        for (const run of runs) {
            const final = await run.done as WsFinalMessage;
            assert.equal(final.type, "final");
            generated += final.usage.completion_tokens;
            prompted += final.usage.prompt_tokens;
        }
        await client.close();
    });
    after(async function () {
        await prometheus?.stop();
        await server?.stop();
    });

    it("exports the vLLM-shaped request metrics and the KV metrics under keepkv_", async function () {
        const text = await (await fetch(`${server.url}/metrics`)).text();
        const model = 'model_name="stories3M-q8_0.gguf"';
        assert.equal(series(text, "keepkv_generation_tokens_total", model), generated);
        assert.equal(series(text, "keepkv_prompt_tokens_total", model), prompted);
        assert.equal(series(text, "keepkv_num_requests_running"), 0);
        assert.equal(series(text, "keepkv_num_requests_waiting"), 0);
        const finished = (series(text, "keepkv_request_success_total", `${model},finished_reason="stop"`) ?? 0)
            + (series(text, "keepkv_request_success_total", `${model},finished_reason="length"`) ?? 0);
        assert.equal(finished, 5);
        assert.equal(series(text, "keepkv_time_to_first_token_seconds_count", model), 5);
        assert.equal(series(text, "keepkv_e2e_request_latency_seconds_count", model), 5);
        assert.equal(series(text, "keepkv_request_queue_time_seconds_count", model), 5);
        assert.ok((series(text, "keepkv_inter_token_latency_seconds_count", model) ?? 0) > 0);
        assert.equal(series(text, "keepkv_engine_up"), 1);
        assert.equal(series(text, "keepkv_engine_restarts_total"), 0);
        assert.ok((series(text, "keepkv_engine_resident_memory_bytes") ?? 0) > 1e6);
        // the server's defaults: KeepKV, each sequence's budget (and so its capacity) half the context
        assert.equal(series(text, "keepkv_kv_cells_capacity"), 2 * 1024);
        assert.ok(series(text, "keepkv_kv_cells_used") != null);
        assert.ok(series(text, "keepkv_kv_cache_usage_ratio") != null);
        assert.equal(series(text, "keepkv_sequence_kv_cells_capacity", 'sequence="1"'), 1024);
        for (const name of ["keepkv_kv_bytes_used", "keepkv_kv_bytes_allocated", "keepkv_kv_bytes_full"])
            assert.ok(series(text, name) != null, name);
        // short prompts: nothing compressed
        assert.match(text, /keepkv_kv_merges_total\{policy="keepkv"\} 0/);
        assert.match(text, /keepkv_kv_evictions_total\{policy="keepkv"\} 0/);
        assert.match(text, /keepkv_kv_compression_seconds_total\{policy="keepkv"\} 0/);
        assert.match(text, /keepkv_config_info\{model_name="stories3M-q8_0.gguf",policy="keepkv",variant="key",budget="0.5",.*cache_type_k="f16",cache_type_v="f16",context_size="2048",sequences="2".*\} 1/);
        assert.match(text, /^process_resident_memory_bytes /m);
        assert.ok((series(text, "keepkv_engine_ipc_latency_seconds_count") ?? 0) > 0);
        assert.doesNotMatch(text, /^[a-z_]+:/m, "no colons in metric names");
    });

    it("passes promtool check metrics", async function () {
        const text = await (await fetch(`${server.url}/metrics`)).text();
        const check = promtoolCheckMetrics(text);
        assert.equal(check.status, 0, check.output);
    });

    it("does not reset anything on scrape", async function () {
        const a = await (await fetch(`${server.url}/metrics`)).text();
        const b = await (await fetch(`${server.url}/metrics`)).text();
        const model = 'model_name="stories3M-q8_0.gguf"';
        assert.equal(series(b, "keepkv_generation_tokens_total", model), series(a, "keepkv_generation_tokens_total", model));
        assert.equal(series(b, "keepkv_e2e_request_latency_seconds_count", model), 5);
    });

    it("a real Prometheus scrapes it, and PromQL returns the tokens this test generated", async function () {
        prometheus = await startPrometheus([{ hostPort: `127.0.0.1:${server.port}` }]);
        const value = await waitFor("Prometheus to scrape the generation counter", async () => {
            const result = await prometheus!.query("sum(keepkv_generation_tokens_total)");
            return result.length > 0 ? Number(result[0]!.value[1]) : undefined;
        });
        assert.equal(value, generated);
        const up = await waitFor("the up series", async () => {
            const result = await prometheus!.query('up{job="keepkv0"}');
            return result.length > 0 ? Number(result[0]!.value[1]) : undefined;
        });
        assert.equal(up, 1);
        const info = await prometheus.query("keepkv_config_info");
        assert.equal(info[0]?.metric.policy, "keepkv");
    });
});

describe("KeepKV through the server", function () {
    let server: ServerHandle;
    before(async function () {
        server = await startServer({ args: ["--sequences", "2", "--context-size", "512", "--batch-size", "64", "--policy", "keepkv", "--budget", "128"] });
    });
    after(async function () {
        await server?.stop();
    });

    it("passes the policy and budget to the engine; finals, /v1/kv and the metrics carry the compression", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const messages = [{ role: "user" as const, content: "Once upon a time" }];
        const one = client.chat({ messages, max_tokens: 300, temperature: 0, conversation_id: "long" });
        const final = await one.done as WsFinalMessage;
        assert.equal(final.type, "final");
        const kv = final.kv!;
        assert.equal(kv.policy, "keepkv");
        assert.equal(kv.budget, 128);
        assert.ok(kv.logical_tokens > 128);
        assert.ok(kv.cells_used <= 128, `cells used ${kv.cells_used} within the budget`);
        assert.ok(kv.compressions > 0 && kv.merges + kv.evictions > 0);

        // the next turn of the conversation extends the compressed sequence instead of starting over
        const two = client.chat({
            messages: [...messages, { role: "assistant", content: one.text() }, { role: "user", content: "The end." }],
            max_tokens: 10, temperature: 0, conversation_id: "long"
        });
        const twoFinal = await two.done as WsFinalMessage;
        assert.equal(twoFinal.type, "final");
        assert.ok(twoFinal.usage.cached_tokens >= final.usage.prompt_tokens + final.usage.completion_tokens - 1,
            `cached ${twoFinal.usage.cached_tokens}`);
        await client.close();

        const live = await (await fetch(`${server.url}/v1/kv`)).json() as { policy: string, sequences: { budget: number }[] };
        assert.equal(live.policy, "keepkv");
        assert.equal(live.sequences[0]!.budget, 128);
        const text = await (await fetch(`${server.url}/metrics`)).text();
        assert.ok((series(text, "keepkv_kv_compressions_total", 'policy="keepkv"') ?? 0) >= kv.compressions);
        assert.ok((series(text, "keepkv_kv_merges_total", 'policy="keepkv"') ?? 0) > 0);
        assert.ok((series(text, "keepkv_kv_compression_seconds_total", 'policy="keepkv"') ?? 0) > 0);
        assert.equal(series(text, "keepkv_kv_cells_budget"), 256);
        assert.equal(series(text, "keepkv_sequence_kv_cells_budget", 'sequence="0"'), 128);
        assert.match(text, /keepkv_config_info\{[^}]*policy="keepkv",variant="key",budget="128"/);
        assert.equal(promtoolCheckMetrics(text).status, 0);
    });
});
