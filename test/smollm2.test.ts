// The real chat model the server serves by default (SmolLM2-135M-Instruct, Q4_1, 8192 positions), through
// the real server: its chat template, its end-of-turn token, a conversation cache reused across turns under a
// 10% budget (concurrent long sequences: test/smollm2-concurrent.check.ts, an open defect). The fast tests use stories3M; these are the few
// that only a real chat model at real context lengths can answer.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import OpenAI from "openai";
import type { WsErrorMessage, WsFinalMessage } from "../server/protocol/ws-messages.js";
import { ensureKjvText } from "../scripts/lib/long-text.js";
import { httpJson, startServer, type ServerHandle } from "./helpers/server-process.js";
import { smolArgs } from "./helpers/smollm2.js";
import { WsTestClient } from "./helpers/ws-client.js";

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}


const question = [{ role: "system" as const, content: "You are a helpful assistant." }, { role: "user" as const, content: "What is the capital of France?" }];

describe("SmolLM2-135M-Instruct, the default chat model", function () {
    for (const [label, extra] of [["the full cache", ["--policy", "off"]], ["KeepKV at the default budget", []]] as const) {
        describe(`answers a question with ${label}`, function () {
            let server: ServerHandle;
            before(async function () {
                server = await startServer({ bareArgs: true, args: smolArgs("--sequences", "2", ...extra) });
            });
            after(async function () {
                await server?.stop();
            });

            it("over WebSocket: the chat template, greedy, \"Paris\", ended by the end-of-turn token", async function () {
                const client = await WsTestClient.connect(server.wsUrl);
                assert.equal(client.hello.model, "SmolLM2-135M-Instruct.Q4_1.gguf");
                const run = client.chat({ messages: question, max_tokens: 48, temperature: 0 });
                const final = assertFinal(await run.done);
                assert.match(run.text(), /Paris/);
                assert.equal(final.finish_reason, "stop", `the reply ends at <|im_end|>, not at max_tokens: ${JSON.stringify(run.text())}`);
                assert.doesNotMatch(run.text(), /<\|im_end\|>|<\|im_start\|>/);
                assert.equal(final.kv?.policy, extra.length === 0 ? "keepkv" : "off");
                assert.deepEqual(client.schemaViolations, []);
                await client.close();
            });

            it("through the openai client", async function () {
                const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
                const completion = await openai.chat.completions.create({
                    model: "SmolLM2-135M-Instruct.Q4_1.gguf", messages: question, max_tokens: 48, temperature: 0
                });
                const choice = completion.choices[0]!;
                assert.match(choice.message.content ?? "", /Paris/);
                assert.equal(choice.finish_reason, "stop");
                assert.doesNotMatch(choice.message.content ?? "", /<\|im_end\|>|<\|im_start\|>/);
            });
        });
    }

    describe("a conversation past 6,000 tokens under a 10% budget", function () {
        let server: ServerHandle;
        before(async function () {
            server = await startServer({ bareArgs: true, args: smolArgs("--sequences", "1", "--policy", "keepkv", "--budget", "0.1") });
        });
        after(async function () {
            await server?.stop();
        });

        it("keeps answering, evaluates only each turn's new tokens and never holds more than its budget", async function () {
            this.timeout(900_000);
            const text = fs.readFileSync(ensureKjvText(), "utf8");
            const client = await WsTestClient.connect(server.wsUrl);
            const messages: { role: "system" | "user" | "assistant", content: string }[] = [
                { role: "system", content: "You are a helpful assistant." }
            ];
            let previousTokens = 0;
            let offset = 0;
            for (let turn = 0; turn < 5 && previousTokens < 6500; turn++) {
                // about 1,500 tokens of scripture a turn, then a short request
                const passage = text.slice(offset, offset + 6000);
                offset += 6000;
                messages.push({ role: "user", content: `Here is a passage:\n\n${passage}\n\nSummarise it in one sentence.` });
                const run = client.chat({ messages, max_tokens: 40, temperature: 0, conversation_id: "long-talk" }, { timeoutMs: 600_000 });
                const final = assertFinal(await run.done);
                assert.ok(["stop", "length"].includes(final.finish_reason), JSON.stringify(final));
                assert.ok(run.text().trim().length > 0, `turn ${turn} answered nothing`);
                assert.doesNotMatch(run.text(), /<\|im_end\|>/);
                const evaluated = final.usage.prompt_tokens - final.usage.cached_tokens;
                if (turn > 0) {
                    // everything up to the end of the previous reply comes from the cache; what is evaluated is
                    // this turn's message and the few template tokens around it
                    assert.ok(final.usage.cached_tokens >= previousTokens - 2,
                        `turn ${turn}: ${final.usage.cached_tokens} cached tokens of a ${previousTokens}-token history`);
                    assert.ok(evaluated <= final.usage.prompt_tokens - previousTokens + 2,
                        `turn ${turn}: ${evaluated} tokens evaluated for ${final.usage.prompt_tokens - previousTokens} new ones`);
                }
                const kv = final.kv!;
                assert.equal(kv.policy, "keepkv");
                assert.equal(kv.budget, 819);
                assert.ok(kv.cells_used <= kv.budget, `${kv.cells_used} cells used of a ${kv.budget}-cell budget`);
                // the positions are the whole conversation (the last generated token is not evaluated): a context
                // shift would have dropped hundreds
                const total = final.usage.prompt_tokens + final.usage.completion_tokens;
                assert.ok(kv.logical_tokens >= total - 1 && kv.logical_tokens <= total,
                    `${kv.logical_tokens} positions for a ${total}-token conversation: nothing may be shifted out`);
                messages.push({ role: "assistant", content: run.text() });
                previousTokens = kv.logical_tokens;
            }
            assert.ok(previousTokens > 6000, `the conversation reached only ${previousTokens} tokens`);
            const kv = (await httpJson(`${server.url}/v1/kv`)).body as { compressions: number, merges: number };
            assert.ok(kv.compressions > 0 && kv.merges > 0, JSON.stringify(kv));
            await client.close();
        });
    });
});
