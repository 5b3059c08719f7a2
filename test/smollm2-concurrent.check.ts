// A reproducer of an open defect, not part of npm test: 4 concurrent sequences of about 7,300 tokens under a
// 10% budget on SmolLM2 do not produce what each produces alone (measured 2026-12-03: 3 of 4 differ, one with
// a word of another sequence's text). Run it with `npm run check:concurrent-8k`; it takes about 6 minutes.
// It belongs back in test/smollm2.test.ts once the cause is found and fixed.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import type { WsErrorMessage, WsFinalMessage } from "../server/protocol/ws-messages.js";
import { ensureKjvText } from "../scripts/lib/long-text.js";
import { startServer, type ServerHandle } from "./helpers/server-process.js";
import { smolArgs } from "./helpers/smollm2.js";
import { WsTestClient } from "./helpers/ws-client.js";

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}


describe("SmolLM2-135M-Instruct, concurrent long sequences (open defect)", function () {
    describe("4 concurrent sequences of 8k tokens under budgets", function () {
        it("each produces exactly what it produces alone", async function () {
            this.timeout(1_800_000);
            const text = fs.readFileSync(ensureKjvText(), "utf8");
            // four passages from far apart in the text, each about 7,500 tokens, continued greedily
            const prompts = [0, 1, 2, 3].map((i) => text.slice(200_000 + i * 900_000, 200_000 + i * 900_000 + 30_000));
            // two threads: 60,000 prompt tokens in all, and nothing else runs beside the suite
            const args = smolArgs("--sequences", "4", "--policy", "keepkv", "--budget", "0.1", "--threads", "2");
            const generate = async (server: ServerHandle, client: WsTestClient, prompt: string) => {
                const started = Date.now();
                const run = client.chat({ prompt, max_tokens: 24, temperature: 0 }, { timeoutMs: 1_200_000 });
                const final = assertFinal(await run.done);
                assert.ok(final.usage.prompt_tokens > 6500 && final.usage.prompt_tokens < 8192 - 24, `${final.usage.prompt_tokens} prompt tokens`);
                assert.equal(final.usage.cached_tokens, 0, "each prompt is evaluated from scratch");
                assert.ok(final.kv!.compressions > 0 && final.kv!.cells_used <= final.kv!.budget!, JSON.stringify(final.kv));
                process.stderr.write(`      ${final.usage.prompt_tokens} prompt tokens in ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
                return run.text();
            };

            // alone: one request at a time, on a server of its own (so no cached prefix carries over)
            const single = await startServer({ bareArgs: true, args });
            const alone: string[] = [];
            try {
                const client = await WsTestClient.connect(single.wsUrl);
                for (const prompt of prompts)
                    alone.push(await generate(single, client, prompt));
                await client.close();
            } finally {
                await single.stop();
            }

            const batched = await startServer({ bareArgs: true, args });
            try {
                const clients = await Promise.all(prompts.map(() => WsTestClient.connect(batched.wsUrl)));
                const together = await Promise.all(prompts.map((prompt, i) => generate(batched, clients[i]!, prompt)));
                assert.deepEqual(together, alone);
                assert.ok(alone.every((t) => t.trim().length > 0));
                await Promise.all(clients.map((c) => c.close()));
            } finally {
                await batched.stop();
            }
        });
    });
});
