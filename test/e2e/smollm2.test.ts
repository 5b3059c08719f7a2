// The real chat model the server serves by default (SmolLM2-135M-Instruct, Q4_1, 8192 positions), through
// the real server: its chat template, its end-of-turn token, a conversation cache reused across turns under a
// 10% budget, and four compressing sequences of an 8k context that share every batch without touching each
// other. The fast tests use stories3M; these are the few that only a real chat model at real context lengths
// can answer.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import OpenAI from "openai";
import type { Llama, LlamaModel, Token } from "node-llama-cpp";
import { argmax } from "../../bench/lib/scoring.js";
import { createKeepKvContext, keepKvContextStats } from "../../server/engine/keepkv.js";
import { loadPatchedLlama } from "../../server/engine/llama-loader.js";
import { claimSequence } from "../../server/engine/native-context.js";
import type { WsErrorMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { ensureKjvText } from "../../scripts/lib/long-text.js";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";
import { smolArgs, smolModelPath } from "../helpers/smollm2.js";
import { maxAbsDiff, rawDecodeMany } from "../../bench/lib/raw-decode.js";
import { WsTestClient } from "../helpers/ws-client.js";

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}


// "Answer in one sentence." gives the first token a margin of 1.6 logits (The over L'), measured with and
// without flash attention, 1 and 2 threads: the bare question's is 0.13 (The over La), within what kernels for
// another CPU move (flash attention on or off differ by up to 1.0 here, on a CPU without AVX2), and there
// the greedy reply is broken French
const question = [{ role: "system" as const, content: "You are a helpful assistant." },
    { role: "user" as const, content: "What is the capital of France? Answer in one sentence." }];

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

    describe("4 sequences of an 8k context under 10% budgets, in the same batches", function () {
        let llama: Llama;
        let model: LlamaModel;
        before(async function () {
            llama = await loadPatchedLlama();
            model = await llama.loadModel({ modelPath: smolModelPath() });
        });
        after(async function () {
            await model?.dispose();
            await llama?.dispose();
        });

        // The issue asked for "exactly their single-sequence outputs". llama.cpp cannot give that, vanilla
        // included: a batch of one token takes ggml's vector kernels and a batch of two or more takes llamafile's
        // sgemm ("only enable sgemm for prompt processing", ggml-cpu/llamafile/sgemm.cpp), which round
        // differently (0.45 in the logits of SmolLM2 Q4_1, 0.09 of its F16 copy, measured), and a budget compresses
        // at batch boundaries, which concurrency moves. What isolation means, and what is tested: with the same
        // batch shapes, a sequence computes bit for bit the same logits whatever its neighbours hold, while all
        // of them compress, prefill and decode in mixed batches of different token counts.
        it("sequence 0 computes the same logits, bit for bit, whatever the other three hold", async function () {
            this.timeout(900_000);
            const text = fs.readFileSync(ensureKjvText(), "utf8");
            const passage = (at: number, tokens: number) => model.tokenize(text.slice(at, at + tokens * 6)).slice(0, tokens) as Token[];
            const lengths = [1800, 1100, 1500, 1300]; // all past the 819-cell budget
            const chunks = [96, 128, 112, 80]; // prompt tokens per sequence and batch: mixed rows in every batch
            const generate = 24;

            async function run(offsets: number[]) {
                const context = await createKeepKvContext(model, {
                    // 512 tokens a batch: llama.cpp splits it into ubatches of a compression chunk (204)
                    contextSize: 8192, sequences: 4, threads: 2, batchSize: 512, keepKv: { policy: "keepkv", budget: 0.1 }
                });
                try {
                    const sequences = [0, 1, 2, 3].map(() => claimSequence(context));
                    const prompts = lengths.map((n, i) => passage(offsets[i]!, n));
                    const pos = [0, 0, 0, 0];
                    const out: Token[][] = [[], [], [], []];
                    const firstLogits: Float32Array[] = [];
                    while (out.some((o) => o.length < generate)) {
                        const items = [];
                        for (let seq = 0; seq < 4; seq++) {
                            if (out[seq]!.length >= generate)
                                continue;
                            const tokens = pos[seq]! < prompts[seq]!.length
                                ? prompts[seq]!.slice(pos[seq]!, pos[seq]! + chunks[seq]!)
                                : [out[seq]!.at(-1)!];
                            items.push({ seq, pos: pos[seq]!, tokens });
                        }
                        const logits = await rawDecodeMany(context, items);
                        items.forEach((item, i) => {
                            pos[item.seq] += item.tokens.length;
                            if (pos[item.seq]! >= prompts[item.seq]!.length) {
                                out[item.seq]!.push(argmax(logits[i]!) as Token);
                                if (item.seq === 0)
                                    firstLogits.push(logits[i]!.slice());
                            }
                        });
                    }
                    const stats = await keepKvContextStats(context, sequences);
                    for (const s of stats.sequences) {
                        assert.ok(s.compressions > 0, `sequence ${s.sequenceId} was compressed`);
                        assert.ok(s.cellsUsed <= 819, `sequence ${s.sequenceId} holds ${s.cellsUsed} cells`);
                    }
                    return { out, logits: firstLogits };
                } finally {
                    await context.dispose();
                }
            }

            const a = await run([100_000, 1_000_000, 1_900_000, 2_800_000]);
            const b = await run([100_000, 3_500_000, 4_000_000, 600_000]);
            assert.equal(a.logits.length, generate);
            for (let step = 0; step < generate; step++)
                assert.equal(maxAbsDiff(a.logits[step]!, b.logits[step]!), 0, `sequence 0, token ${step}: the logits depend on the neighbours`);
            assert.deepEqual(b.out[0], a.out[0]);
            for (let seq = 1; seq < 4; seq++)
                assert.notDeepEqual(b.out[seq], a.out[seq], `sequence ${seq} held other text in the second run`);
            assert.ok(model.detokenize(a.out[0]!).trim().length > 0);
        });
    });
});
