// The configurable limits, each enforced by the real server with its documented error: message size,
// prompt tokens, max tokens, requests in flight per socket, requests per minute per client, stop strings.
import assert from "node:assert/strict";
import type { WsErrorMessage, WsFinalMessage } from "../server/protocol/ws-messages.js";
import { RateLimiter } from "../server/security/rate-limit.js";
import { httpJson, startServer, type ServerHandle } from "./helpers/server-process.js";
import { WsTestClient } from "./helpers/ws-client.js";

describe("limits", function () {
    let server: ServerHandle;
    before(async function () {
        server = await startServer({
            args: ["--sequences", "2", "--max-message-bytes", "8192", "--max-prompt-tokens", "40", "--max-tokens", "6",
                "--max-requests-per-socket", "2", "--rate-limit", "20"]
        });
    });
    after(async function () {
        await server?.stop();
    });

    it("message size: a WebSocket frame over max-message-bytes closes with 1009; an HTTP body over it gets 413 message_too_large", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        assert.equal(client.hello.max_message_bytes, 8192);
        client.send({ type: "chat", id: "big", prompt: "x".repeat(9000) });
        assert.equal((await client.closed).code, 1009);
        const http = await httpJson(`${server.url}/v1/completions`, { body: { prompt: "x".repeat(9000) } });
        assert.equal(http.status, 413);
        assert.equal(http.body.error.code, "message_too_large");
        // just under the limit is fine (and then the prompt limit speaks)
        const ok = await WsTestClient.connect(server.wsUrl);
        const final = await ok.chat({ prompt: "a ".repeat(3500), max_tokens: 2 }).done as WsFinalMessage;
        assert.equal(final.error?.code, "prompt_too_long");
        await ok.close();
    });

    it("prompt tokens: a prompt over max-prompt-tokens fails with prompt_too_long, on both APIs", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const long = "Once upon a time there was a dog. ".repeat(6);
        const final = await client.chat({ prompt: long, max_tokens: 2 }).done as WsFinalMessage;
        assert.equal(final.finish_reason, "error");
        assert.equal(final.error?.code, "prompt_too_long");
        assert.match(final.error!.message, /at most 40 fit/);
        const short = await client.chat({ prompt: "Once upon a time", max_tokens: 2 }).done as WsFinalMessage;
        assert.equal(short.type, "final");
        assert.ok(["stop", "length"].includes(short.finish_reason));
        const http = await httpJson(`${server.url}/v1/completions`, { body: { prompt: long, max_tokens: 2 } });
        assert.equal(http.status, 400);
        assert.equal(http.body.error.code, "prompt_too_long");
        await client.close();
    });

    it("max tokens: no request generates more than max-tokens, whatever it asks", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        for (const asked of [undefined, 1000]) {
            const final = await client.chat({ prompt: "Once upon a time", temperature: 1, ...(asked != null ? { max_tokens: asked } : {}) }).done as WsFinalMessage;
            assert.ok(final.usage.completion_tokens <= 6, `${final.usage.completion_tokens} tokens`);
        }
        const http = await httpJson(`${server.url}/v1/chat/completions`, { body: { messages: [{ role: "user", content: "Hi" }], max_tokens: 500 } });
        assert.equal(http.status, 200);
        assert.ok(http.body.usage.completion_tokens <= 6);
        await client.close();
    });

    it("requests in flight per socket: beyond max-requests-per-socket they fail with too_many_requests", async function () {
        // (a fresh server: the rate limit of the shared one must not get in the way)
        const own = await startServer({ args: ["--sequences", "1", "--max-requests-per-socket", "2", "--context-size", "2048"] });
        try {
            const client = await WsTestClient.connect(own.wsUrl);
            const runs = [0, 1, 2, 3].map(() => client.chat({ prompt: "Once upon a time", max_tokens: 200 }));
            const results = await Promise.all(runs.map((r) => r.done));
            assert.deepEqual(results.map((r) => r.type), ["final", "final", "error", "error"]);
            for (const refused of results.slice(2))
                assert.equal((refused as WsErrorMessage).code, "too_many_requests");
            // once they are done, the socket may send more
            assert.equal((await client.chat({ prompt: "Again", max_tokens: 3 }).done).type, "final");
            await client.close();
        } finally {
            await own.stop();
        }
    });

    it("rate: beyond rate-limit requests a minute from one client, WebSocket and HTTP together, requests fail with rate_limited (HTTP 429 with Retry-After)", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        // the earlier tests of this server spent some of the 20; spend the rest and a few more
        let refusedWs: WsErrorMessage | null = null;
        for (let i = 0; i < 25 && refusedWs == null; i++) {
            const result = await client.chat({ prompt: "Hi", max_tokens: 1 }).done;
            if (result.type === "error")
                refusedWs = result as WsErrorMessage;
        }
        assert.ok(refusedWs != null, "the WebSocket was limited");
        assert.equal(refusedWs.code, "rate_limited");
        assert.match(refusedWs.message, /retry in \d+ s/);
        const http = await httpJson(`${server.url}/v1/chat/completions`, { body: { messages: [{ role: "user", content: "Hi" }], max_tokens: 1 } });
        assert.equal(http.status, 429);
        assert.equal(http.body.error.code, "rate_limited");
        assert.ok(Number(http.headers.get("retry-after")) >= 1);
        // everything else still answers, and the socket stays usable
        assert.equal((await httpJson(`${server.url}/health`)).status, 200);
        const pong = client.next((m) => m.type === "pong");
        client.send({ type: "ping", id: "still-here" });
        await pong;
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        assert.match(metrics, /keepkv_request_errors_total\{code="rate_limited"\} [2-9]/);
        await client.close();
    });

    it("the rate limiter refills at the configured rate and forgets clients instead of growing without bound", function () {
        const limiter = new RateLimiter(60, 1000);
        for (let i = 0; i < 60; i++)
            assert.equal(limiter.take("a", 0).ok, true);
        const refused = limiter.take("a", 0);
        assert.equal(refused.ok, false);
        assert.equal(!refused.ok && refused.retryAfterS, 1);
        assert.equal(limiter.take("a", 1000).ok, true, "one more after a second");
        assert.equal(limiter.take("a", 1000).ok, false);
        assert.equal(limiter.take("b", 1000).ok, true, "clients are counted apart");
        for (let i = 0; i < 5000; i++)
            limiter.take(`client${i}`, 2000);
        assert.ok(limiter.size <= 1000);
        assert.equal(new RateLimiter(0).take("x").ok, true, "0 disables it");
    });

    it("stop strings are bounded (at most 8, each at most 256 characters)", async function () {
        const own = await startServer({ args: ["--sequences", "1"] });
        try {
            const client = await WsTestClient.connect(own.wsUrl);
            for (const stop of ["x".repeat(257), Array.from({ length: 9 }, (_, i) => `s${i}`)]) {
                const refused = await client.chat({ prompt: "Hi", stop, max_tokens: 2 }).done;
                assert.equal(refused.type, "error");
                assert.equal((refused as WsErrorMessage).code, "invalid_message");
                assert.match((refused as WsErrorMessage).message, /stop/);
            }
            const ok = await client.chat({ prompt: "Once upon a time", stop: ["y".repeat(256), "."], max_tokens: 50 }).done;
            assert.equal(ok.type, "final");
            await client.close();
        } finally {
            await own.stop();
        }
    });
});
