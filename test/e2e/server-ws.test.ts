import assert from "node:assert/strict";
import type { WsErrorMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}

describe("WebSocket API", function () {
    let server: ServerHandle;
    const clients: WsTestClient[] = [];
    const connect = async (opts?: Parameters<typeof WsTestClient.connect>[1]) => {
        const client = await WsTestClient.connect(server.wsUrl, opts);
        clients.push(client);
        return client;
    };

    before(async function () {
        server = await startServer({ args: ["--sequences", "4", "--max-message-bytes", "262144"] });
    });
    afterEach(async function () {
        for (const client of clients.splice(0))
            assert.deepEqual(client.schemaViolations, [], "every server message matches the published schemas");
    });
    after(async function () {
        await server?.stop();
    });

    it("streams a chat: hello, start, deltas numbered from 0, a final with usage, timings and KV stats", async function () {
        const client = await connect();
        assert.equal(client.hello.protocol, 1);
        assert.equal(client.hello.auth_required, false);
        assert.equal(client.hello.model, "stories3M-q8_0.gguf");
        const run = client.chat({ messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 40, temperature: 0 });
        const start = await run.start;
        assert.equal(start.model, "stories3M-q8_0.gguf");
        const final = assertFinal(await run.done);
        assert.ok(["stop", "length"].includes(final.finish_reason));
        assert.ok(run.deltas.length > 0);
        run.deltas.forEach((d, i) => assert.equal(d.seq, i));
        assert.ok(run.text().trim().split(/\s+/).length >= 3, `expected some words, got ${JSON.stringify(run.text())}`);
        assert.equal(run.deltas.reduce((a, d) => a + d.tokens, 0), final.usage.completion_tokens);
        assert.ok(final.usage.prompt_tokens > 1);
        assert.equal(final.usage.total_tokens, final.usage.prompt_tokens + final.usage.completion_tokens);
        assert.ok(final.timings.total_ms >= final.timings.ttft_ms);
        assert.ok(final.kv != null);
        assert.equal(final.kv.policy, "keepkv");
        assert.equal(final.kv.budget, 1024);
        assert.equal(final.kv.capacity, 1024);
        assert.ok(final.kv.logical_tokens > 0);
        // the deltas come before the final, and nothing of this request comes after it
        const order = client.messages.filter((m) => "id" in m && m.id === run.id).map((m) => m.type);
        assert.deepEqual(order, ["start", ...run.deltas.map(() => "delta"), "final"]);
    });

    it("a plain prompt works too, and greedy sampling is reproducible", async function () {
        const client = await connect();
        const a = client.chat({ prompt: "The little dog", max_tokens: 24, temperature: 0 });
        const finalA = assertFinal(await a.done);
        const b = client.chat({ prompt: "The little dog", max_tokens: 24, temperature: 0 });
        assertFinal(await b.done);
        assert.equal(a.text(), b.text());
        assert.ok(finalA.usage.completion_tokens > 0);
    });

    it("runs two requests interleaved on one socket, each with its own sequence and numbering", async function () {
        const client = await connect();
        const a = client.chat({ prompt: "Tom had a red ball.", max_tokens: 120, temperature: 0.7 });
        const b = client.chat({ prompt: "Lily went to the park.", max_tokens: 120, temperature: 0.7 });
        const [finalA, finalB] = (await Promise.all([a.done, b.done])).map(assertFinal);
        assert.notEqual(finalA!.kv!.sequence, finalB!.kv!.sequence, "both ran at once, on different sequences");
        a.deltas.forEach((d, i) => assert.equal(d.seq, i));
        b.deltas.forEach((d, i) => assert.equal(d.seq, i));
        assert.ok(a.text().length > 0 && b.text().length > 0);
    });

    it("serves 8 concurrent clients (4 sequences, the rest queue) and all complete", async function () {
        const eight = await Promise.all(Array.from({ length: 8 }, () => connect()));
        const runs = eight.map((c, i) => c.chat({ messages: [{ role: "user", content: `Story number ${i}: once upon a time` }], max_tokens: 60 }));
        await Promise.all(runs.map((r) => r.start));
        const finals = (await Promise.all(runs.map((r) => r.done))).map(assertFinal);
        for (const final of finals) {
            assert.ok(["stop", "length"].includes(final.finish_reason), JSON.stringify(final));
            assert.ok(final.usage.completion_tokens > 0);
        }
        assert.ok(new Set(finals.map((f) => f.kv!.sequence)).size <= 4);
    });

    it("answers bad messages with the documented error and the socket stays usable", async function () {
        const client = await connect();
        const cases: { send: string | object | Buffer, code: string, id?: string | null, mentions?: RegExp }[] = [
            { send: "{ this is not json", code: "invalid_json" },
            { send: "[1,2,3]", code: "invalid_message" },
            { send: { type: "dance", id: "x1" }, code: "unknown_type", id: "x1" },
            { send: { id: "x2" }, code: "invalid_message", id: "x2", mentions: /type/ },
            { send: { type: "chat", prompt: "hi" }, code: "missing_id" },
            { send: { type: "cancel" }, code: "missing_id" },
            { send: { type: "chat", id: "x3", prompt: "hi", max_tokens: "many" }, code: "invalid_message", id: "x3", mentions: /max_tokens/ },
            { send: { type: "chat", id: "x4", prompt: 42 }, code: "invalid_message", id: "x4", mentions: /prompt/ },
            { send: { type: "chat", id: "x5", prompt: "hi", messages: [{ role: "user", content: "hi" }] }, code: "invalid_message", id: "x5", mentions: /exactly one/ },
            { send: { type: "chat", id: "x6", messages: [{ role: "robot", content: "hi" }] }, code: "invalid_message", id: "x6", mentions: /role/ },
            { send: { type: "chat", id: "x7", prompt: "hi", temperature: 9 }, code: "invalid_message", id: "x7", mentions: /temperature/ },
            { send: { type: "chat", id: "x8", prompt: "hi", colour: "red" }, code: "invalid_message", id: "x8", mentions: /colour/ },
            { send: { type: "chat", id: 5, prompt: "hi" }, code: "invalid_message", id: null, mentions: /id/ },
            { send: { type: "cancel", id: "nothing-here" }, code: "not_found", id: "nothing-here" }
        ];
        for (const c of cases) {
            const error = client.next<WsErrorMessage>((m) => m.type === "error");
            client.send(c.send as string | object);
            const message = await error;
            assert.equal(message.code, c.code, `for ${JSON.stringify(c.send)}: ${message.message}`);
            if (c.id !== undefined)
                assert.equal(message.id, c.id);
            if (c.mentions != null)
                assert.match(message.message, c.mentions);
        }
        const binary = client.next<WsErrorMessage>((m) => m.type === "error");
        client.ws.send(Buffer.from([1, 2, 3]), { binary: true });
        assert.equal((await binary).code, "invalid_message");

        // a prompt far beyond the context (but within the frame limit): a final with prompt_too_long
        const huge = client.chat({ prompt: "the cat sat on the mat. ".repeat(3000), max_tokens: 5 });
        const hugeFinal = assertFinal(await huge.done);
        assert.equal(hugeFinal.finish_reason, "error");
        assert.equal(hugeFinal.error?.code, "prompt_too_long");
        assert.match(hugeFinal.error!.message, /tokens/);

        // a duplicate id while the first is in flight
        const firstFinal = client.next((m) => m.type === "final" && m.id === "dup");
        const firstStart = client.next((m) => m.type === "start" && m.id === "dup");
        client.send({ type: "chat", id: "dup", prompt: "One day", max_tokens: 200 });
        await firstStart;
        const duplicate = client.nextError("dup");
        client.send({ type: "chat", id: "dup", prompt: "again" });
        assert.equal((await duplicate).code, "duplicate_id");
        await firstFinal;

        // ping, and the socket still chats
        const pong = client.next((m) => m.type === "pong");
        client.send({ type: "ping", id: "p" });
        assert.deepEqual(await pong, { type: "pong", id: "p" });
        const ok = client.chat({ prompt: "After all that,", max_tokens: 10 });
        assert.ok(["stop", "length"].includes(assertFinal(await ok.done).finish_reason));
    });

    it("closes the socket with 1009 when a frame is larger than max-message-bytes", async function () {
        const client = await connect();
        client.send({ type: "chat", id: "big", prompt: "x".repeat(300_000) });
        const closed = await client.closed;
        assert.equal(closed.code, 1009);
    });

    it("cancel ends the request with finish reason cancel; other requests keep going", async function () {
        const client = await connect();
        const long = client.chat({ prompt: "Once upon a time", max_tokens: 1500, temperature: 1 }, {
            onDelta: (d) => { if (d.seq === 0) client.send({ type: "cancel", id: long.id }); }
        });
        const other = client.chat({ prompt: "The sun was", max_tokens: 30 });
        const final = assertFinal(await long.done);
        assert.equal(final.finish_reason, "cancel");
        assert.ok(final.usage.completion_tokens < 1500);
        assert.ok(["stop", "length"].includes(assertFinal(await other.done).finish_reason));
    });

    it("a closed socket cancels its requests and frees their sequences", async function () {
        const client = await connect();
        const run = client.chat({ prompt: "Once upon a time", max_tokens: 1500 });
        await run.start;
        await new Promise<void>((resolve) => { const t = setInterval(() => { if (run.deltas.length > 0) { clearInterval(t); resolve(); } }, 5); });
        client.ws.terminate();
        // every sequence free again
        for (;;) {
            const { body } = await httpJson(`${server.url}/slots`);
            if ((body as { is_processing: boolean }[]).every((s) => !s.is_processing))
                break;
            await new Promise((r) => setTimeout(r, 50));
        }
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        assert.match(metrics, /keepkv_request_success_total\{model_name="stories3M-q8_0.gguf",finished_reason="cancel"\} [1-9]/);
    });

    it("refuses upgrades from origins that are not allowed, and on other paths", async function () {
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Origin: "http://evil.example" }), 403);
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Origin: server.url }), 101);
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl.replace("/v1/ws", "/v1/other")), 404);
    });

    it("publishes its schemas at GET /v1/schemas", async function () {
        const { status, body } = await httpJson(`${server.url}/v1/schemas`);
        assert.equal(status, 200);
        assert.deepEqual(Object.keys(body.ws.client).sort(), ["auth", "cancel", "chat", "new_conversation", "ping"]);
        assert.deepEqual(Object.keys(body.ws.server).sort(), ["auth_ok", "conversation", "delta", "error", "final", "hello", "pong", "progress", "start"]);
        assert.equal(body.errorCodes.queue_full.httpStatus, 503);
    });
});

describe("WebSocket API with one sequence", function () {
    let server: ServerHandle;
    before(async function () {
        server = await startServer({ args: ["--sequences", "1", "--max-queue", "1"] });
    });
    after(async function () {
        await server?.stop();
    });

    it("cancel mid-stream frees the sequence at once: the queued request gets it", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const first = client.chat({ prompt: "Once upon a time", max_tokens: 1800, temperature: 1 });
        assert.equal((await first.start).queue_position, 0);
        const second = client.chat({ prompt: "One day, a girl", max_tokens: 20 });
        assert.equal((await second.start).queue_position, 1);
        // a third does not fit in the queue
        const third = client.chat({ prompt: "x", max_tokens: 5 });
        const refused = await third.done;
        assert.equal(refused.type, "error");
        assert.equal((refused as WsErrorMessage).code, "queue_full");
        while (first.deltas.length === 0)
            await new Promise((r) => setTimeout(r, 5));
        // the readiness probe fails while no sequence is free
        const ready = await httpJson(`${server.url}/ready`);
        assert.equal(ready.status, 503);
        assert.equal(ready.body.available, 0);
        assert.equal((await httpJson(`${server.url}/slots?fail_on_no_slot=1`)).status, 503);
        client.send({ type: "cancel", id: first.id });
        const firstFinal = assertFinal(await first.done);
        assert.equal(firstFinal.finish_reason, "cancel");
        assert.ok(firstFinal.usage.completion_tokens < 1800);
        const secondFinal = assertFinal(await second.done);
        assert.ok(["stop", "length"].includes(secondFinal.finish_reason));
        assert.equal(secondFinal.kv?.sequence, 0);
        // the second began only after the first ended
        const order = client.messages.filter((m) => m.type === "final" || m.type === "delta").map((m) => `${m.type}:${(m as { id: string }).id}`);
        assert.ok(order.indexOf(`final:${first.id}`) < order.indexOf(`delta:${second.id}`));
        assert.deepEqual(client.schemaViolations, []);
        await client.close();
    });

    it("refuses a second request of a conversation while one is in flight", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const first = client.chat({ prompt: "Once upon a time", max_tokens: 50, conversation_id: "busy" });
        const second = client.chat({ prompt: "Once upon a time", max_tokens: 5, conversation_id: "busy" });
        const refused = await second.done;
        assert.equal(refused.type, "error");
        assert.equal((refused as WsErrorMessage).code, "conversation_busy");
        assert.equal((await first.done).type, "final");
        await client.close();
    });

    it("a conversation keeps its sequence and reuses its cache for the next turn", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const messages = [{ role: "user" as const, content: "Once upon a time there was a little fox who lived in the woods." }];
        const one = client.chat({ messages, max_tokens: 30, temperature: 0, conversation_id: "c1" });
        const oneFinal = assertFinal(await one.done);
        const two = client.chat({
            messages: [...messages, { role: "assistant", content: one.text() }, { role: "user", content: "The fox was happy." }],
            max_tokens: 10, temperature: 0, conversation_id: "c1"
        });
        const twoFinal = assertFinal(await two.done);
        // everything the first turn evaluated (its prompt and its reply but the last token) came from the cache
        const held = oneFinal.usage.prompt_tokens + oneFinal.usage.completion_tokens - 1;
        assert.ok(twoFinal.usage.cached_tokens >= held, `expected ${held} tokens from the cache, got ${twoFinal.usage.cached_tokens}`);
        assert.equal(twoFinal.kv?.sequence, oneFinal.kv?.sequence);
        await client.close();
    });
});

describe("WebSocket API with a token", function () {
    let server: ServerHandle;
    const token = "test-token-123";
    before(async function () {
        server = await startServer({ args: ["--sequences", "1"], env: { KEEPKV_API_KEY: token } });
    });
    after(async function () {
        await server?.stop();
    });

    it("accepts the token in the Authorization header", async function () {
        const client = await WsTestClient.connect(server.wsUrl, { headers: { Authorization: `Bearer ${token}` } });
        assert.equal(client.hello.auth_required, false);
        const run = client.chat({ prompt: "Once", max_tokens: 5 });
        assert.equal((await run.done).type, "final");
        await client.close();
    });

    it("refuses a wrong token at the upgrade", async function () {
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Authorization: "Bearer wrong" }), 401);
    });

    it("accepts the token as the first message, and closes with 1008 when it is missing or wrong", async function () {
        // (first-message auth is for browser pages, which cannot set headers: they always send an Origin)
        const browser = { headers: { Origin: server.url } };
        const client = await WsTestClient.connect(server.wsUrl, browser);
        assert.equal(client.hello.auth_required, true);
        const ok = client.next((m) => m.type === "auth_ok");
        client.send({ type: "auth", token });
        await ok;
        assert.equal((await client.chat({ prompt: "Once", max_tokens: 5 }).done).type, "final");
        await client.close();

        const noAuth = await WsTestClient.connect(server.wsUrl, browser);
        const refusal = noAuth.nextError(null);
        noAuth.send({ type: "chat", id: "a", prompt: "hi" });
        assert.equal((await refusal).code, "unauthorized");
        assert.equal((await noAuth.closed).code, 1008);

        const wrong = await WsTestClient.connect(server.wsUrl, browser);
        wrong.send({ type: "auth", token: "nope" });
        assert.equal((await wrong.closed).code, 1008);
    });

    it("protects HTTP endpoints except /health", async function () {
        assert.equal((await httpJson(`${server.url}/health`)).status, 200);
        const denied = await httpJson(`${server.url}/v1/models`);
        assert.equal(denied.status, 401);
        assert.equal(denied.body.error.code, "unauthorized");
        assert.equal((await httpJson(`${server.url}/metrics`)).status, 401);
        assert.equal((await httpJson(`${server.url}/v1/models`, { headers: { Authorization: `Bearer ${token}` } })).status, 200);
    });
});
