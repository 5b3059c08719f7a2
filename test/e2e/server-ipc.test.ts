import assert from "node:assert/strict";
import type { WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { startServer, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";

type Histogram = { sum: number, count: number, buckets: [number, number][] };

function histogram(exposition: string, name: string, labels = ""): Histogram {
    const value = (line: string) => Number(line.slice(line.lastIndexOf(" ") + 1));
    const lines = exposition.split("\n");
    const find = (suffix: string) => lines.find((l) => l.startsWith(`${name}_${suffix}${labels === "" ? " " : `{${labels}} `}`));
    const buckets = lines.filter((l) => l.startsWith(`${name}_bucket{`) && l.includes(labels))
        .map((l): [number, number] => [Number(/le="([^"]+)"/.exec(l)![1]!.replace("+Inf", "Infinity")), value(l)]);
    return { sum: value(find("sum")!), count: value(find("count")!), buckets };
}

/** The smallest bucket bound holding the quantile q (an upper bound of it). */
function quantileBound(h: Histogram, q: number): number {
    const target = q * h.count;
    return h.buckets.find(([, c]) => c >= target)?.[0] ?? Infinity;
}

describe("engine process boundary", function () {
    let server: ServerHandle;
    before(async function () {
        server = await startServer({ args: ["--sequences", "1"] });
    });
    after(async function () {
        await server?.stop();
    });

    it("measures what streaming tokens across the process boundary costs (reported, not judged)", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        let tokens = 0;
        let engineSeconds = 0;
        for (let i = 0; i < 3; i++) {
            const final = await client.chat({ prompt: "Once upon a time", max_tokens: 1500, temperature: 0.8 }).done as WsFinalMessage;
            assert.equal(final.type, "final");
            tokens += final.usage.completion_tokens;
            engineSeconds += final.timings.generation_ms / 1000;
        }
        await client.close();
        const text = await (await fetch(`${server.url}/metrics`)).text();
        const ipc = histogram(text, "keepkv_engine_ipc_latency_seconds");
        const itl = histogram(text, "keepkv_inter_token_latency_seconds", 'model_name="stories3M-q8_0.gguf"');
        assert.ok(ipc.count > 0 && itl.count > 0);
        const ipcMeanUs = ipc.sum / ipc.count * 1e6;
        const itlMeanUs = itl.sum / itl.count * 1e6;
        const report = {
            tokens,
            ipc_messages: ipc.count,
            ipc_mean_us: Math.round(ipcMeanUs),
            ipc_p50_below_us: quantileBound(ipc, 0.5) * 1e6,
            ipc_p99_below_us: quantileBound(ipc, 0.99) * 1e6,
            inter_token_mean_us: Math.round(itlMeanUs),
            // a message in flight overlaps the generation of the next token: the latency delays each token
            // by ipc_mean, it does not slow the stream down unless it exceeds the inter-token time
            latency_over_inter_token: Number((ipcMeanUs / itlMeanUs).toFixed(3)),
            tokens_per_second_seen_by_server: Math.round(tokens / engineSeconds)
        };
        process.stdout.write(`      IPC: ${JSON.stringify(report)}\n`);
    });
});
