import assert from "node:assert/strict";
import OpenAI from "openai";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";

describe("OpenAI-compatible HTTP API (with the openai npm client)", function () {
    let server: ServerHandle;
    let client: OpenAI;

    before(async function () {
        server = await startServer({ args: ["--sequences", "2"] });
        client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    });
    after(async function () {
        await server?.stop();
    });

    it("lists the loaded model", async function () {
        const models = await client.models.list();
        const loaded = models.data.find((m) => m.id === "stories3M-q8_0.gguf") as unknown as Record<string, unknown>;
        assert.ok(loaded != null);
        assert.equal(loaded.loaded, true);
        assert.equal(loaded.architecture, "llama");
        assert.equal(loaded.context_length, 512);
        assert.equal(loaded.keepkv_supported, true);
    });

    it("answers a non-streaming chat completion", async function () {
        const completion = await client.chat.completions.create({
            model: "stories3M-q8_0.gguf",
            messages: [{ role: "system", content: "A story." }, { role: "user", content: "Once upon a time" }],
            max_tokens: 30,
            temperature: 0
        });
        assert.equal(completion.object, "chat.completion");
        assert.match(completion.id, /^chatcmpl-/);
        const choice = completion.choices[0]!;
        assert.equal(choice.message.role, "assistant");
        assert.ok((choice.message.content ?? "").trim().length > 0);
        assert.ok(["stop", "length"].includes(choice.finish_reason));
        assert.ok(completion.usage!.completion_tokens > 0 && completion.usage!.completion_tokens <= 30);
        assert.equal(completion.usage!.total_tokens, completion.usage!.prompt_tokens + completion.usage!.completion_tokens);
        const extra = completion as unknown as { keepkv: { policy: string, cells_used: number }, timings: { ttft_ms: number } };
        // the server's defaults: KeepKV with half the context as each sequence's budget
        assert.equal(extra.keepkv.policy, "keepkv");
        assert.ok(extra.timings.ttft_ms >= 0);
    });

    it("streams a chat completion, ending with [DONE], with usage when asked", async function () {
        const stream = await client.chat.completions.create({
            model: "stories3M-q8_0.gguf",
            messages: [{ role: "user", content: "Once upon a time" }],
            max_tokens: 40,
            temperature: 0,
            stream: true,
            stream_options: { include_usage: true }
        });
        let text = "";
        let finish: string | null = null;
        let usage: OpenAI.CompletionUsage | null = null;
        let chunks = 0;
        for await (const chunk of stream) {
            chunks++;
            assert.equal(chunk.object, "chat.completion.chunk");
            if (chunk.usage != null)
                usage = chunk.usage;
            const choice = chunk.choices[0];
            if (choice == null)
                continue;
            text += choice.delta.content ?? "";
            finish = choice.finish_reason ?? finish;
        }
        assert.ok(chunks > 2);
        assert.ok(text.trim().length > 0);
        assert.ok(finish === "stop" || finish === "length");
        assert.ok(usage != null && usage.completion_tokens > 0);

        // the same greedy request without streaming gives the same text
        const whole = await client.chat.completions.create({
            model: "x", messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 40, temperature: 0
        });
        assert.equal(whole.choices[0]!.message.content, text);
    });

    it("the raw SSE stream ends with data: [DONE]", async function () {
        const res = await fetch(`${server.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 5, stream: true })
        });
        assert.equal(res.status, 200);
        assert.match(res.headers.get("content-type") ?? "", /text\/event-stream/);
        const body = await res.text();
        assert.ok(body.endsWith("data: [DONE]\n\n"), body.slice(-100));
    });

    it("answers text completions, streaming and not", async function () {
        const completion = await client.completions.create({ model: "x", prompt: "The little dog", max_tokens: 20, temperature: 0 });
        assert.equal(completion.object, "text_completion");
        assert.ok(completion.choices[0]!.text.length > 0);
        const stream = await client.completions.create({ model: "x", prompt: "The little dog", max_tokens: 20, temperature: 0, stream: true });
        let text = "";
        for await (const chunk of stream)
            text += chunk.choices[0]?.text ?? "";
        assert.equal(text, completion.choices[0]!.text);
    });

    it("reports errors in the OpenAI shape with a stable code", async function () {
        await assert.rejects(
            client.chat.completions.create({ model: "x", messages: [], max_tokens: 5 }),
            (err: unknown) => err instanceof OpenAI.APIError && err.status === 400 && err.code === "invalid_message");
        await assert.rejects(
            client.completions.create({ model: "x", prompt: "word ".repeat(5000), max_tokens: 5 }),
            (err: unknown) => err instanceof OpenAI.APIError && err.status === 400 && err.code === "prompt_too_long");
        const badJson = await httpJson(`${server.url}/v1/chat/completions`, { body: "{oops", headers: { "Content-Type": "application/json" } });
        assert.equal(badJson.status, 400);
        assert.equal(badJson.body.error.code, "invalid_json");
        assert.equal(badJson.body.error.type, "invalid_request_error");
        const missing = await httpJson(`${server.url}/v1/nothing`);
        assert.equal(missing.status, 404);
        assert.equal(missing.body.error.code, "not_found");
    });

    it("health and readiness in llama-server's shapes", async function () {
        const health = await httpJson(`${server.url}/health`);
        assert.equal(health.status, 200);
        assert.equal(health.body.status, "ok");
        assert.equal(health.body.engine.restarts, 0);
        const ready = await httpJson(`${server.url}/ready`);
        assert.equal(ready.status, 200);
        assert.equal(ready.body.available, 2);
        const slots = await httpJson(`${server.url}/slots`);
        assert.equal(slots.body.length, 2);
        const kv = await httpJson(`${server.url}/v1/kv`);
        assert.equal(kv.status, 200);
        assert.equal(kv.body.policy, "keepkv");
        assert.equal(kv.body.sequences.length, 2);
        assert.equal(kv.body.sequences[0].budget, 1024);
        assert.equal(kv.body.sequences[0].capacity, 1024);
    });
});
