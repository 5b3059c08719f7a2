// Hostile model files against the real server: a GGUF header may declare any count or length, and the
// server must list such a file as invalid with its reason while /health keeps answering, the other models
// still list and serve, and its memory stays put.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { testModelPath } from "../server/engine/model-paths.js";
import { httpJson, startServer, type ServerHandle } from "./helpers/server-process.js";

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

describe("hostile model files", function () {
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

    it("a 68-byte GGUF that declares a 2^48-element array is listed as invalid; /health keeps answering and memory stays put", async function () {
        const rssBefore = rssOf(server.proc.pid!);
        let healthFailures = 0;
        let healthChecks = 0;
        let listing = true;
        const health = (async () => {
            while (listing) {
                healthChecks++;
                const res = await getJson(`${server.url}/health`, 5000).catch(() => null);
                if (res?.status !== 200)
                    healthFailures++;
                await new Promise((r) => setTimeout(r, 100));
            }
        })();
        try {
            const { status, body } = await getJson(`${server.url}/v1/models`, 30_000);
            assert.equal(status, 200);
            const models = new Map((body.data as ModelEntry[]).map((m) => [m.id, m]));
            const hostile = models.get("huge-array.gguf");
            assert.ok(hostile != null, JSON.stringify(body));
            assert.equal(hostile.valid, false);
            assert.equal(hostile.error_code, "truncated_header", JSON.stringify(hostile));
            assert.match(hostile.error!, /array of 281474976710656 strings/);
            assert.equal(models.get("stories3M-q8_0.gguf")?.valid, true);
            assert.equal(models.get("stories3M-q8_0.gguf")?.loaded, true);
        } finally {
            listing = false;
            await health;
        }
        assert.equal(healthFailures, 0, `${healthFailures} of ${healthChecks} /health checks failed`);
        const growth = rssOf(server.proc.pid!) - rssBefore;
        assert.ok(growth < 100 * 2 ** 20, `the server's RSS grew by ${(growth / 2 ** 20).toFixed(1)} MB`);

        const refused = await httpJson(`${server.url}/admin/model`, { body: { model: "huge-array.gguf" } });
        assert.equal(refused.status, 400, JSON.stringify(refused.body));
        assert.equal(refused.body.error.code, "invalid_model");
        assert.match(refused.body.error.message, /array of 281474976710656 strings/);
        assert.match(refused.body.error.message, /still serving "stories3M-q8_0.gguf"/);
        assert.equal((await httpJson(`${server.url}/health`)).status, 200);
    });
});
