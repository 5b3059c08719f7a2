// Faults, each against the real server with the real model: clients that vanish mid-stream, SIGTERM
// with work in flight, a model file deleted or corrupted under the running engine, contexts too large
// for memory (at startup and at a model switch), and prompts beyond what the context allows.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { WsErrorMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { testModelPath, smokeModelPath } from "../../lib/model-paths.js";
import { repoRoot } from "../../lib/paths.js";
import { loadConfig } from "../../server/config/load-config.js";
import { estimateMemory } from "../../server/supervisor/memory-estimate.js";
import { engineSettingsFor } from "../../server/models/engine-settings.js";
import { httpJson, serverEntry, startServer, testServerArgs, waitFor, type ServerHandle } from "../helpers/server-process.js";
import { sseData } from "../../bench/lib/sse.js";
import { WsTestClient, type ChatRun } from "../helpers/ws-client.js";
import { sample } from "../helpers/metrics-text.js";

async function metrics(server: ServerHandle): Promise<string> {
    return await (await fetch(`${server.url}/metrics`)).text();
}

async function firstDelta(run: ChatRun): Promise<void> {
    await waitFor("the first delta", () => run.deltas.length > 0 ? true : undefined, 120_000, 2);
}

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}

/** Nothing runs, nothing waits, no sequence is busy. */
async function allSequencesFree(server: ServerHandle): Promise<void> {
    await waitFor("every sequence free", async () => {
        const slots = (await httpJson(`${server.url}/slots`)).body as { is_processing: boolean }[];
        const text = await metrics(server);
        return slots.every((s) => !s.is_processing) && sample(text, "keepkv_num_requests_running") === 0
            && sample(text, "keepkv_num_requests_waiting") === 0 ? true : undefined;
    }, 30_000, 20);
}

/** Generation has stopped: the token counter does not move for a while. */
async function generationStopped(server: ServerHandle): Promise<number> {
    let last = sample(await metrics(server), "keepkv_generation_tokens_total");
    for (;;) {
        await new Promise((r) => setTimeout(r, 400));
        const now = sample(await metrics(server), "keepkv_generation_tokens_total");
        if (now === last)
            return now;
        last = now;
    }
}

/** POST a streaming chat completion and read SSE events until `stopAfter` content chunks, then abort. */
async function sseChat(server: ServerHandle, body: object, stopAfter: number | null): Promise<{ events: any[], aborted: boolean, done: boolean }> {
    const abort = new AbortController();
    const res = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ stream: true, ...body }), signal: abort.signal
    });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    const events: any[] = [];
    let buffer = "";
    let content = 0;
    let done = false;
    try {
        for (;;) {
            const chunk = await reader.read();
            if (chunk.done)
                break;
            buffer += decoder.decode(chunk.value, { stream: true });
            let at: number;
            while ((at = buffer.indexOf("\n\n")) >= 0) {
                const data = sseData(buffer.slice(0, at));
                buffer = buffer.slice(at + 2);
                if (data == null)
                    continue;
                if (data === "[DONE]") {
                    done = true;
                    continue;
                }
                const event = JSON.parse(data);
                events.push(event);
                if (event.choices?.[0]?.delta?.content)
                    content++;
                if (stopAfter != null && content >= stopAfter) {
                    abort.abort();
                    return { events, aborted: true, done };
                }
            }
        }
    } catch (err) {
        if (!abort.signal.aborted)
            throw err;
        return { events, aborted: true, done };
    }
    return { events, aborted: false, done };
}

function alive(pid: number): boolean {
    try {
        process.kill(pid, 0);
        return true;
    } catch {
        return false;
    }
}

describe("faults: clients that disconnect mid-stream", function () {
    let server: ServerHandle;
    before(async function () {
        // one sequence: a freed sequence is the one the next request gets
        server = await startServer({ args: ["--sequences", "1"] });
    });
    after(async function () {
        await server?.stop();
    });

    const cases: { name: string, hangUp: () => Promise<void> }[] = [
        {
            name: "a WebSocket client that drops its connection",
            hangUp: async () => {
                const client = await WsTestClient.connect(server.wsUrl);
                const run = client.chat({ prompt: "Once upon a time", max_tokens: 1900 });
                await firstDelta(run);
                client.ws.terminate();
            }
        },
        {
            name: "an HTTP client that aborts a streaming completion",
            hangUp: async () => {
                const result = await sseChat(server, { messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 1900 }, 3);
                assert.ok(result.aborted);
            }
        },
        {
            name: "an HTTP client that aborts a non-streaming completion",
            hangUp: async () => {
                const abort = new AbortController();
                const pending = fetch(`${server.url}/v1/completions`, {
                    method: "POST", headers: { "Content-Type": "application/json" },
                    body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 1900 }), signal: abort.signal
                }).catch((err: Error) => err);
                await waitFor("the request to run", async () => sample(await metrics(server), "keepkv_num_requests_running") === 1 ? true : undefined, 30_000, 5);
                await waitFor("tokens", async () => sample(await metrics(server), "keepkv_generation_tokens_total") > 0 ? true : undefined, 30_000, 5);
                abort.abort();
                assert.ok((await pending) instanceof Error);
            }
        }
    ];

    for (const c of cases)
        it(`${c.name}: generation stops, the sequence is freed, the request counts as cancelled`, async function () {
            const before = await metrics(server);
            const tokensBefore = sample(before, "keepkv_generation_tokens_total");
            await c.hangUp();
            await allSequencesFree(server);
            const stoppedAt = await generationStopped(server);
            const after = await metrics(server);
            assert.equal(sample(after, "keepkv_request_success_total", 'finished_reason="cancel"') - sample(before, "keepkv_request_success_total", 'finished_reason="cancel"'), 1,
                "exactly one more cancelled request");
            for (const reason of ["stop", "length", "error", "shutdown"])
                assert.equal(sample(after, "keepkv_request_success_total", `finished_reason="${reason}"`), sample(before, "keepkv_request_success_total", `finished_reason="${reason}"`), reason);
            assert.ok(stoppedAt - tokensBefore < 1900, `generation stopped early (${stoppedAt - tokensBefore} tokens of 1900)`);
            // the next request gets the freed sequence at once
            const client = await WsTestClient.connect(server.wsUrl);
            const next = client.chat({ prompt: "The next day", max_tokens: 8 });
            assert.equal((await next.start).queue_position, 0);
            assertFinal(await next.done);
            await client.close();
        });
});

describe("faults: SIGTERM with requests in flight", function () {
    it("drains: short requests finish, long ones end with shutdown (WebSocket and SSE), queued ones too; nothing new is accepted; exit 0 and the engine is gone", async function () {
        const server = await startServer({ args: ["--sequences", "3", "--shutdown-grace", "3"] });
        const enginePid = (await httpJson(`${server.url}/health`)).body.engine.pid as number;
        const client = await WsTestClient.connect(server.wsUrl);
        const long = client.chat({ prompt: "Once upon a time", max_tokens: 1900 });
        const sse = sseChat(server, { messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 1900 }, null);
        const nonStreaming = httpJson(`${server.url}/v1/completions`, { body: { prompt: "One day", max_tokens: 1900 } });
        await firstDelta(long);
        await waitFor("three running", async () => sample(await metrics(server), "keepkv_num_requests_running") === 3 ? true : undefined, 30_000, 10);
        const queued = client.chat({ prompt: "Later", max_tokens: 5 });
        assert.equal((await queued.start).queue_position, 1);

        const exit = server.stop("SIGTERM");
        // during the drain: no new connections, no new requests on open sockets
        await waitFor("the listener to close", async () => {
            try {
                await fetch(`${server.url}/health`);
                return undefined;
            } catch {
                return true;
            }
        }, 10_000, 20);
        const refused = client.chat({ prompt: "too late", max_tokens: 5 });
        const refusal = await refused.done;
        assert.equal(refusal.type, "error");
        assert.equal((refusal as WsErrorMessage).code, "shutting_down");

        assert.equal(assertFinal(await queued.done).finish_reason, "shutdown");
        const longFinal = assertFinal(await long.done);
        assert.equal(longFinal.finish_reason, "shutdown");
        assert.ok(longFinal.usage.completion_tokens > 0 && longFinal.usage.completion_tokens < 1900);
        const stream = await sse;
        assert.equal(stream.done, true, "the SSE stream ends with data: [DONE]");
        assert.equal(stream.events.at(-1).choices[0].finish_reason, "shutdown");
        const plain = await nonStreaming;
        assert.equal(plain.status, 200);
        assert.equal(plain.body.choices[0].finish_reason, "shutdown");
        assert.ok(plain.body.usage.completion_tokens > 0, JSON.stringify(plain.body));
        assert.equal((await client.closed).code, 1001);
        assert.deepEqual(await exit, { code: 0, signal: null });
        assert.equal(alive(enginePid), false, "the engine process exited with the server");
        assert.deepEqual(client.schemaViolations, []);
    });
});

describe("faults: the engine killed again and again under load", function () {
    it("every request ends with a final (served, or engine_restarted), the server stays up, nothing leaks", async function () {
        const server = await startServer({ args: ["--sequences", "4"] });
        try {
            const clients = await Promise.all(Array.from({ length: 6 }, () => WsTestClient.connect(server.wsUrl)));
            const outcomes: Record<string, number> = {};
            let stop = false;
            const loops = clients.map(async (client, i) => {
                while (!stop) {
                    const result = await client.chat({ prompt: `Story ${i}: once upon a time`, max_tokens: 20 + 40 * (i % 3) }).done;
                    const key = result.type === "error" ? `refused:${result.code}` : result.finish_reason === "error" ? `error:${result.error?.code}` : result.finish_reason;
                    outcomes[key] = (outcomes[key] ?? 0) + 1;
                }
            });
            for (let kill = 0; kill < 3; kill++) {
                await new Promise((r) => setTimeout(r, 1500));
                const health = await waitFor("the engine to serve", async () => {
                    const res = await httpJson(`${server.url}/health`);
                    return res.status === 200 ? res.body : undefined;
                }, 60_000, 20);
                process.kill(health.engine.pid, "SIGKILL");
            }
            await waitFor("the engine to serve", async () => (await httpJson(`${server.url}/health`)).status === 200 ? true : undefined, 60_000, 20);
            await new Promise((r) => setTimeout(r, 1000));
            stop = true;
            await Promise.all(loops);
            assert.deepEqual(Object.keys(outcomes).filter((k) => !["stop", "length", "error:engine_restarted"].includes(k)), [], JSON.stringify(outcomes));
            assert.ok((outcomes["error:engine_restarted"] ?? 0) > 0 && (outcomes.length ?? 0) + (outcomes.stop ?? 0) > 0, JSON.stringify(outcomes));
            for (const client of clients) {
                assert.deepEqual(client.schemaViolations, []);
                await client.close();
            }
            await allSequencesFree(server);
            const health = (await httpJson(`${server.url}/health`)).body;
            assert.equal(health.engine.restarts, 3);
            assert.equal(sample(await metrics(server), "keepkv_engine_restarts_total"), 3);
        } finally {
            assert.deepEqual(await server.stop(), { code: 0, signal: null });
        }
    });
});

describe("faults: the model file is deleted or corrupted while the server runs", function () {
    let dir: string;
    let modelFile: string;
    let server: ServerHandle;
    const restore = () => {
        const tmp = `${modelFile}.restoring`;
        fs.copyFileSync(testModelPath(), tmp);
        fs.renameSync(tmp, modelFile);
    };
    const killEngine = async () => {
        const pid = (await httpJson(`${server.url}/health`)).body.engine.pid as number;
        process.kill(pid, "SIGKILL");
        return pid;
    };
    const chatWorks = async () => {
        const client = await WsTestClient.connect(server.wsUrl);
        const final = assertFinal(await client.chat({ prompt: "Once upon a time", max_tokens: 8 }).done);
        assert.ok(final.usage.completion_tokens > 0);
        await client.close();
    };
    const healthBody = async () => (await httpJson(`${server.url}/health`)).body;
    const waitServing = async () => await waitFor("the engine to serve again", async () => {
        const res = await httpJson(`${server.url}/health`);
        return res.status === 200 ? res.body : undefined;
    }, 120_000, 100);
    const waitStartFailure = async (pattern: RegExp) => await waitFor("a failed restart", async () => {
        const body = await healthBody();
        return body.engine.last_start_error != null && pattern.test(body.engine.last_start_error.message) ? body : undefined;
    }, 60_000, 50);

    beforeEach(async function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-faults-"));
        modelFile = path.join(dir, "model.gguf");
        fs.copyFileSync(testModelPath(), modelFile);
        server = await startServer({ args: ["--sequences", "1", "--model", modelFile] });
    });
    afterEach(async function () {
        await server?.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it("deleted: the engine keeps serving what it loaded; a restart then fails with a clear error, requests fail fast with engine_unavailable, and the file coming back brings the engine back", async function () {
        fs.unlinkSync(modelFile);
        await chatWorks();
        assert.equal((await healthBody()).engine.model_file, "missing");
        await waitFor("the log warning", () => /the model file was deleted/.test(server.output()) ? true : undefined, 10_000);

        const client = await WsTestClient.connect(server.wsUrl);
        const running = client.chat({ prompt: "Once upon a time", max_tokens: 1900 });
        await firstDelta(running);
        await killEngine();
        const lost = assertFinal(await running.done);
        assert.equal(lost.error?.code, "engine_restarted");

        const failed = await waitStartFailure(/model\.gguf cannot be loaded: cannot read the file: ENOENT/);
        assert.equal(failed.error.message, "Engine unavailable");
        // requests fail at once with the reason instead of waiting out the queue timeout
        const t0 = Date.now();
        const refused = await client.chat({ prompt: "Hello", max_tokens: 5 }).done;
        assert.equal(refused.type, "error");
        assert.equal((refused as WsErrorMessage).code, "engine_unavailable");
        assert.match((refused as WsErrorMessage).message, /model\.gguf cannot be loaded: cannot read the file/);
        assert.ok(Date.now() - t0 < 5000);
        const http = await httpJson(`${server.url}/v1/chat/completions`, { body: { messages: [{ role: "user", content: "Hi" }], max_tokens: 5 } });
        assert.equal(http.status, 503);
        assert.equal(http.body.error.code, "engine_unavailable");

        restore();
        const back = await waitServing();
        assert.equal(back.engine.last_start_error, null);
        assert.equal(back.engine.model_file, "ok");
        await chatWorks();
        const text = await metrics(server);
        assert.ok(sample(text, "keepkv_model_loads_total", 'result="failure"') >= 1);
        assert.equal(sample(text, "keepkv_engine_up"), 1);
        assert.deepEqual(client.schemaViolations, []);
        await client.close();
    });

    it("truncated in place: the engine dies (SIGBUS) mid-stream, the client gets engine_restarted, the restart refuses the truncated file with a clear error; restored, it serves again", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const running = client.chat({ prompt: "Once upon a time", max_tokens: 1900 });
        await firstDelta(running);
        fs.truncateSync(modelFile, 1_000_000);
        // the weights were mapped from the file: touching the pages past the new end kills the engine
        const lost = assertFinal(await running.done);
        assert.equal(lost.finish_reason, "error");
        assert.equal(lost.error?.code, "engine_restarted");
        const failed = await waitStartFailure(/truncated: the tensors need \d+ bytes, the file has 1000000/);
        assert.equal(failed.engine.last_exit.signal, "SIGBUS");
        const refused = await client.chat({ prompt: "Hello", max_tokens: 5 }).done;
        assert.equal((refused as WsErrorMessage).code, "engine_unavailable");
        assert.match((refused as WsErrorMessage).message, /truncated/);

        restore();
        await waitServing();
        await chatWorks();
        await client.close();
    });

    it("replaced by a file that is not a model: the engine keeps serving (it maps the old file); a restart refuses the new one with a clear error", async function () {
        const junk = path.join(dir, "junk");
        fs.writeFileSync(junk, "not a model\n".repeat(1000));
        fs.renameSync(junk, modelFile);
        await chatWorks();
        assert.equal((await healthBody()).engine.model_file, "changed");
        await waitFor("the log warning", () => /the model file changed on disk/.test(server.output()) ? true : undefined, 10_000);
        await killEngine();
        await waitStartFailure(/not a GGUF file/);
        const client = await WsTestClient.connect(server.wsUrl);
        const refused = await client.chat({ prompt: "Hello", max_tokens: 5 }).done;
        assert.equal((refused as WsErrorMessage).code, "engine_unavailable");
        assert.match((refused as WsErrorMessage).message, /not a GGUF file/);
        restore();
        await waitServing();
        await chatWorks();
        await client.close();
    });
});

describe("faults: a context that cannot be allocated", function () {
    const runServer = (args: string[], shellPrefix = "") => {
        const command = `${shellPrefix}exec ${JSON.stringify(process.execPath)} ${[serverEntry, "--port", "0", ...testServerArgs, ...args].map((a) => JSON.stringify(a)).join(" ")}`;
        const t0 = Date.now();
        const result = spawnSync("sh", ["-c", command], { cwd: repoRoot, encoding: "utf8", timeout: 180_000 });
        return { status: result.status, stderr: result.stderr, stdout: result.stdout, seconds: (Date.now() - t0) / 1000 };
    };

    it("at startup, sequences or a context too large for memory stop the server before anything loads, naming the options", function () {
        // without compression: the full context is what does not fit
        const tooMany = runServer(["--sequences", "256", "--context-size", "1000000", "--policy", "off"]);
        assert.equal(tooMany.status, 2, tooMany.stderr);
        assert.match(tooMany.stderr, /--context-size .*cannot fit in memory .*KV cache [\d.]+ GiB for 256 sequences x context 1000000 cells.*available; lower --sequences, --budget or --context-size/s);
        assert.doesNotMatch(tooMany.stdout, /listening/, "nothing listened");

        const budget = runServer(["--sequences", "64", "--context-size", "4000000", "--policy", "keepkv", "--budget", "2000000", "--batch-size", "16"]);
        assert.equal(budget.status, 2, budget.stderr);
        assert.match(budget.stderr, /--budget .*cannot fit in memory .*64 sequences x budget 2000000 cells/s);

        const limited = runServer(["--sequences", "8", "--memory-limit", String(50 * 2 ** 20), "--policy", "off"]);
        assert.equal(limited.status, 2, limited.stderr);
        assert.match(limited.stderr, /more than the memory-limit 0\.049 GiB/);
    });

    it("at startup, an allocation that llama.cpp itself cannot make fails with llama.cpp's reason and exit code 1", function () {
        // the estimate fits this machine, but the address space is limited to 3 GiB: the 6 GiB KV buffer cannot be allocated
        const result = runServer(["--sequences", "64", "--context-size", "65536", "--policy", "keepkv", "--budget", "65536", "--batch-size", "16"],
            "ulimit -v 3000000 && ");
        assert.equal(result.status, 1, result.stderr);
        assert.match(result.stderr, /keepkv: .*failed to (allocate|initialize the context)/s);
        assert.doesNotMatch(result.stderr, /at .*\.js:\d+/, "a message, not a stack trace");
    });

    describe("at a model switch", function () {
        let dir: string;
        let server: ServerHandle;
        before(async function () {
            dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-switch-"));
            fs.symlinkSync(testModelPath(), path.join(dir, "stories3M-q8_0.gguf"));
            // a copy: a model switch accepts only files whose real path is in the models folder
            fs.copyFileSync(smokeModelPath(), path.join(dir, "stories260K.gguf"));
            // 64 sequences of the model's own context: stories3M (512 tokens) fits the limit, stories260K
            // (2048 tokens per sequence) does not, beside it
            server = await startServer({
                bareArgs: true,
                args: ["--threads", "1", "--log-level", "warn", "--models-dir", dir, "--model", "stories3M-q8_0.gguf",
                    "--sequences", "64", "--policy", "keepkv", "--budget", "none", "--memory-limit", String(200 * 2 ** 20)]
            });
        });
        after(async function () {
            await server?.stop();
            fs.rmSync(dir, { recursive: true, force: true });
        });

        it("a model whose context does not fit is refused with insufficient_memory; the previous model keeps serving in the same engine", async function () {
            const before = (await httpJson(`${server.url}/health`)).body.engine;
            const { status, body } = await httpJson(`${server.url}/admin/model`, { body: { model: "stories260K.gguf" } });
            assert.equal(status, 400, JSON.stringify(body));
            assert.equal(body.error.code, "insufficient_memory");
            assert.match(body.error.message, /64 sequences x context 2048 cells/);
            assert.match(body.error.message, /memory-limit/);
            assert.match(body.error.message, /still serving "stories3M-q8_0.gguf"/);
            const after = (await httpJson(`${server.url}/health`)).body;
            assert.equal(after.model, "stories3M-q8_0.gguf");
            assert.equal(after.engine.pid, before.pid);
            assert.equal(after.engine.restarts, 0);
            const client = await WsTestClient.connect(server.wsUrl);
            assert.equal(client.hello.model, "stories3M-q8_0.gguf");
            assert.ok(assertFinal(await client.chat({ prompt: "Once upon a time", max_tokens: 8 }).done).usage.completion_tokens > 0);
            await client.close();
            assert.equal(sample(await metrics(server), "keepkv_model_loads_total", 'result="failure"'), 1);
        });

        it("the estimate it decides by matches the KV memory llama.cpp allocates", async function () {
            const kv = (await httpJson(`${server.url}/v1/kv`)).body;
            const config = loadConfig(["--models-dir", dir, "--model", path.join(dir, "stories3M-q8_0.gguf"), "--sequences", "64", "--policy", "keepkv", "--budget", "none"], {}).config;
            const estimate = await estimateMemory(engineSettingsFor(config, path.join(dir, "stories3M-q8_0.gguf"), 512));
            assert.equal(kv.kv_bytes_allocated, estimate!.kvBytes);
            // with a budget: the budget's cells per sequence
            const budgeted = loadConfig(["--sequences", "8", "--policy", "keepkv", "--budget", "64", "--batch-size", "16", "--context-size", "1024"], {}).config;
            const small = await estimateMemory(engineSettingsFor(budgeted, testModelPath(), 512));
            assert.equal(small!.kvCells, 8 * 64);
        });
    });
});

describe("faults: a prompt beyond what the budget and the logical context allow", function () {
    let server: ServerHandle;
    before(async function () {
        server = await startServer({
            bareArgs: true,
            args: ["--model", testModelPath(), "--threads", "1", "--log-level", "warn", "--sequences", "2", "--context-size", "512",
                "--policy", "keepkv", "--budget", "64", "--batch-size", "16"]
        });
    });
    after(async function () {
        await server?.stop();
    });

    it("is refused with prompt_too_long (WebSocket and HTTP) while another stream goes on untouched", async function () {
        const bystander = await WsTestClient.connect(server.wsUrl);
        const stream = bystander.chat({ prompt: "Once upon a time", max_tokens: 400, temperature: 0 });
        await firstDelta(stream);

        const client = await WsTestClient.connect(server.wsUrl);
        const tooLong = "the cat sat on the mat. ".repeat(200);
        const ws = assertFinal(await client.chat({ prompt: tooLong, max_tokens: 5 }).done);
        assert.equal(ws.finish_reason, "error");
        assert.equal(ws.error?.code, "prompt_too_long");
        assert.match(ws.error!.message, /the prompt has \d+ tokens; at most 511 fit \(context size 512\)/);
        const http = await httpJson(`${server.url}/v1/chat/completions`, { body: { messages: [{ role: "user", content: tooLong }], max_tokens: 5 } });
        assert.equal(http.status, 400);
        assert.equal(http.body.error.code, "prompt_too_long");

        const final = assertFinal(await stream.done);
        assert.ok(["stop", "length"].includes(final.finish_reason));
        stream.deltas.forEach((d, i) => assert.equal(d.seq, i, "the bystander's stream has no gap"));
        assert.equal(stream.deltas.reduce((a, d) => a + d.tokens, 0), final.usage.completion_tokens);
        await allSequencesFree(server);
        const health = (await httpJson(`${server.url}/health`)).body;
        assert.equal(health.engine.restarts, 0);
        // (and the memory estimate of a budgeted context is what llama.cpp allocated)
        const kv = (await httpJson(`${server.url}/v1/kv`)).body;
        const config = loadConfig(["--sequences", "2", "--context-size", "512", "--policy", "keepkv", "--budget", "64", "--batch-size", "16"], {}).config;
        assert.equal(kv.kv_bytes_allocated, (await estimateMemory(engineSettingsFor(config, testModelPath(), 512)))!.kvBytes);
        assert.deepEqual([...bystander.schemaViolations, ...client.schemaViolations], []);
        await bystander.close();
        await client.close();
    });

    it("a prompt longer than the budget but within the context is compressed and served; at the end of the context generation stops with length", async function () {
        const client = await WsTestClient.connect(server.wsUrl);
        const long = "Once upon a time, there was a little girl named Lily. She loved to play outside. ".repeat(20);
        const final = assertFinal(await client.chat({ prompt: long, max_tokens: 20, temperature: 0 }).done);
        assert.ok(["stop", "length"].includes(final.finish_reason));
        assert.ok(final.usage.prompt_tokens > 64 * 4, `prompt of ${final.usage.prompt_tokens} tokens, budget 64`);
        assert.ok(final.kv!.compressions > 0);
        assert.ok(final.kv!.cells_used <= 64, `${final.kv!.cells_used} cells within the budget`);

        // prompt + max_tokens beyond the context: generation ends at the context's end
        const nearFull = "Once upon a time, there was a little girl named Lily. She loved to play outside. ".repeat(24);
        const capped = assertFinal(await client.chat({ prompt: nearFull, max_tokens: 400, temperature: 0.8 }).done);
        assert.ok(["stop", "length"].includes(capped.finish_reason), JSON.stringify(capped));
        assert.ok(capped.usage.prompt_tokens + capped.usage.completion_tokens <= 512);
        await client.close();
    });
});
