// Conversation states on disk, against the real server with stories3M under a KeepKV budget small enough
// that the first turn compresses (so the votes and scores the state carries decide the continuation): a
// conversation idle when the engine is SIGKILLed, or when the server restarts, continues exactly as it
// would have without the restart and evaluates none of its history again; states that fail a check are
// refused, deleted and logged, and the reply is evaluated again; the folder stays under its limit.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { ChatMessage, WsErrorMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { testModelPath } from "../../lib/model-paths.js";
import { httpJson, startServer, waitFor, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";
import { sample } from "../helpers/metrics-text.js";

async function metric(server: ServerHandle, name: string, labels = ""): Promise<number> {
    return sample(await (await fetch(`${server.url}/metrics`)).text(), name, labels);
}

function assertFinal(message: WsFinalMessage | WsErrorMessage): WsFinalMessage {
    assert.equal(message.type, "final", `expected a final message, got ${JSON.stringify(message)}`);
    return message as WsFinalMessage;
}

const opening: ChatMessage[] = [{ role: "user", content: "Once upon a time there was a little fox who lived in the woods." }];

type Turn = { text: string, final: WsFinalMessage };

async function chat(server: ServerHandle, conversation: string, messages: ChatMessage[], maxTokens: number): Promise<Turn> {
    const client = await WsTestClient.connect(server.wsUrl);
    const run = client.chat({ messages, max_tokens: maxTokens, temperature: 0, conversation_id: conversation });
    const final = assertFinal(await run.done);
    await client.close();
    return { text: run.text(), final };
}

const firstTurn = (server: ServerHandle, conversation: string) => chat(server, conversation, opening, 80);
const secondMessages = (reply: string): ChatMessage[] => [...opening, { role: "assistant", content: reply }, { role: "user", content: "The fox was happy." }];
const secondTurn = (server: ServerHandle, conversation: string, reply: string) => chat(server, conversation, secondMessages(reply), 30);

/** Prompt tokens the engine evaluated (not taken from a cache) so far. */
async function evaluatedPromptTokens(server: ServerHandle): Promise<number> {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    return sample(text, "keepkv_prompt_tokens_total") - sample(text, "keepkv_prompt_tokens_cached_total");
}

describe("conversation states on disk", function () {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-state-"));
    // a copy: the model-mismatch case changes its modification time
    const model = path.join(tmp, "stories3M.gguf");
    fs.copyFileSync(testModelPath(), model);
    const serverArgs = (stateDir: string | null, extra: string[] = []) => [
        "--model", model, "--policy", "keepkv", "--budget", "48", "--recent", "16", "--context-size", "1024", "--sequences", "2",
        ...(stateDir != null ? ["--state-dir", stateDir] : []), ...extra
    ];
    let reference: { first: Turn, second: Turn, evaluated: number };

    before(async function () {
        // the same two turns on a server that keeps the sequence in memory all along
        const server = await startServer({ args: serverArgs(null) });
        try {
            const first = await firstTurn(server, "c");
            assert.ok((first.final.kv?.compressions ?? 0) > 0, "the first turn compressed the sequence");
            const before = await evaluatedPromptTokens(server);
            const second = await secondTurn(server, "c", first.text);
            reference = { first, second, evaluated: (await evaluatedPromptTokens(server)) - before };
            // everything the first turn evaluated came from the cache
            assert.ok(second.final.usage.cached_tokens >= first.final.usage.prompt_tokens + first.final.usage.completion_tokens - 1);
        } finally {
            await server.stop();
        }
    });

    after(function () {
        fs.rmSync(tmp, { recursive: true, force: true });
    });

    /** The second turn continues exactly like the reference and evaluates only what the reference did. */
    function assertContinuesExactly(second: Turn, evaluated: number): void {
        assert.equal(second.text, reference.second.text, "the same greedy continuation as without the restart");
        assert.equal(second.final.usage.cached_tokens, reference.second.final.usage.cached_tokens, "the history came from the saved state");
        assert.equal(second.final.usage.prompt_tokens, reference.second.final.usage.prompt_tokens);
        assert.equal(evaluated, reference.evaluated, "no more prompt tokens evaluated than without the restart");
        assert.ok(second.final.kv != null && second.final.kv.merges >= 0);
    }

    /** The second turn of conversation "c" on `server`: the reference continuation, from one restored state. */
    async function assertRestoredTurn(server: ServerHandle, first: Turn): Promise<void> {
        const before = await evaluatedPromptTokens(server);
        const second = await secondTurn(server, "c", first.text);
        assertContinuesExactly(second, (await evaluatedPromptTokens(server)) - before);
        assert.equal(await metric(server, "keepkv_conversation_state_restores_total"), 1);
    }

    it("a conversation idle when the engine is SIGKILLed continues bit for bit from its saved state, without evaluating its history again", async function () {
        const stateDir = path.join(tmp, "sigkill");
        const server = await startServer({ args: serverArgs(stateDir, ["--state-save-idle", "0.2"]) });
        try {
            const first = await firstTurn(server, "c");
            assert.equal(first.text, reference.first.text);
            await waitFor("the idle conversation saved", async () => (await metric(server, "keepkv_conversation_state_saves_total")) >= 1 ? true : undefined, 30_000, 50);
            assert.ok((await metric(server, "keepkv_conversation_state_disk_bytes")) > 0);
            const pid = (await httpJson(`${server.url}/health`)).body.engine.pid as number;
            process.kill(pid, "SIGKILL");
            await waitFor("a new engine serving", async () => {
                const health = await httpJson(`${server.url}/health`);
                return health.status === 200 && health.body.engine.pid !== pid ? true : undefined;
            }, 60_000, 50);
            await assertRestoredTurn(server, first);
            assert.equal(await metric(server, "keepkv_conversation_state_refusals_total"), 0);
        } finally {
            await server.stop();
        }
    });

    it("a conversation continues bit for bit after a server restart: SIGTERM saves it, the next server restores it", async function () {
        const stateDir = path.join(tmp, "restart");
        // no idle save within the test: only the shutdown writes the state
        const args = serverArgs(stateDir, ["--state-save-idle", "3600"]);
        const server = await startServer({ args });
        const first = await firstTurn(server, "c");
        assert.equal(await metric(server, "keepkv_conversation_state_saves_total"), 0);
        assert.equal((await server.stop("SIGTERM")).code, 0);
        assert.ok(fs.readdirSync(stateDir).some((f) => f.endsWith(".state")), "the shutdown wrote the state");

        const next = await startServer({ args });
        try {
            await assertRestoredTurn(next, first);
        } finally {
            await next.stop();
        }
    });

    it("a conversation whose sequence --conversation-idle frees is saved then, and continues bit for bit", async function () {
        const server = await startServer({ args: serverArgs(path.join(tmp, "released"), ["--conversation-idle", "0.5", "--state-save-idle", "3600"]) });
        try {
            const first = await firstTurn(server, "c");
            await waitFor("the released conversation saved", async () => (await metric(server, "keepkv_conversation_state_saves_total")) >= 1 ? true : undefined, 30_000, 50);
            // (no idle save within the test: the release wrote it, and the sequence no longer holds it)
            await assertRestoredTurn(server, first);
        } finally {
            await server.stop();
        }
    });

    it("a conversation continues bit for bit after a switch to another model and back: the switch saves it", async function () {
        fs.copyFileSync(path.join(path.dirname(testModelPath()), "stories260K.gguf"), path.join(tmp, "stories260K.gguf"));
        const server = await startServer({ args: serverArgs(path.join(tmp, "switch"), ["--state-save-idle", "3600"]) });
        try {
            const first = await firstTurn(server, "c");
            const to = async (name: string) => {
                const { status, body } = await httpJson(`${server.url}/admin/model`, { body: { model: name } });
                assert.equal(status, 200, JSON.stringify(body));
            };
            await to("stories260K.gguf");
            assert.equal(await metric(server, "keepkv_conversation_state_saves_total"), 1, "the switch saved the conversation");
            await chat(server, "other", opening, 20);
            await to("stories3M.gguf");
            await assertRestoredTurn(server, first);
        } finally {
            await server.stop();
        }
    });

    it("a state that is corrupted, of another format version, made with other settings or for another model file is refused, deleted and logged; the reply is evaluated again and is correct", async function () {
        // one saved conversation, copied for each case
        const saved = path.join(tmp, "saved");
        const server = await startServer({ args: serverArgs(saved, ["--state-save-idle", "3600"]) });
        const first = await firstTurn(server, "c");
        assert.equal((await server.stop("SIGTERM")).code, 0);
        const stateFile = fs.readdirSync(saved).find((f) => f.endsWith(".state"))!;
        const manifestFile = stateFile.replace(/\.state$/, ".json");

        const cases: { reason: string, prepare(dir: string): void, extra?: string[] }[] = [
            {
                reason: "checksum",
                prepare: (dir) => {
                    const file = path.join(dir, stateFile);
                    const bytes = fs.readFileSync(file);
                    bytes[Math.floor(bytes.length / 2)]! ^= 0x55;
                    fs.writeFileSync(file, bytes);
                }
            },
            {
                reason: "version",
                prepare: (dir) => {
                    const file = path.join(dir, manifestFile);
                    fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, "utf8")), version: 999 }));
                }
            },
            { reason: "settings", prepare: () => {}, extra: ["--budget", "64"] },
            {
                // last: the model file keeps its new time
                reason: "model",
                prepare: () => {
                    const later = new Date(fs.statSync(model).mtimeMs + 10_000);
                    fs.utimesSync(model, later, later);
                }
            }
        ];
        for (const c of cases) {
            const dir = path.join(tmp, `refused-${c.reason}`);
            fs.cpSync(saved, dir, { recursive: true });
            c.prepare(dir);
            const next = await startServer({ args: serverArgs(dir, ["--state-save-idle", "3600", ...(c.extra ?? [])]) });
            try {
                const second = await secondTurn(next, "c", first.text);
                assert.equal(second.final.usage.cached_tokens, 0, `${c.reason}: nothing came from the refused state`);
                assert.equal(await metric(next, "keepkv_conversation_state_refusals_total", `reason="${c.reason}"`), 1, `${c.reason}: counted`);
                assert.equal(await metric(next, "keepkv_conversation_state_refusals_total"), 1);
                assert.equal(await metric(next, "keepkv_conversation_state_restores_total"), 0);
                assert.ok(!fs.existsSync(path.join(dir, stateFile)) && !fs.existsSync(path.join(dir, manifestFile)), `${c.reason}: the files were deleted`);
                assert.match(next.output(), new RegExp(`saved conversation state was refused.*reason=${c.reason}`), `${c.reason}: logged`);
                // correct: what a conversation without any saved state gets for the same messages
                const fresh = await secondTurn(next, "fresh", first.text);
                assert.equal(fresh.final.usage.cached_tokens, 0);
                assert.equal(second.text, fresh.text, `${c.reason}: the reply is the re-evaluated one`);
            } finally {
                await next.stop();
            }
        }
    });

    it("a saved state is restored only to the principal whose conversation it was: another key naming the same id evaluates everything", async function () {
        const stateDir = path.join(tmp, "principals");
        const keys = { alice: "alice-key-0123456789abcdef", bob: "bob-key-0123456789abcdef", root: "root-key-0123456789abcdef" };
        const args = serverArgs(stateDir, ["--state-save-idle", "3600",
            "--api-keys", `alice:user:${keys.alice},bob:user:${keys.bob},root:admin:${keys.root}`]);
        const complete = async (server: ServerHandle, key: string, prompt: string) => {
            const { status, body } = await httpJson(`${server.url}/v1/completions`, {
                method: "POST", headers: { Authorization: `Bearer ${key}` },
                body: { prompt, max_tokens: 20, temperature: 0, conversation_id: "shared-id" }
            });
            assert.equal(status, 200, JSON.stringify(body));
            return { text: body.choices[0].text as string, cached: body.usage.prompt_tokens_details.cached_tokens as number };
        };
        const adminMetric = async (server: ServerHandle, name: string) =>
            sample(await (await fetch(`${server.url}/metrics`, { headers: { Authorization: `Bearer ${keys.root}` } })).text(), name);
        const story = "Once upon a time there was a little fox who lived in the woods. Every morning the fox";
        const server = await startServer({ args });
        const first = await complete(server, keys.alice, story);
        assert.equal((await server.stop("SIGTERM")).code, 0);
        assert.ok(fs.readdirSync(stateDir).some((f) => f.endsWith(".state")), "the shutdown wrote alice's state");

        const next = await startServer({ args });
        try {
            // bob names alice's id with her whole history: nothing of her saved state reaches him
            const bob = await complete(next, keys.bob, story + first.text);
            assert.equal(bob.cached, 0, "bob's request restored nothing of alice's conversation");
            assert.equal(await adminMetric(next, "keepkv_conversation_state_restores_total"), 0);
            assert.equal(await adminMetric(next, "keepkv_conversation_state_misses_total"), 1);
            // the state was there: alice's own next turn restores it
            const alice = await complete(next, keys.alice, story + first.text);
            assert.ok(alice.cached > 0, "alice's conversation continued from her saved state");
            assert.equal(await adminMetric(next, "keepkv_conversation_state_restores_total"), 1);
        } finally {
            await next.stop();
        }
    });

    it("a --state-dir the server cannot use stops startup with a message naming the option", async function () {
        const file = path.join(tmp, "a-file");
        fs.writeFileSync(file, "");
        await assert.rejects(startServer({ args: serverArgs(path.join(file, "states")) }), /--state-dir .*cannot be used: ENOTDIR/s);
    });

    it("disk use stays under --state-max-mb: a conversation evicted from its sequence is saved, and the least recently used state is deleted first", async function () {
        const stateDir = path.join(tmp, "bounded");
        // one sequence: each new conversation takes it from the previous one, which is saved then (no idle save)
        const limitMb = 0.15;
        const server = await startServer({ args: serverArgs(stateDir, ["--sequences", "1", "--state-save-idle", "3600", "--state-max-mb", String(limitMb)]) });
        try {
            const dirBytes = () => fs.readdirSync(stateDir).reduce((sum, f) => sum + fs.statSync(path.join(stateDir, f)).size, 0);
            const replies = new Map<string, string>();
            for (const id of ["c1", "c2", "c3"])
                replies.set(id, (await firstTurn(server, id)).text);
            // c1 and c2 were saved when their sequence was needed; one state is about 70 KB, so two fit
            assert.equal(await metric(server, "keepkv_conversation_state_saves_total"), 2);
            assert.ok(dirBytes() <= limitMb * 1024 * 1024);

            // c2 (its sequence was taken last) is restored; saving c3 then leaves no room for c1, the least recently used
            const c2 = await secondTurn(server, "c2", replies.get("c2")!);
            assert.equal(await metric(server, "keepkv_conversation_state_restores_total"), 1);
            assert.ok(c2.final.usage.cached_tokens > 0);
            assert.ok((await metric(server, "keepkv_conversation_state_removals_total")) >= 1, "a state was removed to stay under the limit");
            assert.ok(dirBytes() <= limitMb * 1024 * 1024, `${dirBytes()} bytes on disk`);
            const misses = await metric(server, "keepkv_conversation_state_misses_total");
            const c1 = await secondTurn(server, "c1", replies.get("c1")!);
            assert.equal(c1.final.usage.cached_tokens, 0, "c1's state was the one deleted");
            assert.equal(await metric(server, "keepkv_conversation_state_misses_total"), misses + 1);
            assert.ok(dirBytes() <= limitMb * 1024 * 1024);
        } finally {
            await server.stop();
        }
    });
});
