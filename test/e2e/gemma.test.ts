// Gemma 3 270M (the optional second model of `npm run model:pull gemma3-270m`): a real model whose
// sliding-window attention KeepKV does not support. The server must say so before it loads anything (in
// /v1/models, at startup, at a model switch) and still serve the model with --policy off. SmolLM2 sits beside
// it in the models folder as the model that KeepKV does compress.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { cachedModelPath, defaultChatModelName, knownModels, type PypiModel } from "../../lib/models.js";
import { repoRoot } from "../../lib/paths.js";
import type { WsErrorMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { httpJson, serverEntry, startServer, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";

const gemma = knownModels["gemma3-270m"] as PypiModel;
const smolFile = path.basename(cachedModelPath(defaultChatModelName));
const swa = /sliding-window attention/;

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}

describe("Gemma 3 270M: a sliding-window attention model KeepKV refuses", function () {
    this.timeout(300_000);
    let dir: string;
    // a base model without a chat template: raw completion; one thread and 2048 positions keep it cheap
    const serverArgs = (model: string, ...extra: string[]) =>
        ["--models-dir", dir, "--model", model, "--context-size", "2048", "--threads", "1", "--sequences", "1", "--log-level", "warn", ...extra];

    before(function () {
        // not a skip: the setup command pulls it, so a missing file is a broken setup
        const gemmaPath = cachedModelPath(gemma.name);
        assert.ok(fs.existsSync(gemmaPath), `Gemma 3 270M is not cached at ${gemmaPath}: run npm run model:pull gemma3-270m`);
        assert.equal(fs.statSync(gemmaPath).size, gemma.size, `${gemmaPath} is not the pinned file: run npm run model:pull gemma3-270m`);
        const smolPath = cachedModelPath(defaultChatModelName);
        assert.ok(fs.existsSync(smolPath), `SmolLM2 is not cached at ${smolPath}: run npm run model:pull`);
        // the cache folder itself: a link to a file outside the models folder is refused (outside_models_dir)
        assert.equal(path.dirname(gemmaPath), path.dirname(smolPath));
        dir = path.dirname(gemmaPath);
    });

    describe("beside SmolLM2 on a server with KeepKV", function () {
        let server: ServerHandle;
        before(async function () {
            server = await startServer({ bareArgs: true, args: serverArgs(smolFile, "--policy", "keepkv") });
        });
        after(async function () {
            await server?.stop();
        });

        it("GET /v1/models lists it as gemma3 with keepkv_supported false, because of sliding-window attention", async function () {
            const { status, body } = await httpJson(`${server.url}/v1/models`);
            assert.equal(status, 200);
            const models = body.data as { id: string, valid: boolean, architecture: string, loaded: boolean, keepkv_supported: boolean, keepkv_reason: string | null }[];
            const g = models.find((m) => m.id === gemma.file);
            assert.ok(g != null, `no ${gemma.file} in ${JSON.stringify(models.map((m) => m.id))}`);
            assert.equal(g.valid, true, JSON.stringify(g));
            assert.equal(g.architecture, "gemma3");
            assert.equal(g.loaded, false);
            assert.equal(g.keepkv_supported, false);
            assert.match(g.keepkv_reason ?? "", swa);
            const smol = models.find((m) => m.id === smolFile)!;
            assert.deepEqual([smol.loaded, smol.keepkv_supported, smol.keepkv_reason], [true, true, null], JSON.stringify(smol));
        });

        it("POST /admin/model to it is refused while the policy is keepkv, and SmolLM2 keeps serving", async function () {
            const before = (await httpJson(`${server.url}/health`)).body.engine;
            const { status, body } = await httpJson(`${server.url}/admin/model`, { body: { model: gemma.file } });
            assert.equal(status, 400, JSON.stringify(body));
            assert.equal(body.error.code, "invalid_model");
            assert.match(body.error.message, swa);
            assert.match(body.error.message, new RegExp(`still serving "${smolFile.replace(/\./g, "\\.")}"`));
            const after = (await httpJson(`${server.url}/health`)).body;
            assert.equal(after.model, smolFile);
            assert.equal(after.engine.pid, before.pid, "refused before the engine was touched");
            const client = await WsTestClient.connect(server.wsUrl);
            assert.equal(client.hello.model, smolFile);
            const final = assertFinal(await client.chat({ prompt: "The capital of France is", max_tokens: 8, temperature: 0 }).done);
            assert.ok(final.usage.completion_tokens > 0, JSON.stringify(final));
            assert.equal(final.kv?.policy, "keepkv");
            await client.close();
        });
    });

    describe("at startup", function () {
        it("a server on it with --policy keepkv refuses to start (exit code 2), naming sliding-window attention and --policy off", function () {
            const started = Date.now();
            const run = spawnSync(process.execPath, [serverEntry, "--port", "0", ...serverArgs(gemma.file, "--policy", "keepkv")],
                { cwd: repoRoot, encoding: "utf8", timeout: 120_000 });
            assert.equal(run.status, 2, `exit ${run.status ?? run.signal}:\n${run.stderr}${run.stdout}`);
            assert.match(run.stderr, /--policy/);
            assert.match(run.stderr, swa);
            assert.match(run.stderr, /--policy off/);
            assert.doesNotMatch(run.stdout, /listening/);
            // refused from the file's header, before the engine loads the model
            assert.ok(Date.now() - started < 30_000, `took ${Date.now() - started} ms`);
        });
    });

    describe("a server on it with --policy off", function () {
        let server: ServerHandle;
        before(async function () {
            server = await startServer({ bareArgs: true, args: serverArgs(gemma.file, "--policy", "off") });
        });
        after(async function () {
            await server?.stop();
        });

        it("answers a short WebSocket prompt", async function () {
            const client = await WsTestClient.connect(server.wsUrl);
            assert.equal(client.hello.model, gemma.file);
            const run = client.chat({ prompt: "The capital of France is", max_tokens: 16, temperature: 0 });
            const final = assertFinal(await run.done);
            assert.ok(run.text().trim().length > 0, `empty completion: ${JSON.stringify(final)}`);
            assert.ok(final.usage.completion_tokens > 0);
            assert.equal(final.kv?.policy, "off");
            assert.deepEqual(client.schemaViolations, []);
            await client.close();
        });
    });
});
