// Long prompts against the real server: the engine reports each evaluated batch of a prompt, so the
// watchdog does not take a prompt that outlasts --engine-stall-timeout for a hung engine, and a cancel or
// a disconnect during the prompt stops its evaluation at the next batch.
import assert from "node:assert/strict";
import type { WsFinalMessage, WsProgressMessage } from "../../server/protocol/ws-messages.js";
import { sample } from "../helpers/metrics-text.js";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";
import { smolArgs } from "../helpers/smollm2.js";
import { WsTestClient } from "../helpers/ws-client.js";

async function metric(server: ServerHandle, name: string): Promise<number> {
    return sample(await (await fetch(`${server.url}/metrics`)).text(), name);
}

/** About `tokens` tokens of plain story text (stories3M and SmolLM2 both take a word for about a token). */
function longPrompt(tokens: number): string {
    const sentence = "Once upon a time there was a little fox who lived in the woods with his mother and his sister. ";
    return sentence.repeat(Math.ceil(tokens / 20));
}

describe("long prompts", function () {
    describe("on stories3M in batches of 4", function () {
        let server: ServerHandle;
        before(async function () {
            server = await startServer({ args: ["--sequences", "1", "--batch-size", "4"] });
        });
        after(async function () {
            await server?.stop();
        });

        for (const how of ["cancel", "disconnect"] as const)
            it(`a ${how} during the prompt stops its evaluation at the next batch`, async function () {
                const before = await metric(server, "keepkv_prompt_tokens_evaluated_total");
                const client = await WsTestClient.connect(server.wsUrl);
                const run = client.chat({ prompt: longPrompt(1900), max_tokens: 20, temperature: 0 });
                await run.start;
                if (how === "cancel")
                    client.send({ type: "cancel", id: run.id });
                else
                    await client.close();
                let final: WsFinalMessage | null = null;
                if (how === "cancel") {
                    final = await run.done as WsFinalMessage;
                    assert.equal(final.type, "final");
                    assert.equal(final.finish_reason, "cancel");
                    assert.equal(final.usage.completion_tokens, 0);
                    await client.close();
                }
                // the request ends (its sequence is free again) with the prompt cut short
                let evaluated = 0;
                for (;;) {
                    const text = await (await fetch(`${server.url}/metrics`)).text();
                    if (sample(text, "keepkv_num_requests_running") === 0) {
                        evaluated = sample(text, "keepkv_prompt_tokens_evaluated_total") - before;
                        break;
                    }
                    await new Promise((r) => setTimeout(r, 20));
                }
                const promptTokens = final?.usage.prompt_tokens ?? 1900;
                assert.ok(promptTokens > 1500, `a long prompt (${promptTokens} tokens)`);
                assert.ok(evaluated < promptTokens / 2, `${evaluated} of ${promptTokens} prompt tokens evaluated`);
                assert.equal(evaluated % 4, 0, "whole batches");
                // the sequence serves the next request
                const next = await WsTestClient.connect(server.wsUrl);
                const after = await next.chat({ prompt: "Once upon a time", max_tokens: 5 }).done as WsFinalMessage;
                assert.equal(after.type, "final");
                assert.equal(after.finish_reason, "length");
                await next.close();
            });

        it("a long prompt reports its evaluation: progress messages after start and before the first delta (WebSocket), comment lines (SSE)", async function () {
            const client = await WsTestClient.connect(server.wsUrl);
            const run = client.chat({ prompt: longPrompt(300), max_tokens: 3, temperature: 0 });
            const final = await run.done as WsFinalMessage;
            assert.equal(final.type, "final");
            const mine = client.messages.filter((m) => "id" in m && m.id === run.id);
            const types = mine.map((m) => m.type);
            const progress = mine.filter((m): m is WsProgressMessage => m.type === "progress");
            assert.ok(progress.length > 10, `${progress.length} progress messages for a ${final.usage.prompt_tokens}-token prompt in batches of 4`);
            assert.ok(types.indexOf("progress") > types.indexOf("start"), types.join(","));
            assert.ok(types.lastIndexOf("progress") < types.indexOf("delta"), types.join(","));
            for (const [i, p] of progress.entries()) {
                assert.equal(p.prompt_tokens, final.usage.prompt_tokens);
                assert.ok(p.evaluated_tokens < p.prompt_tokens);
                if (i > 0)
                    assert.equal(p.evaluated_tokens - progress[i - 1]!.evaluated_tokens, 4, "one message a batch");
            }
            assert.deepEqual(client.schemaViolations, []);
            await client.close();

            const res = await fetch(`${server.url}/v1/completions`, {
                method: "POST", headers: { "Content-Type": "application/json" },
                body: JSON.stringify({ prompt: "Another story. " + longPrompt(300), max_tokens: 3, temperature: 0, stream: true })
            });
            const lines = (await res.text()).split("\n").filter((l) => l !== "");
            const comments = lines.filter((l) => l.startsWith(": prompt "));
            assert.ok(comments.length > 10, lines.slice(0, 5).join("\n"));
            assert.ok(lines.findIndex((l) => l.startsWith("data: ")) > lines.lastIndexOf(comments.at(-1)!), "the comments come before the first chunk");
            assert.match(comments[0]!, /^: prompt \d+\/\d+$/);
            assert.equal(lines.at(-1), "data: [DONE]");
        });

        it("a prompt that runs to its end counts every uncached token as evaluated", async function () {
            const before = await metric(server, "keepkv_prompt_tokens_evaluated_total");
            const client = await WsTestClient.connect(server.wsUrl);
            const final = await client.chat({ prompt: longPrompt(300), max_tokens: 5, temperature: 0 }).done as WsFinalMessage;
            await client.close();
            assert.equal(final.finish_reason, "length");
            assert.equal((await metric(server, "keepkv_prompt_tokens_evaluated_total")) - before, final.usage.prompt_tokens - final.usage.cached_tokens);
        });
    });

    it("a prompt that takes longer than --engine-stall-timeout is served: the engine reports each batch, so the watchdog does not kill it", async function () {
        // SmolLM2 on one thread evaluates 50 to 150 prompt tokens a second here: a 2000-token prompt takes
        // several times the 5 s stall timeout, a batch of 16 a small part of it
        const stallSeconds = 5;
        const server = await startServer({
            bareArgs: true,
            args: smolArgs("--policy", "off", "--sequences", "1", "--batch-size", "16", "--engine-stall-timeout", String(stallSeconds))
        });
        try {
            const pid = (await httpJson(`${server.url}/health`)).body.engine.pid as number;
            const client = await WsTestClient.connect(server.wsUrl);
            const final = await client.chat({ prompt: longPrompt(2000), max_tokens: 4, temperature: 0 }, { timeoutMs: 600_000 }).done as WsFinalMessage;
            await client.close();
            assert.equal(final.type, "final", JSON.stringify(final));
            assert.equal(final.finish_reason, "length");
            assert.ok(final.usage.prompt_tokens > 2000);
            // the premise of the test, not what it tests: without progress reports the watchdog kills this engine
            assert.ok(final.timings.prompt_ms > stallSeconds * 1000, `the prompt took ${final.timings.prompt_ms} ms, not longer than the stall timeout: use a longer prompt`);
            const health = (await httpJson(`${server.url}/health`)).body;
            assert.equal(health.engine.restarts, 0);
            assert.equal(health.engine.pid, pid);
        } finally {
            await server.stop();
        }
    });
});
