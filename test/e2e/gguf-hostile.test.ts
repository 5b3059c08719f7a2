// Hostile model files: a GGUF header may declare any count or length. The reader must answer every one
// with a header or its typed error without allocating by what the file claims (a seeded fuzzer of 10 000
// headers, in-process), and the real server must list such files as invalid with their reason while /health
// keeps answering, the other models still list and serve, and its memory stays put.
//
// KEEPKV_GGUF_FUZZ_CASES (default 10000) sets the number of cases, KEEPKV_GGUF_FUZZ_SEED (default 1) the seed,
// KEEPKV_GGUF_FUZZ_FILES (default 200) how many of them go through the server; a failure names the seed and
// the case so that it can be replayed.
import assert from "node:assert/strict";
import { fork } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { smokeModelPath, testModelPath } from "../../lib/model-paths.js";
import { ggufLimits } from "../../server/models/gguf-header.js";
import { GgufInspector } from "../../server/models/gguf-inspector.js";
import { modelFileErrorCodes } from "../../server/protocol/model-file-errors.js";
import { ggufCase, loadFixture } from "../helpers/gguf-fuzz.js";
import type { FuzzJob, FuzzResult } from "../helpers/gguf-fuzz-process.js";
import { repoRoot } from "../../lib/paths.js";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";

const totalCases = Number(process.env.KEEPKV_GGUF_FUZZ_CASES ?? 10_000);
const seed = Number(process.env.KEEPKV_GGUF_FUZZ_SEED ?? 1);
const serverCases = Number(process.env.KEEPKV_GGUF_FUZZ_FILES ?? 200);
const fixtures = [testModelPath(), smokeModelPath(), path.join(path.dirname(testModelPath()), "stories3M-f16.gguf")];

type ModelEntry = { id: string, valid: boolean, error: string | null, error_code: string | null, loaded: boolean };

function rssOf(pid: number): number {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) * 1024;
}

/**
 * The file of the finding: 68 bytes, no tensors, one key whose value is an array of 2^48 strings. A reader
 * that trusts the count loops for as long as it has memory.
 */
export function hugeArrayGguf(): Buffer {
    const key = Buffer.from("general.architecture");
    const b = Buffer.alloc(68);
    let o = b.write("GGUF", 0);
    o = b.writeUInt32LE(3, o);
    o = b.writeBigUInt64LE(0n, o); // tensors
    o = b.writeBigUInt64LE(1n, o); // key-value pairs
    o = b.writeBigUInt64LE(BigInt(key.length), o);
    o += key.copy(b, o);
    o = b.writeUInt32LE(9, o); // array
    o = b.writeUInt32LE(8, o); // of strings
    o = b.writeBigUInt64LE(2n ** 48n, o);
    assert.equal(o, 68);
    return b;
}

/** GET with a deadline: a listing that hangs fails the test instead of hanging it. */
async function getJson(url: string, timeoutMs: number): Promise<{ status: number, body: any }> {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, body: await res.json() };
}

/**
 * GET /v1/models `times` times while /health is polled beside it; the server's RSS growth over it. A
 * listing that does not answer within the deadline fails (the finding: it ran for minutes).
 */
async function listWhileProbing(server: ServerHandle, times = 1): Promise<{ entries: Map<string, ModelEntry>, healthFailures: number, growth: number }> {
    const rssBefore = rssOf(server.proc.pid!);
    let healthFailures = 0;
    let listing = true;
    const health = (async () => {
        while (listing) {
            const res = await getJson(`${server.url}/health`, 5000).catch(() => null);
            if (res?.status !== 200)
                healthFailures++;
            await new Promise((r) => setTimeout(r, 50));
        }
    })();
    let entries = new Map<string, ModelEntry>();
    try {
        for (let i = 0; i < times; i++) {
            const { status, body } = await getJson(`${server.url}/v1/models`, 60_000);
            assert.equal(status, 200);
            entries = new Map((body.data as ModelEntry[]).map((m) => [m.id, m]));
        }
    } finally {
        listing = false;
        await health;
    }
    return { entries, healthFailures, growth: rssOf(server.proc.pid!) - rssBefore };
}

const mb = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MB`;

describe("hostile model files", function () {
    describe("the 68-byte file of the finding", function () {
        let dir: string;
        let server: ServerHandle;
        before(async function () {
            dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-hostile-"));
            fs.copyFileSync(testModelPath(), path.join(dir, "stories3M-q8_0.gguf"));
            fs.writeFileSync(path.join(dir, "huge-array.gguf"), hugeArrayGguf());
            server = await startServer({ args: ["--models-dir", dir, "--model", "stories3M-q8_0.gguf", "--sequences", "1"] });
        });
        after(async function () {
            await server?.stop("SIGKILL");
            fs.rmSync(dir, { recursive: true, force: true });
        });

        it("is listed as invalid (truncated_header) at once; /health keeps answering, memory stays put, a switch to it is refused", async function () {
            const { entries, healthFailures, growth } = await listWhileProbing(server);
            const hostile = entries.get("huge-array.gguf");
            assert.ok(hostile != null, JSON.stringify([...entries.keys()]));
            assert.equal(hostile.valid, false);
            assert.equal(hostile.error_code, "truncated_header", JSON.stringify(hostile));
            assert.match(hostile.error!, /array of 281474976710656 strings/);
            assert.equal(entries.get("stories3M-q8_0.gguf")?.valid, true);
            assert.equal(entries.get("stories3M-q8_0.gguf")?.loaded, true);
            assert.equal(healthFailures, 0, `${healthFailures} /health checks failed while listing`);
            assert.ok(growth < 100 * 2 ** 20, `the server's RSS grew by ${mb(growth)}`);

            const refused = await httpJson(`${server.url}/admin/model`, { body: { model: "huge-array.gguf" } });
            assert.equal(refused.status, 400, JSON.stringify(refused.body));
            assert.equal(refused.body.error.code, "invalid_model");
            assert.match(refused.body.error.message, /array of 281474976710656 strings/);
            assert.match(refused.body.error.message, /still serving "stories3M-q8_0.gguf"/);
            assert.equal((await httpJson(`${server.url}/health`)).status, 200);
            const published = (await httpJson(`${server.url}/v1/schemas`)).body.modelFileErrorCodes;
            assert.deepEqual(published, modelFileErrorCodes);
        });
    });

    describe(`${serverCases} fuzzed headers as files in the models folder`, function () {
        let dir: string;
        let server: ServerHandle;
        before(async function () {
            dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-hostile-"));
            fs.copyFileSync(testModelPath(), path.join(dir, "stories3M-q8_0.gguf"));
            fs.copyFileSync(smokeModelPath(), path.join(dir, "stories260K.gguf"));
            // the fuzzer's first cases: their first bytes, then sparse zeros up to their size
            const loaded = fixtures.map(loadFixture);
            for (let n = 0; n < serverCases; n++) {
                const c = ggufCase(seed, n, loaded);
                const file = path.join(dir, `fuzz-${String(n).padStart(4, "0")}.gguf`);
                fs.writeFileSync(file, c.bytes.subarray(0, c.size));
                fs.truncateSync(file, c.size);
            }
            server = await startServer({ args: ["--models-dir", dir, "--model", "stories3M-q8_0.gguf", "--sequences", "1"] });
        });
        after(async function () {
            await server?.stop("SIGKILL");
            fs.rmSync(dir, { recursive: true, force: true });
        });

        it("are listed, valid or invalid with a documented code; /health answers throughout; memory bounded; the valid models still serve; SIGTERM still stops it", async function () {
            // three listings: the first reads every header, the others come from the cache
            const { entries, healthFailures, growth } = await listWhileProbing(server, 3);
            assert.equal(healthFailures, 0, `${healthFailures} /health checks failed while listing`);
            assert.ok(growth < 150 * 2 ** 20, `the server's RSS grew by ${mb(growth)}`);
            const fuzzed = [...entries.values()].filter((m) => m.id.startsWith("fuzz-"));
            assert.equal(fuzzed.length, serverCases);
            const codes: Record<string, number> = {};
            for (const m of fuzzed) {
                if (m.valid)
                    assert.equal(m.error_code, null, JSON.stringify(m));
                else {
                    assert.ok(m.error_code != null && m.error_code in modelFileErrorCodes, JSON.stringify(m));
                    assert.ok(m.error != null && m.error.length > 0, JSON.stringify(m));
                    assert.notEqual(m.error_code, "inspection_failed", `the reader hit its limits: ${JSON.stringify(m)}`);
                }
                codes[m.error_code ?? "valid"] = (codes[m.error_code ?? "valid"] ?? 0) + 1;
            }
            assert.ok(Object.keys(codes).length >= 5, JSON.stringify(codes));
            assert.equal(entries.get("stories260K.gguf")?.valid, true);

            // a switch to an invalid one is refused with its reason; the valid one beside them still loads
            const bad = fuzzed.find((m) => !m.valid)!;
            const refused = await httpJson(`${server.url}/admin/model`, { body: { model: bad.id } });
            assert.equal(refused.status, 400, JSON.stringify(refused.body));
            assert.equal(refused.body.error.code, "invalid_model");
            assert.ok(refused.body.error.message.includes(bad.error!), `${refused.body.error.message} / ${bad.error}`);
            const switched = await httpJson(`${server.url}/admin/model`, { body: { model: "stories260K.gguf" } });
            assert.equal(switched.status, 200, JSON.stringify(switched.body));
            const health = await httpJson(`${server.url}/health`);
            assert.equal(health.status, 200);
            assert.equal(health.body.engine.restarts, 0);
            const exit = await server.stop("SIGTERM");
            assert.equal(exit.code, 0, server.output().slice(-2000));
        });
    });
});

describe("the GGUF header reader under fuzzing", function () {
    it(`${totalCases} seeded cases (seed ${seed}): a header or a typed error with a documented code, never anything else, within a 64 MiB heap`, async function () {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-gguf-fuzz-"));
        const progressFile = path.join(dir, "progress");
        const child = fork(new URL("../helpers/gguf-fuzz-process.js", import.meta.url), [], {
            execArgv: ["--max-old-space-size=64"], stdio: ["ignore", "ignore", "pipe", "ipc"]
        });
        let stderr = "";
        child.stderr!.setEncoding("utf8").on("data", (d: string) => { stderr = (stderr + d).slice(-2000); });
        const exited = new Promise<string>((resolve) => child.once("close", (code, signal) => resolve(`${signal ?? `code ${code}`}`)));
        child.send({ seed, cases: totalCases, fixtures, progressFile } satisfies FuzzJob);
        const result = await Promise.race([
            new Promise<FuzzResult>((resolve) => child.once("message", (m) => resolve(m as FuzzResult))),
            exited.then((how) => {
                const n = fs.readFileSync(progressFile).readUInt32LE(0);
                const c = ggufCase(seed, n, fixtures.map(loadFixture));
                throw new Error(`case ${n} (seed ${seed}) ${c.note.slice(0, 300)} killed the reader (${how}): ${stderr.split("\n").slice(0, 8).join(" | ")}`);
            })
        ]).finally(() => {
            child.kill("SIGKILL");
            fs.rmSync(dir, { recursive: true, force: true });
        });
        assert.deepEqual(result.failures.slice(0, 10), [], `${result.failures.length} failures`);
        // the generator reaches every way a header can fail, and some mutations stay valid
        for (const code of ["not_gguf", "unsupported_version", "truncated_header", "corrupt_header", "header_limit", "truncated_data"])
            assert.ok((result.codes[code] ?? 0) > 0, `no case ended with ${code}: ${JSON.stringify(result.codes)}`);
        assert.ok(result.valid > 0, "no case was valid");
    });

    it("the inspector's own limits: a header read past the time limit or beyond the heap limit is inspection_failed, and the next file gets a new reader process", async function () {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-slow-"));
        try {
            // 2^24 empty strings (the array cap), in a sparse 128 MiB file: about a second to read
            const key = Buffer.from("tokenizer.ggml.tokens");
            const header = Buffer.alloc(48 + key.length);
            let o = header.write("GGUF");
            o = header.writeUInt32LE(3, o);
            o = header.writeBigUInt64LE(0n, o);
            o = header.writeBigUInt64LE(1n, o);
            o = header.writeBigUInt64LE(BigInt(key.length), o);
            o += key.copy(header, o);
            o = header.writeUInt32LE(9, o);
            o = header.writeUInt32LE(8, o);
            header.writeBigUInt64LE(BigInt(ggufLimits.maxArrayLength), o);
            const slow = path.join(dir, "slow.gguf");
            fs.writeFileSync(slow, header);
            fs.truncateSync(slow, header.length + 8 * ggufLimits.maxArrayLength);

            const hurried = new GgufInspector({ timeoutMs: 100, heapMb: 96, idleMs: 1000 });
            const timedOut = await hurried.read(slow);
            assert.deepEqual(timedOut.ok ? null : [timedOut.code, timedOut.message], ["inspection_failed", "reading the header took longer than 0.1 s"]);
            assert.equal(hurried.failures, 1);
            const next = await hurried.read(smokeModelPath());
            assert.ok(next.ok, JSON.stringify(next));
            hurried.close();
            const patient = new GgufInspector({ timeoutMs: 120_000, heapMb: 96, idleMs: 1000 });
            const read = await patient.read(slow);
            assert.ok(read.ok, JSON.stringify(read));
            assert.equal(read.header.metadata.get("tokenizer.ggml.tokens")?.kind, "array");
            patient.close();

            // 60 000 distinct 250-byte keys: the reader keeps them all (15 MB, under its 16 MiB cap), which
            // fits its default heap and not 16 MiB
            const n = 60_000;
            const parts = [Buffer.from("GGUF\x03\0\0\0", "latin1"), Buffer.alloc(16)];
            parts[1]!.writeBigUInt64LE(BigInt(n), 8);
            for (let i = 0; i < n; i++) {
                const entry = Buffer.alloc(8 + 250 + 5);
                entry.writeBigUInt64LE(250n, 0);
                entry.write(String(i).padStart(250, "k"), 8, "latin1");
                parts.push(entry); // then type 0 (uint8) and the value 0
            }
            const keys = path.join(dir, "many-keys.gguf");
            fs.writeFileSync(keys, Buffer.concat(parts));
            const starved = new GgufInspector({ timeoutMs: 120_000, heapMb: 16, idleMs: 1000 });
            const oom = await starved.read(keys);
            assert.deepEqual(oom.ok ? null : [oom.code, oom.message], ["inspection_failed", "reading the header needed more than the reader's 16 MiB memory limit"]);
            assert.equal(starved.failures, 1);
            const after = await starved.read(smokeModelPath());
            assert.ok(after.ok, JSON.stringify(after));
            starved.close();
            const roomy = new GgufInspector();
            const all = await roomy.read(keys);
            assert.ok(all.ok, JSON.stringify(all));
            assert.equal(all.header.metadata.size, n);
            roomy.close();
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});

describe("the model file error codes", function () {
    it("docs/server.md lists each with its description, as declared", function () {
        const doc = fs.readFileSync(path.join(repoRoot, "docs", "server.md"), "utf8");
        for (const [code, meaning] of Object.entries(modelFileErrorCodes))
            assert.ok(doc.includes(`| \`${code}\` | ${meaning} |`), `docs/server.md: no row "| \`${code}\` | ${meaning} |"`);
    });
});
