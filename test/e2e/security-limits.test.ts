// The configurable limits, each enforced by the real server with its documented error: message size,
// prompt tokens, max tokens, requests in flight per socket, requests per minute per client and per key
// (wrong tokens counted), stop strings and sampling numbers, connections per address and in total,
// header size, unread WebSocket output of every kind, and how often statistics reads reach the engine.
import assert from "node:assert/strict";
import * as crypto from "node:crypto";
import * as net from "node:net";
import type { WsErrorMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { validators } from "../../server/protocol/schemas.js";
import { RateLimiter } from "../../server/security/rate-limit.js";
import { requestFrom } from "../helpers/raw-http.js";
import { httpJson, startServer, waitFor, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";

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
    it("sampling numbers are checked strictly: no Infinity (1e400 in JSON), no out-of-range integers, no repeat_penalty of 0", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const bad: [string, string][] = [
            ["seed", "1e400"], ["seed", "-1e400"], ["seed", "1e300"], ["top_k", "1e400"], ["top_k", "1e12"], ["max_tokens", "1e400"],
            ["temperature", "1e400"], ["repeat_penalty", "0"], ["repeat_penalty", "0.01"], ["repeat_penalty", "1e400"], ["min_p", "-1e400"]
        ];
        for (const [field, value] of bad) {
            const ws = client.nextError(`bad-${field}-${value}`);
            client.send(`{"type":"chat","id":"bad-${field}-${value}","prompt":"Hi","${field}":${value}}`);
            const refused = await ws;
            assert.equal(refused.code, "invalid_message", `${field}: ${value}`);
            assert.match(refused.message, new RegExp(field));
            for (const path of ["/v1/completions", "/v1/chat/completions"]) {
                const body = path === "/v1/completions" ? `{"prompt":"Hi","${field}":${value}}` : `{"messages":[{"role":"user","content":"Hi"}],"${field}":${value}}`;
                const http = await httpJson(`${server.url}${path}`, { body });
                assert.equal(http.status, 400, `${path} ${field}: ${value}`);
                assert.equal(http.body.error.code, "invalid_message");
            }
        }
        await client.close();
        // the edges that stay valid (checked against the schema: this server's rate limit is spent)
        assert.equal(validators.wsClient.chat!({ type: "chat", id: "edge", prompt: "Once", max_tokens: 2_147_483_647, repeat_penalty: 0.1, seed: Number.MIN_SAFE_INTEGER, top_k: 2_147_483_647 }), true);
    });
});

describe("limits: rate per key and per address, wrong tokens counted", function () {
    const apiKey = "rate-key-5c2a91";
    let server: ServerHandle;
    before(async function () {
        server = await startServer({ args: ["--sequences", "1", "--rate-limit", "4"], env: { KEEPKV_API_KEY: apiKey } });
    });
    after(async function () {
        await server?.stop();
    });
    const chat = (localAddress: string, token: string) => requestFrom(server.port, {
        localAddress, path: "/v1/completions", body: { prompt: "Hi", max_tokens: 1 }, headers: { Authorization: `Bearer ${token}` }
    });

    it("wrong tokens use up the address's allowance; then even the right token is refused unchecked (429), on HTTP and at the upgrade", async function () {
        for (let i = 0; i < 4; i++)
            assert.equal((await chat("127.0.0.4", `guess-${i}`)).status, 401);
        const fifth = await chat("127.0.0.4", "guess-5");
        assert.equal(fifth.status, 429);
        assert.equal(JSON.parse(fifth.body).error.code, "rate_limited");
        assert.ok(Number(fifth.headers["retry-after"]) >= 1);
        const right = await chat("127.0.0.4", apiKey);
        assert.equal(right.status, 429, "the right key learns nothing while the address is out of allowance");
        const models = await requestFrom(server.port, { localAddress: "127.0.0.4", path: "/v1/models", headers: { Authorization: `Bearer ${apiKey}` } });
        assert.equal(models.status, 429);
        const upgrade = await requestFrom(server.port, {
            localAddress: "127.0.0.4", path: "/v1/ws",
            headers: { Authorization: `Bearer ${apiKey}`, Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==" }
        });
        assert.equal(upgrade.status, 429);
        // another address is not affected, and /health needs no allowance
        assert.equal((await requestFrom(server.port, { localAddress: "127.0.0.4", path: "/health" })).status, 200);
        assert.equal((await requestFrom(server.port, { localAddress: "127.0.0.5", path: "/v1/models", headers: { Authorization: `Bearer ${apiKey}` } })).status, 200);
    });

    it("one key shares one allowance across addresses", async function () {
        for (const address of ["127.0.0.6", "127.0.0.6", "127.0.0.7", "127.0.0.7"])
            assert.equal((await chat(address, apiKey)).status, 200, address);
        const fifth = await chat("127.0.0.8", apiKey);
        assert.equal(fifth.status, 429, "a fresh address with the same key");
        assert.match(JSON.parse(fifth.body).error.message, /rate-limit/);
        // a WebSocket with the same key: the same allowance
        const client = await WsTestClient.connect(server.wsUrl, { headers: { Authorization: `Bearer ${apiKey}` } });
        const refused = await client.chat({ prompt: "Hi", max_tokens: 1 }).done;
        assert.equal(refused.type, "error");
        assert.equal((refused as WsErrorMessage).code, "rate_limited");
        await client.close();
    });
});

describe("limits: connections, headers, unread output, statistics reads", function () {
    it("connections: beyond max-connections-per-address from one address, and beyond max-connections in all, requests and upgrades get 503 too_many_connections", async function () {
        const server = await startServer({ args: ["--sequences", "1", "--max-connections-per-address", "3", "--max-connections", "5"] });
        const held: net.Socket[] = [];
        const hold = async (localAddress: string) => {
            const socket = net.connect({ host: "127.0.0.1", port: server.port, localAddress });
            await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
            held.push(socket);
        };
        try {
            for (let i = 0; i < 3; i++)
                await hold("127.0.0.1");
            const over = await requestFrom(server.port, { path: "/health" });
            assert.equal(over.status, 503);
            assert.equal(JSON.parse(over.body).error.code, "too_many_connections");
            assert.match(JSON.parse(over.body).error.message, /max-connections-per-address/);
            assert.equal(await WsTestClient.upgradeStatus(server.wsUrl), 503);
            // another address still gets in, up to the total
            assert.equal((await requestFrom(server.port, { localAddress: "127.0.0.2", path: "/health" })).status, 200);
            await hold("127.0.0.2");
            await hold("127.0.0.2");
            const full = await requestFrom(server.port, { localAddress: "127.0.0.3", path: "/health" });
            assert.equal(full.status, 503);
            assert.match(JSON.parse(full.body).error.message, /max-connections\)/);
            // closed connections free their places
            for (const socket of held.splice(0))
                socket.destroy();
            await waitFor("the places to free", async () => (await requestFrom(server.port, { path: "/health" })).status === 200 ? true : undefined);
            const client = await WsTestClient.connect(server.wsUrl);
            assert.equal((await client.chat({ prompt: "Once", max_tokens: 2 }).done).type, "final");
            await client.close();
        } finally {
            for (const socket of held)
                socket.destroy();
            await server.stop();
        }
    });

    it("header size: a request head over max-header-bytes gets 431 and the server keeps serving", async function () {
        const server = await startServer({ args: ["--sequences", "1", "--max-header-bytes", "4096"] });
        try {
            const big = await requestFrom(server.port, { path: "/health", headers: { "X-Big": "b".repeat(6000) } });
            assert.equal(big.status, 431);
            const fits = await requestFrom(server.port, { path: "/health", headers: { "X-Fits": "f".repeat(3000) } });
            assert.equal(fits.status, 200);
        } finally {
            await server.stop();
        }
    });

    it("unread output of any kind: a client that sends pings without reading the pongs is disconnected past ws-max-buffered-bytes", async function () {
        const server = await startServer({ args: ["--sequences", "1", "--ws-max-buffered-bytes", "65536"] });
        try {
            // a raw WebSocket client that never reads: the server's answers pile up in the kernel, then in ws
            const socket = net.connect({ host: "127.0.0.1", port: server.port });
            await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
            socket.write(`GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:${server.port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n`
                + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
            socket.pause();
            let ended = false;
            const closed = new Promise<void>((resolve) => socket.once("close", () => { ended = true; resolve(); }));
            socket.on("error", () => undefined);
            const ping = JSON.stringify({ type: "ping", id: "p".repeat(128) });
            const frame = (payload: Buffer) => {
                const mask = crypto.randomBytes(4);
                const head = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
                const body = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!));
                return Buffer.concat([head, mask, body]);
            };
            const batch = Buffer.concat(Array.from({ length: 1000 }, () => frame(Buffer.from(ping))));
            // 200 batches: 200,000 pongs, about 30 MB, far beyond any kernel buffer; sent until the server hangs up
            for (let i = 0; i < 200 && !ended; i++)
                if (!socket.write(batch))
                    await Promise.race([new Promise((r) => socket.once("drain", r)), closed]);
            const dropped = /keepkv_clients_dropped_total\{api="ws",reason="slow_consumer"\} 1/;
            await waitFor("the server to drop the client", async () => dropped.test(await (await fetch(`${server.url}/metrics`)).text()) ? true : undefined);
            // (a paused socket sees the hang-up only once it reads what came before it)
            socket.resume();
            await closed;
            assert.equal((await httpJson(`${server.url}/health`)).status, 200);
        } finally {
            await server.stop();
        }
    });

    it("statistics: a burst of /v1/kv and /metrics reads reaches the engine a few times, not once per read", async function () {
        const server = await startServer({ args: ["--sequences", "1"] });
        try {
            const reads = async () => {
                const text = await (await fetch(`${server.url}/metrics`)).text();
                return Number(/^keepkv_engine_stats_reads_total (\d+)/m.exec(text)?.[1] ?? NaN);
            };
            const before = await reads();
            const started = Date.now();
            // 40 at a time (each on its own connection, under the per-address cap), 200 in all
            for (let round = 0; round < 5; round++) {
                const statuses = await Promise.all(Array.from({ length: 40 }, (_, i) => requestFrom(server.port, { path: i % 2 === 0 ? "/v1/kv" : "/metrics" }).then((r) => r.status)));
                assert.deepEqual([...new Set(statuses)], [200]);
            }
            const elapsed = Date.now() - started;
            const after = await reads();
            // one read per 500 ms of the burst at most (plus the one in flight at each end); without the cache, 200
            assert.ok(after - before <= Math.ceil(elapsed / 500) + 2, `${after - before} engine reads for 200 requests in ${elapsed} ms`);
            // and a finished request is seen at once
            const client = await WsTestClient.connect(server.wsUrl);
            await client.chat({ prompt: "Once upon a time", max_tokens: 3, conversation_id: "seen" }).done;
            await client.close();
            const kv = await httpJson(`${server.url}/v1/kv`);
            assert.ok(kv.body.sequences[0].logical_tokens > 0);
        } finally {
            await server.stop();
        }
    });
});
