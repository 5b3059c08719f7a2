import assert from "node:assert/strict";
import type { WsErrorMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { startServer, waitFor } from "../helpers/server-process.js";
import { WsTestClient, type ChatRun } from "../helpers/ws-client.js";

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}

describe("concurrency with KeepKV on (the product's default policy)", function () {
    // A request reads its sequence's KeepKV statistics when it starts and when it ends. Read under
    // node-llama-cpp's context lock, which the batch dispatch holds while decodes stay queued, those reads made
    // a short request wait until the long ones beside it had finished.
    it("a short request finishes while two long ones keep generating, with its KeepKV statistics", async function () {
        const server = await startServer({ args: ["--policy", "keepkv", "--sequences", "3"] });
        try {
            const client = await WsTestClient.connect(server.wsUrl);
            const long = [
                client.chat({ prompt: "Once upon a time", max_tokens: 1900 }),
                client.chat({ prompt: "One day, a little girl", max_tokens: 1900 })
            ];
            const ended: ChatRun[] = [];
            for (const run of long)
                void run.done.then(() => ended.push(run));
            for (const run of long)
                await waitFor("the first delta", () => run.deltas.length > 0 ? true : undefined, 120_000, 2);

            const short = assertFinal(await client.chat({ prompt: "Later that day", max_tokens: 3 }).done);
            assert.equal(short.usage.completion_tokens, 3);
            assert.deepEqual(ended, [], "neither long request had ended when the short one finished");
            const tokensThen = long.map((run) => run.deltas.length);
            assert.equal(short.kv?.policy, "keepkv");
            assert.ok((short.kv?.cells_used ?? 0) > 0, `the short request reports its cells: ${JSON.stringify(short.kv)}`);

            // and the long ones go on generating after it
            await waitFor("more tokens of the long requests", () =>
                long.every((run, i) => run.deltas.length > tokensThen[i]!) ? true : undefined, 60_000, 10);
            for (const run of long) {
                const final = assertFinal(await run.done);
                assert.ok(final.usage.completion_tokens > 3);
                assert.ok((final.kv?.cells_used ?? 0) > 0);
            }
            assert.deepEqual(client.schemaViolations, []);
            await client.close();
        } finally {
            await server.stop();
        }
    });
});
