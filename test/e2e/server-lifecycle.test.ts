import assert from "node:assert/strict";
import type { WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { httpJson, startServer, waitFor, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient, type ChatRun } from "../helpers/ws-client.js";

async function firstDelta(run: ChatRun): Promise<void> {
    await waitFor("the first delta", () => run.deltas.length > 0 ? true : undefined, 120_000, 2);
}

describe("server lifecycle", function () {
    it("answers 503 'Loading model' in llama-server's shape until the model is loaded", async function () {
        const server = await startServer({ args: ["--sequences", "1"], waitReady: false });
        try {
            // the listener is up before the engine: the first answer is 503 or, on a fast machine, already 200
            const first = await httpJson(`${server.url}/health`);
            if (first.status === 503)
                assert.deepEqual(first.body.error, { code: 503, message: "Loading model", type: "unavailable_error" });
            else
                assert.equal(first.status, 200);
            const ready = await waitFor("health 200", async () => {
                const res = await httpJson(`${server.url}/health`);
                return res.status === 200 ? res.body : undefined;
            });
            assert.equal(ready.status, "ok");
        } finally {
            await server.stop();
        }
    });

    it("SIGTERM with a request in flight: it ends with finish reason shutdown and the server exits 0", async function () {
        const server = await startServer({ args: ["--sequences", "2", "--shutdown-grace", "0"] });
        const client = await WsTestClient.connect(server.wsUrl);
        const running = client.chat({ prompt: "Once upon a time", max_tokens: 1800 });
        await firstDelta(running);
        const exit = server.stop("SIGTERM");
        const final = await running.done as WsFinalMessage;
        assert.equal(final.type, "final");
        assert.equal(final.finish_reason, "shutdown");
        assert.ok(final.usage.completion_tokens > 0 && final.usage.completion_tokens < 1800);
        const closed = await client.closed;
        assert.equal(closed.code, 1001);
        assert.deepEqual(await exit, { code: 0, signal: null });
        assert.deepEqual(client.schemaViolations, []);
    });

    it("SIGTERM lets short requests finish within the grace time", async function () {
        const server = await startServer({ args: ["--sequences", "2", "--shutdown-grace", "30"] });
        const client = await WsTestClient.connect(server.wsUrl);
        const running = client.chat({ prompt: "Once upon a time", max_tokens: 40 });
        await running.start;
        const exit = server.stop("SIGINT");
        const final = await running.done as WsFinalMessage;
        assert.ok(["stop", "length"].includes(final.finish_reason), JSON.stringify(final));
        assert.equal(final.usage.completion_tokens <= 40, true);
        assert.deepEqual(await exit, { code: 0, signal: null });
    });

    describe("engine supervision", function () {
        let server: ServerHandle;
        before(async function () {
            server = await startServer({ args: ["--sequences", "2"] });
        });
        after(async function () {
            await server?.stop();
        });

        it("SIGKILL of the engine mid-stream: the client gets engine_restarted, the server stays up and reports the restart, the next request succeeds", async function () {
            const health = await httpJson(`${server.url}/health`);
            const enginePid = health.body.engine.pid as number;
            assert.ok(enginePid > 0 && enginePid !== server.proc.pid);

            const client = await WsTestClient.connect(server.wsUrl);
            const running = client.chat({ prompt: "Once upon a time", max_tokens: 1800 });
            await firstDelta(running);
            process.kill(enginePid, "SIGKILL");
            const final = await running.done as WsFinalMessage;
            assert.equal(final.type, "final");
            assert.equal(final.finish_reason, "error");
            assert.equal(final.error?.code, "engine_restarted");
            assert.match(final.error!.message, /SIGKILL/);
            assert.ok(final.usage.completion_tokens > 0);

            // the socket and the server survive; the engine comes back
            const after = await waitFor("the engine to come back", async () => {
                const res = await httpJson(`${server.url}/health`);
                return res.status === 200 ? res.body : undefined;
            });
            assert.equal(after.engine.restarts, 1);
            assert.notEqual(after.engine.pid, enginePid);
            assert.equal(after.engine.last_exit.signal, "SIGKILL");
            assert.equal(after.engine.last_exit.reason, "crashed");

            const next = client.chat({ prompt: "The next day", max_tokens: 20 });
            const nextFinal = await next.done as WsFinalMessage;
            assert.equal(nextFinal.type, "final");
            assert.ok(["stop", "length"].includes(nextFinal.finish_reason));
            assert.ok(next.text().length > 0);

            const metrics = await (await fetch(`${server.url}/metrics`)).text();
            assert.match(metrics, /^keepkv_engine_restarts_total 1$/m);
            assert.match(metrics, /^keepkv_engine_up 1$/m);
            assert.match(metrics, /keepkv_request_errors_total\{code="engine_restarted"\} 1/);
            assert.deepEqual(client.schemaViolations, []);
            await client.close();
        });

        it("requests that arrive while the engine restarts wait in the queue and are served", async function () {
            const enginePid = (await httpJson(`${server.url}/health`)).body.engine.pid as number;
            process.kill(enginePid, "SIGKILL");
            await waitFor("the server to notice", async () => (await httpJson(`${server.url}/health`)).status === 503 ? true : undefined, 30_000, 10);
            const client = await WsTestClient.connect(server.wsUrl);
            const run = client.chat({ prompt: "Once upon a time", max_tokens: 10 });
            const final = await run.done as WsFinalMessage;
            assert.equal(final.type, "final", JSON.stringify(final));
            assert.ok(["stop", "length"].includes(final.finish_reason));
            assert.equal((await httpJson(`${server.url}/health`)).body.engine.restarts, 2);
            await client.close();
        });
    });

    it("an engine that hangs (SIGSTOP) is killed by the watchdog and restarted", async function () {
        const server = await startServer({ args: ["--sequences", "1", "--engine-stall-timeout", "2"] });
        try {
            const enginePid = (await httpJson(`${server.url}/health`)).body.engine.pid as number;
            const client = await WsTestClient.connect(server.wsUrl);
            const running = client.chat({ prompt: "Once upon a time", max_tokens: 1800 });
            await firstDelta(running);
            process.kill(enginePid, "SIGSTOP");
            const final = await running.done as WsFinalMessage;
            assert.equal(final.finish_reason, "error");
            assert.equal(final.error?.code, "engine_restarted");
            assert.match(final.error!.message, /stopped responding/);
            const health = await waitFor("the engine to come back", async () => {
                const res = await httpJson(`${server.url}/health`);
                return res.status === 200 ? res.body : undefined;
            });
            assert.equal(health.engine.restarts, 1);
            assert.equal(health.engine.last_exit.reason, "stalled");
            const next = await client.chat({ prompt: "Then", max_tokens: 5 }).done as WsFinalMessage;
            assert.equal(next.type, "final");
            await client.close();
        } finally {
            await server.stop();
        }
    });

    it("an unusable model file stops startup with a message naming --model", async function () {
        await assert.rejects(startServer({ args: ["--model", "/dev/null"] }), /--model .*not a regular file/s);
    });
});
