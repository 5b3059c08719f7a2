import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { testModelPath, smokeModelPath } from "../../lib/model-paths.js";
import { inspectModelFile } from "../../server/models/gguf-inspect.js";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";
import type { WsFinalMessage } from "../../server/protocol/ws-messages.js";

type ModelEntry = { id: string, valid: boolean, error: string | null, error_code: string | null, loaded: boolean, architecture: string | null, context_length: number | null, size_bytes: number, keepkv_supported: boolean };

describe("model drop-in", function () {
    let dir: string;
    let outsideDir: string;
    let server: ServerHandle;

    before(async function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-models-"));
        // the startup model may be a link to anywhere (the operator named it); any other file must lie in the folder
        fs.symlinkSync(testModelPath(), path.join(dir, "stories3M-q8_0.gguf"));
        fs.copyFileSync(smokeModelPath(), path.join(dir, "stories260K.gguf"));
        fs.symlinkSync(path.join(dir, "stories260K.gguf"), path.join(dir, "link-inside.gguf"));
        outsideDir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-elsewhere-"));
        fs.copyFileSync(smokeModelPath(), path.join(outsideDir, "elsewhere.gguf"));
        fs.symlinkSync(path.join(outsideDir, "elsewhere.gguf"), path.join(dir, "link-outside.gguf"));
        fs.symlinkSync(path.join(dir, "nothing-there"), path.join(dir, "dangling.gguf"));
        fs.mkdirSync(path.join(dir, "folder.gguf"));
        assert.equal(spawnSync("mkfifo", [path.join(dir, "fifo.gguf")]).status, 0);
        fs.writeFileSync(path.join(dir, "empty.gguf"), "");
        fs.copyFileSync(smokeModelPath(), path.join(dir, "not-a-gguf-name.bin"));
        // a download cut in the middle: the header is intact, the tensor data is not
        const full = fs.readFileSync(testModelPath());
        fs.writeFileSync(path.join(dir, "truncated.gguf"), full.subarray(0, Math.floor(full.length / 2)));
        // cut inside the header
        fs.writeFileSync(path.join(dir, "header-cut.gguf"), full.subarray(0, 5000));
        fs.writeFileSync(path.join(dir, "notes.gguf"), "these are not the weights you are looking for\n");
        // a valid GGUF of an architecture this llama.cpp does not know: general.architecture = "zzzzz"
        const small = Buffer.from(fs.readFileSync(smokeModelPath()));
        const key = small.indexOf("general.architecture");
        const value = key + "general.architecture".length + 4 + 8; // key, then u32 type, u64 length
        assert.equal(small.subarray(value, value + 5).toString(), "llama");
        small.write("zzzzz", value);
        fs.writeFileSync(path.join(dir, "unsupported.gguf"), small);
        server = await startServer({ args: ["--sequences", "2", "--models-dir", dir, "--model", "stories3M-q8_0.gguf"] });
    });
    after(async function () {
        await server?.stop();
        fs.rmSync(dir, { recursive: true, force: true });
        fs.rmSync(outsideDir, { recursive: true, force: true });
    });

    async function models(): Promise<Map<string, ModelEntry>> {
        const { status, body } = await httpJson(`${server.url}/v1/models`);
        assert.equal(status, 200);
        assert.equal(body.object, "list");
        return new Map((body.data as ModelEntry[]).map((m) => [m.id, m]));
    }

    async function chatWorks(): Promise<WsFinalMessage> {
        const client = await WsTestClient.connect(server.wsUrl);
        const final = await client.chat({ prompt: "Once upon a time", max_tokens: 12 }).done;
        await client.close();
        assert.equal(final.type, "final", JSON.stringify(final));
        assert.ok(["stop", "length"].includes((final as WsFinalMessage).finish_reason));
        return final as WsFinalMessage;
    }

    it("lists every .gguf with size, architecture, context length and KeepKV support; bad files as invalid with a reason", async function () {
        const list = await models();
        assert.deepEqual([...list.keys()].sort(),
            ["dangling.gguf", "empty.gguf", "fifo.gguf", "folder.gguf", "header-cut.gguf", "link-inside.gguf", "link-outside.gguf", "notes.gguf",
                "stories260K.gguf", "stories3M-q8_0.gguf", "truncated.gguf", "unsupported.gguf"]);
        assert.equal(list.get("unsupported.gguf")!.valid, false);
        assert.match(list.get("unsupported.gguf")!.error!, /unsupported architecture "zzzzz"/);
        assert.equal(list.get("unsupported.gguf")!.error_code, "unsupported_architecture");
        const main = list.get("stories3M-q8_0.gguf")!;
        assert.equal(main.valid, true);
        assert.equal(main.loaded, true);
        assert.equal(main.architecture, "llama");
        assert.equal(main.context_length, 512);
        assert.equal(main.keepkv_supported, true);
        assert.equal(main.size_bytes, fs.statSync(testModelPath()).size);
        assert.equal(list.get("stories260K.gguf")!.valid, true);
        assert.equal(list.get("stories260K.gguf")!.loaded, false);
        assert.equal(list.get("stories260K.gguf")!.error_code, null);
        assert.equal(list.get("truncated.gguf")!.valid, false);
        assert.match(list.get("truncated.gguf")!.error!, /truncated/);
        assert.equal(list.get("truncated.gguf")!.error_code, "truncated_data");
        assert.equal(list.get("header-cut.gguf")!.valid, false);
        assert.match(list.get("header-cut.gguf")!.error!, /needs \d+ bytes, the file has 5000/);
        assert.equal(list.get("header-cut.gguf")!.error_code, "truncated_header");
        assert.equal(list.get("notes.gguf")!.valid, false);
        assert.match(list.get("notes.gguf")!.error!, /not a GGUF/);
        assert.equal(list.get("notes.gguf")!.error_code, "not_gguf");
        assert.equal(list.get("link-inside.gguf")!.valid, true, JSON.stringify(list.get("link-inside.gguf")));
        const outside = list.get("link-outside.gguf")!;
        assert.deepEqual([outside.valid, outside.error_code], [false, "outside_models_dir"], JSON.stringify(outside));
        assert.match(outside.error!, /outside the models directory/);
        assert.equal(outside.architecture, null, "nothing of the file outside is read");
        assert.notEqual(outside.size_bytes, fs.statSync(smokeModelPath()).size, "nor its size told");
        assert.equal(list.get("dangling.gguf")!.error_code, "unreadable");
        assert.equal(list.get("folder.gguf")!.error_code, "not_a_file");
        assert.equal(list.get("fifo.gguf")!.error_code, "not_a_file");
        assert.equal(list.get("empty.gguf")!.error_code, "not_gguf");
    });

    it("selecting a bad file gives a clear error and the previous model keeps serving", async function () {
        const bad = [["truncated.gguf", /truncated/], ["notes.gguf", /not a GGUF/], ["header-cut.gguf", /needs \d+ bytes/],
            ["unsupported.gguf", /unsupported architecture/], ["link-outside.gguf", /outside the models directory/],
            ["fifo.gguf", /not a regular file/], ["not-a-gguf-name.bin", /not a \.gguf file/]] as const;
        for (const [file, reason] of bad) {
            const { status, body } = await httpJson(`${server.url}/admin/model`, { body: { model: file } });
            assert.equal(status, 400, JSON.stringify(body));
            assert.equal(body.error.code, "invalid_model");
            assert.match(body.error.message, reason);
            assert.match(body.error.message, /still serving "stories3M-q8_0.gguf"/);
            await chatWorks();
        }
        const missing = await httpJson(`${server.url}/admin/model`, { body: { model: "nothing.gguf" } });
        assert.equal(missing.status, 404);
        assert.equal(missing.body.error.code, "model_not_found");
        const escape = await httpJson(`${server.url}/admin/model`, { body: { model: "../etc/passwd" } });
        assert.equal(escape.status, 404);
        assert.equal(escape.body.error.code, "model_not_found");
        const malformed = await httpJson(`${server.url}/admin/model`, { body: { name: "x" } });
        assert.equal(malformed.status, 400);
        assert.equal(malformed.body.error.code, "invalid_message");
        assert.equal((await models()).get("stories3M-q8_0.gguf")!.loaded, true);
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        assert.match(metrics, new RegExp(`keepkv_model_loads_total\\{result="failure"\\} ${bad.length}`));
    });

    it("switches to another valid model, which then serves", async function () {
        const { status, body } = await httpJson(`${server.url}/admin/model`, { body: { model: "stories260K.gguf" } });
        assert.equal(status, 200, JSON.stringify(body));
        assert.equal(body.model.name, "stories260K.gguf");
        assert.equal(body.previous, "stories3M-q8_0.gguf");
        const list = await models();
        assert.equal(list.get("stories260K.gguf")!.loaded, true);
        assert.equal(list.get("stories3M-q8_0.gguf")!.loaded, false);
        const client = await WsTestClient.connect(server.wsUrl);
        assert.equal(client.hello.model, "stories260K.gguf");
        await client.close();
        await chatWorks();
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        assert.match(metrics, /keepkv_config_info\{model_name="stories260K.gguf"/);
    });

    it("inspects model files without loading them", async function () {
        const info = await inspectModelFile(testModelPath());
        assert.equal(info.valid, true);
        assert.equal(info.hasChatTemplate, false);
        assert.ok(info.parameters != null && info.parameters > 3e6 && info.parameters < 5e6);
    });

    describe("when llama.cpp refuses the model", function () {
        let strict: ServerHandle;
        before(async function () {
            // q8_0 K/V caches need a head size divisible by 32: stories3M (32) loads, stories260K (8) cannot
            strict = await startServer({
                args: ["--sequences", "1", "--models-dir", dir, "--model", "stories3M-q8_0.gguf",
                    "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--flash-attention", "on"]
            });
        });
        after(async function () {
            await strict?.stop();
        });

        it("reports llama.cpp's reason, and the previous model keeps serving in the same engine", async function () {
            const pid = (await httpJson(`${strict.url}/health`)).body.engine.pid;
            const { status, body } = await httpJson(`${strict.url}/admin/model`, { body: { model: "stories260K.gguf" } });
            assert.equal(status, 400, JSON.stringify(body));
            assert.equal(body.error.code, "invalid_model");
            assert.match(body.error.message, /does not divide n_embd_head_k=8/);
            assert.match(body.error.message, /still serving "stories3M-q8_0.gguf"/);
            const health = await httpJson(`${strict.url}/health`);
            assert.equal(health.body.engine.pid, pid);
            assert.equal(health.body.engine.restarts, 0);
            const client = await WsTestClient.connect(strict.wsUrl);
            const final = await client.chat({ prompt: "Once upon a time", max_tokens: 10 }).done as WsFinalMessage;
            assert.equal(final.type, "final");
            assert.ok(final.usage.completion_tokens > 0);
            await client.close();
        });
    });
});
