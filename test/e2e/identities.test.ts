// Identities and conversation isolation on the real server: several API keys with names and roles (a key
// file, --api-keys), what each role may call, conversations that belong to the principal that names them
// (another principal naming the same id gets a conversation of its own and learns nothing: no lock, no
// wipe, no cached tokens), sequences that start empty when they change owner, conversation ids shown
// only to their owner and to admins, server-issued ids, a key file checked at startup, and where keys meet
// the network defaults (rate limits per principal, /health details, open binds, auth-first WebSockets).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { WsConversationMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";
import { requestFrom } from "../helpers/raw-http.js";
import { httpJson, serverEntry, startServer, testServerArgs, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";

const keys = {
    alice: "alice-key-5d1f0c9e7b2a",
    bob: "bob-key-83e6a4f1c0d97",
    root: "root-key-2b7c91e4f6a08",
    prom: "prom-key-e09d3a6b51c47"
};
const keyFile = {
    keys: [
        { name: "alice", role: "user", key: keys.alice },
        { name: "bob", role: "user", key: keys.bob },
        { name: "root", role: "admin", key: keys.root },
        { name: "prom", role: "metrics", key: keys.prom }
    ]
};

const story = "Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog.";

function writeKeyFile(dir: string, content: unknown): string {
    const file = path.join(dir, `keys-${Math.random().toString(16).slice(2)}.json`);
    fs.writeFileSync(file, typeof content === "string" ? content : JSON.stringify(content));
    return file;
}

const bearer = (key: string) => ({ Authorization: `Bearer ${key}` });

/** The engine child process of a server (to hold a request in flight with SIGSTOP). */
function enginePid(server: ServerHandle): number {
    const pid = server.proc.pid!;
    const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).map(Number);
    const engine = children.find((c) => fs.readFileSync(`/proc/${c}/cmdline`, "utf8").includes("engine-process"));
    assert.ok(engine != null, "the engine process is a child of the server");
    return engine;
}

async function finalOf(run: { done: Promise<unknown> }): Promise<WsFinalMessage> {
    const final = await run.done as WsFinalMessage;
    assert.equal(final.type, "final", JSON.stringify(final));
    assert.notEqual(final.finish_reason, "error", JSON.stringify(final));
    return final;
}

async function complete(server: ServerHandle, key: string, body: object): Promise<{ text: string, cached: number, prompt: number }> {
    const { status, body: reply } = await httpJson(`${server.url}/v1/completions`, {
        method: "POST", headers: bearer(key), body: { max_tokens: 8, temperature: 0, ...body }
    });
    assert.equal(status, 200, JSON.stringify(reply));
    return { text: reply.choices[0].text, cached: reply.usage.prompt_tokens_details.cached_tokens, prompt: reply.usage.prompt_tokens };
}

describe("identities: keys, roles and conversations of their own", function () {
    let dir: string;
    let server: ServerHandle;
    before(async function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-identities-"));
        server = await startServer({ args: ["--sequences", "2", "--api-key-file", writeKeyFile(dir, keyFile)] });
    });
    after(async function () {
        await server?.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it("/admin/* takes only admin keys (403 forbidden for a user key, in any spelling); /metrics takes metrics and admin keys, not user keys; a metrics key opens nothing else", async function () {
        for (const p of ["/admin/model", "/ADMIN/model", "/admin/model/", "//admin//model"]) {
            const asUser = await httpJson(`${server.url}${p}`, { headers: bearer(keys.alice) });
            assert.equal(asUser.status, 403, `GET ${p} with a user key`);
            assert.equal(asUser.body.error.code, "forbidden");
        }
        const switchAsUser = await httpJson(`${server.url}/admin/model`, { method: "POST", headers: bearer(keys.bob), body: { model: "stories3M-q8_0.gguf" } });
        assert.equal(switchAsUser.status, 403);
        assert.equal((await httpJson(`${server.url}/admin/model`, { headers: bearer(keys.root) })).status, 200);
        assert.equal((await httpJson(`${server.url}/admin/model`, { headers: bearer(keys.prom) })).status, 403);

        assert.equal((await httpJson(`${server.url}/metrics`, { headers: bearer(keys.alice) })).status, 403);
        assert.equal((await httpJson(`${server.url}/METRICS/`, { headers: bearer(keys.alice) })).status, 403);
        for (const key of [keys.prom, keys.root]) {
            const { status, body } = await httpJson(`${server.url}/metrics`, { headers: bearer(key) });
            assert.equal(status, 200);
            assert.match(String(body), /keepkv_generation_tokens_total/);
        }
        for (const p of ["/v1/models", "/slots", "/v1/kv", "/v1/config"])
            assert.equal((await httpJson(`${server.url}${p}`, { headers: bearer(keys.prom) })).status, 403, `${p} with the metrics key`);
        assert.equal((await httpJson(`${server.url}/v1/models`, { headers: bearer("not-a-key-at-all-000") })).status, 401);

        // WebSocket: user and admin keys at the upgrade or in the auth message; the metrics key neither
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, bearer(keys.prom)), 403);
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, bearer(keys.alice)), 101);
        const page = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
        page.send({ type: "auth", token: keys.prom });
        assert.equal((await page.nextError(null)).code, "forbidden");
        assert.equal((await page.closed).code, 1008);
        const good = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
        const ok = good.next((m) => m.type === "auth_ok");
        good.send({ type: "auth", token: keys.bob });
        await ok;
        await finalOf(good.chat({ prompt: "Once", max_tokens: 2 }));
        await good.close();
    });

    it("another principal naming a conversation id gets a conversation of its own: no lock, no wipe, no cached tokens of the other's history", async function () {
        const alice = await WsTestClient.connect(server.wsUrl, { headers: bearer(keys.alice) });
        const bob = await WsTestClient.connect(server.wsUrl, { headers: bearer(keys.bob) });
        try {
            const id = "shared-name-1";
            const first = alice.chat({ prompt: story, conversation_id: id, max_tokens: 8, temperature: 0 });
            await finalOf(first);
            const second = `${story}${first.text()} The end.`;

            // hold alice's next turn in flight (the engine stopped), and let bob name the same id meanwhile
            const engine = enginePid(server);
            process.kill(engine, "SIGSTOP");
            let aliceTurn, bobTurn;
            try {
                aliceTurn = alice.chat({ prompt: second, conversation_id: id, max_tokens: 8, temperature: 0 });
                await aliceTurn.start;
                bobTurn = bob.chat({ prompt: story, conversation_id: id, max_tokens: 8, temperature: 0 });
                // not conversation_busy: bob's conversation is another one, whatever its name
                const bobStart = await bobTurn.start;
                assert.equal(bobStart.conversation_id, id);
            } finally {
                process.kill(engine, "SIGCONT");
            }
            const aliceFinal = await finalOf(aliceTurn);
            const bobFinal = await finalOf(bobTurn);
            assert.ok(aliceFinal.usage.cached_tokens > 0, `alice's turn reuses her cache: ${JSON.stringify(aliceFinal.usage)}`);
            assert.equal(bobFinal.usage.cached_tokens, 0, "bob learns nothing of alice's history");
            assert.notEqual(bobFinal.kv?.sequence, aliceFinal.kv?.sequence, "bob's conversation has a sequence of its own");

            // bob continues "his" conversation; alice's cache is still hers, untouched
            const bobAgain = await finalOf(bob.chat({ prompt: `${story}${bobTurn.text()} Then`, conversation_id: id, max_tokens: 4, temperature: 0 }));
            assert.equal(bobAgain.kv?.sequence, bobFinal.kv?.sequence);
            const third = `${second}${aliceTurn.text()} Then`;
            const aliceAgain = await finalOf(alice.chat({ prompt: third, conversation_id: id, max_tokens: 4, temperature: 0 }));
            assert.equal(aliceAgain.kv?.sequence, aliceFinal.kv?.sequence);
            assert.ok(aliceAgain.usage.cached_tokens >= aliceFinal.usage.prompt_tokens, `alice's history is still cached: ${JSON.stringify(aliceAgain.usage)}`);
        } finally {
            await alice.close();
            await bob.close();
        }
    });

    it("WebSocket: an auth with another principal's key on an authenticated socket is refused (forbidden) and changes nothing: its requests stay the first principal's", async function () {
        const page = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
        const ok = page.next((m) => m.type === "auth_ok");
        page.send({ type: "auth", token: keys.alice });
        await ok;
        const again = page.next((m) => m.type === "auth_ok");
        page.send({ type: "auth", token: keys.alice });
        await again;
        const refusal = page.nextError(null);
        page.send({ type: "auth", token: keys.bob });
        const refused = await refusal;
        assert.equal(refused.code, "forbidden");
        assert.match(refused.message, /authenticated as "alice"/);
        const id = "alice-socket-after-bob-auth-3";
        const final = await page.chat({ prompt: story, max_tokens: 3, conversation_id: id }).done;
        assert.equal(final.type, "final", JSON.stringify(final));
        const slots = async (key: string) => JSON.stringify((await httpJson(`${server.url}/slots`, { headers: bearer(key) })).body);
        assert.ok((await slots(keys.alice)).includes(id), "the conversation is alice's");
        assert.ok(!(await slots(keys.bob)).includes(id), "and not bob's");
        assert.deepEqual(page.schemaViolations, []);
        await page.close();
    });

    it("/slots and /v1/kv show a conversation id only to its owner and to admin keys; /metrics never shows one", async function () {
        const id = "alice-private-conversation-7";
        await complete(server, keys.alice, { prompt: story, conversation_id: id });
        const slots = async (key: string) => {
            const { status, body } = await httpJson(`${server.url}/slots`, { headers: bearer(key) });
            assert.equal(status, 200);
            return body as { id: number, conversation_id: string | null }[];
        };
        const kv = async (key: string) => {
            const { status, body } = await httpJson(`${server.url}/v1/kv`, { headers: bearer(key) });
            assert.equal(status, 200);
            return body as { sequences: { sequence: number, held: boolean, conversation_id: string | null }[] };
        };
        assert.ok((await slots(keys.alice)).some((s) => s.conversation_id === id));
        assert.ok((await slots(keys.root)).some((s) => s.conversation_id === id));
        const bobSlots = await slots(keys.bob);
        assert.ok(!JSON.stringify(bobSlots).includes(id), JSON.stringify(bobSlots));

        const aliceKv = await kv(keys.alice);
        const held = aliceKv.sequences.find((s) => s.conversation_id === id);
        assert.ok(held != null && held.held);
        assert.ok((await kv(keys.root)).sequences.some((s) => s.conversation_id === id));
        const bobKv = await kv(keys.bob);
        assert.ok(!JSON.stringify(bobKv).includes(id), JSON.stringify(bobKv.sequences));
        // bob sees that the sequence is held, not by whom or for what
        const seen = bobKv.sequences.find((s) => s.sequence === held.sequence)!;
        assert.equal(seen.held, true);
        assert.equal(seen.conversation_id, null);

        const metrics = await httpJson(`${server.url}/metrics`, { headers: bearer(keys.root) });
        assert.ok(!String(metrics.body).includes(id), "no conversation id in the metrics");
    });

    it("issues unguessable conversation ids (POST /v1/conversations, WebSocket new_conversation) that work like any other", async function () {
        const issued = new Set<string>();
        for (let i = 0; i < 3; i++) {
            const { status, body } = await httpJson(`${server.url}/v1/conversations`, { method: "POST", headers: bearer(keys.alice) });
            assert.equal(status, 200);
            assert.match(body.id, /^conv_[0-9a-f]{32}$/);
            assert.equal(body.object, "conversation");
            issued.add(body.id);
        }
        assert.equal(issued.size, 3);
        assert.equal((await httpJson(`${server.url}/v1/conversations`, { method: "POST" })).status, 401);

        const ws = await WsTestClient.connect(server.wsUrl, { headers: bearer(keys.bob) });
        try {
            const reply = ws.next<WsConversationMessage>((m) => m.type === "conversation");
            ws.send({ type: "new_conversation", id: "n1" });
            const message = await reply;
            assert.equal(message.id, "n1");
            assert.match(message.conversation_id, /^conv_[0-9a-f]{32}$/);
            assert.ok(!issued.has(message.conversation_id));
            const turn = ws.chat({ prompt: story, conversation_id: message.conversation_id, max_tokens: 4, temperature: 0 });
            await finalOf(turn);
            const next = await finalOf(ws.chat({ prompt: `${story}${turn.text()} Then`, conversation_id: message.conversation_id, max_tokens: 2 }));
            assert.ok(next.usage.cached_tokens > 0, JSON.stringify(next.usage));
            assert.deepEqual(ws.schemaViolations, []);
        } finally {
            await ws.close();
        }
    });
});

describe("identities: a sequence that changes owner starts from an empty cache", function () {
    let dir: string;
    let server: ServerHandle;
    before(async function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-identities-"));
        // keys from the configuration this time (not a file), and one sequence: every request takes the previous one's
        server = await startServer({
            args: ["--sequences", "1"],
            env: { KEEPKV_API_KEYS: `alice:user:${keys.alice},bob:user:${keys.bob}` }
        });
    });
    after(async function () {
        await server?.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    });

    it("cached_tokens for B on A's exact prompt is 0 after B takes A's former sequence (with or without a conversation)", async function () {
        const first = await complete(server, keys.alice, { prompt: story });
        assert.equal(first.cached, 0);
        // the same principal reuses the prefix: what the check below would see without the fix
        const again = await complete(server, keys.alice, { prompt: story });
        assert.equal(again.cached, again.prompt - 1);
        const probe = await complete(server, keys.bob, { prompt: story });
        assert.equal(probe.cached, 0, "bob's request must not reuse alice's cache");

        // alice's idle conversation loses the only sequence to bob: bob's probe of her history finds nothing
        const turn = await complete(server, keys.alice, { prompt: story, conversation_id: "c1" });
        const history = `${story}${turn.text}`;
        const probe2 = await complete(server, keys.bob, { prompt: history });
        assert.equal(probe2.cached, 0);
        const probe3 = await complete(server, keys.bob, { prompt: history, conversation_id: "c1" });
        assert.ok(probe3.cached > 0, "bob's own prefix, cached by his previous request, is his to reuse");
        // and alice, back on the sequence bob used, gets none of his
        const back = await complete(server, keys.alice, { prompt: history, conversation_id: "c1" });
        assert.equal(back.cached, 0);
    });
});

describe("identities: keys are checked at startup", function () {
    let dir: string;
    before(function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-identities-"));
    });
    after(function () {
        fs.rmSync(dir, { recursive: true, force: true });
    });

    const run = (args: string[], env: Record<string, string> = {}) =>
        spawnSync(process.execPath, [serverEntry, "--port", "0", ...args], { encoding: "utf8", timeout: 60_000, env: { ...process.env, ...env } });

    it("refuses a malformed key file, bad entries and duplicate names or keys, with a message that names the problem and never the key", function () {
        const secret = "very-secret-key-0123456789";
        const cases: { args: string[], env?: Record<string, string>, message: RegExp }[] = [
            { args: ["--api-key-file", writeKeyFile(dir, `{"keys": [{"name": "a", "role": "user", "key": "${secret}"}`)], message: /key file .* is not valid JSON/ },
            { args: ["--api-key-file", path.join(dir, "missing.json")], message: /cannot read the key file/ },
            { args: ["--api-key-file", writeKeyFile(dir, [{ name: "a", role: "user", key: secret }])], message: /key file .*: the file must be object/ },
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [] })], message: /keys must NOT have fewer than 1 items/ },
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "a", role: "root", key: secret }] })], message: /keys\.0\.role must be one of user, admin, metrics/ },
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "a", role: "user", key: "short" }] })], message: /keys\.0\.key must NOT have fewer than 16 characters/ },
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "a b", role: "user", key: secret }] })], message: /keys\.0\.name must be 1-64 letters/ },
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "a", role: "user", key: secret, note: 1 }] })], message: /unknown field "note"/ },
            {
                args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "a", role: "user", key: secret }, { name: "a", role: "admin", key: secret + "x" }] })],
                message: /two API keys are named "a"/
            },
            {
                args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "a", role: "user", key: secret }, { name: "b", role: "user", key: secret }] })],
                message: /the keys "a" .* and "b" .* are the same key/
            },
            // the single --api-key is the admin key named "admin": it counts among the names and keys
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "admin", role: "user", key: secret + "y" }] })], env: { KEEPKV_API_KEY: secret }, message: /two API keys are named "admin"/ },
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "z", role: "user", key: secret }] })], env: { KEEPKV_API_KEY: secret }, message: /the keys "admin" .* and "z" .* are the same key/ },
            { args: ["--api-key-file", writeKeyFile(dir, { keys: [{ name: "anonymous", role: "user", key: secret }] })], message: /"anonymous" .* is reserved/ },
            { args: [], env: { KEEPKV_API_KEYS: `alice:user` }, message: /entry 1 of --api-keys must be name:role:key/ },
            { args: [], env: { KEEPKV_API_KEYS: `alice:boss:${secret}` }, message: /role of entry 1 of --api-keys \("alice"\) must be one of user, admin, metrics/ },
            { args: [], env: { KEEPKV_API_KEYS: `alice:user:${secret},bob:user:${secret}` }, message: /the keys "alice" .* and "bob" .* are the same key/ }
        ];
        for (const c of cases) {
            const result = run(c.args, c.env);
            assert.equal(result.status, 2, `${JSON.stringify(c)}: exit ${result.status}\n${result.stderr}`);
            assert.match(result.stderr, c.message, JSON.stringify(c));
            assert.ok(!result.stderr.includes(secret), `the error shows the key: ${result.stderr}`);
            assert.doesNotMatch(result.stdout, /listening/);
        }
    });

    it("a valid key file, --api-keys and --api-key together start the server", async function () {
        const file = writeKeyFile(dir, keyFile);
        const server = await startServer({ args: ["--sequences", "1", "--api-key-file", file], env: { KEEPKV_API_KEY: "legacy-admin-key-00000", KEEPKV_API_KEYS: "carol:user:carol-key-0123456789ab" } });
        try {
            // the legacy key is an admin key
            assert.equal((await httpJson(`${server.url}/admin/model`, { headers: bearer("legacy-admin-key-00000") })).status, 200);
            assert.equal((await httpJson(`${server.url}/admin/model`, { headers: bearer("carol-key-0123456789ab") })).status, 403);
            assert.equal((await httpJson(`${server.url}/v1/models`, { headers: bearer("carol-key-0123456789ab") })).status, 200);
            assert.equal((await httpJson(`${server.url}/v1/models`, { headers: bearer(keys.alice) })).status, 200);
        } finally {
            await server.stop();
        }
    });
});

// Where the identities meet the network defaults: the rate limit's key bucket is the principal, /health's
// details go to the keys that may use the API, the open-bind check counts keys from every source, and
// the WebSocket's auth-first rule applies to the identities' own messages.
describe("identities with the network defaults: rate limits per principal, /health details, open binds", function () {
    let dir: string;
    let server: ServerHandle;
    before(async function () {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-identities-"));
        // no --api-key: every key comes from the key file, and that is enough to bind beyond loopback
        server = await startServer({ args: ["--sequences", "1", "--host", "0.0.0.0", "--rate-limit", "4", "--api-key-file", writeKeyFile(dir, keyFile)] });
    });
    after(async function () {
        await server?.stop();
        fs.rmSync(dir, { recursive: true, force: true });
    });
    const from = (localAddress: string, p: string, key: string, body?: object) =>
        requestFrom(server.port, { localAddress, path: p, headers: bearer(key), ...(body != null ? { body } : {}) });
    const chat = (localAddress: string, key: string) => from(localAddress, "/v1/completions", key, { prompt: "Hi", max_tokens: 1 });

    it("a key's allowance belongs to its principal, across addresses and on both APIs; another principal has its own", async function () {
        for (const address of ["127.0.0.21", "127.0.0.21", "127.0.0.22", "127.0.0.22"])
            assert.equal((await chat(address, keys.alice)).status, 200, address);
        const fifth = await chat("127.0.0.23", keys.alice);
        assert.equal(fifth.status, 429, "alice from a fresh address: her allowance is spent");
        assert.equal(JSON.parse(fifth.body).error.code, "rate_limited");
        const ws = await WsTestClient.connect(server.wsUrl, { headers: bearer(keys.alice) });
        const refused = await ws.chat({ prompt: "Hi", max_tokens: 1 }).done as { type: string, code?: string };
        assert.equal(refused.code, "rate_limited", JSON.stringify(refused));
        await ws.close();
        // bob, from the address alice was just refused on, has his own allowance
        assert.equal((await chat("127.0.0.23", keys.bob)).status, 200);
    });

    it("wrong tokens count against their address (also on /health); an address out of allowance gets 429 for a right key and /health's status only", async function () {
        for (let i = 0; i < 3; i++)
            assert.equal((await from("127.0.0.24", "/v1/models", `not-a-key-${i}-0000000`)).status, 401);
        const probe = await from("127.0.0.24", "/health", "not-a-key-x-0000000");
        assert.equal(probe.status, 200);
        assert.deepEqual(JSON.parse(probe.body), { status: "ok" });
        assert.equal((await from("127.0.0.24", "/v1/models", keys.bob)).status, 429, "the fourth wrong token was the one sent to /health");
        const health = await from("127.0.0.24", "/health", keys.bob);
        assert.deepEqual(JSON.parse(health.body), { status: "ok" }, "no details while the address is out of allowance");
        assert.equal((await from("127.0.0.25", "/v1/models", keys.bob)).status, 200, "another address is not affected");
    });

    it("/health adds the engine's details for user and admin keys, not for a metrics key or none", async function () {
        for (const key of [keys.alice, keys.root]) {
            const body = JSON.parse((await from("127.0.0.26", "/health", key)).body);
            assert.equal(body.status, "ok");
            assert.equal(typeof body.model, "string");
            assert.equal(typeof body.engine.pid, "number");
        }
        for (const headers of [bearer(keys.prom), {} as Record<string, string>])
            assert.deepEqual(JSON.parse((await requestFrom(server.port, { localAddress: "127.0.0.26", path: "/health", headers })).body), { status: "ok" });
    });

    it("WebSocket: before auth a new_conversation closes the socket (1008); after a user key's auth it is answered", async function () {
        const early = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
        early.send({ type: "new_conversation", id: "n" });
        const refusal = await early.nextError(null);
        assert.equal(refusal.code, "unauthorized");
        // refused for the message itself, not by the 10 s auth timer
        assert.match(refusal.message, /authenticate first/);
        assert.equal((await early.closed).code, 1008);
        const page = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
        const ok = page.next((m) => m.type === "auth_ok");
        page.send({ type: "auth", token: keys.alice });
        await ok;
        const issued = page.next((m) => m.type === "conversation") as Promise<WsConversationMessage>;
        page.send({ type: "new_conversation", id: "n" });
        assert.match((await issued).conversation_id, /^conv_[0-9a-f]{32}$/);
        await page.close();
    });

    it("/v1/kv read through the shared statistics cache: concurrent readers each see only their own conversation ids", async function () {
        const reply = await from("127.0.0.27", "/v1/completions", keys.root, { prompt: story, max_tokens: 2, temperature: 0, conversation_id: "root-private-conversation" });
        assert.equal(reply.status, 200, reply.body);
        // at once, so that they share one engine read (or its cached snapshot)
        const readers = [keys.root, keys.alice, keys.root, keys.bob, keys.alice, keys.root];
        const answers = await Promise.all(readers.map((key) => from("127.0.0.27", "/v1/kv", key)));
        answers.forEach((answer, i) => {
            assert.equal(answer.status, 200);
            const ids = (JSON.parse(answer.body) as { sequences: { conversation_id: string | null }[] }).sequences.map((q) => q.conversation_id);
            if (readers[i] === keys.root)
                assert.deepEqual(ids, ["root-private-conversation"], `reader ${i}`);
            else
                assert.deepEqual(ids, [null], `reader ${i} (not the owner, not an admin)`);
        });
    });

    it("binding beyond loopback: a key file's keys count (this server binds 0.0.0.0 with nothing else); a metrics key alone does not", function () {
        const refused = spawnSync(process.execPath, [serverEntry, ...testServerArgs, "--port", "0", "--host", "0.0.0.0"],
            { encoding: "utf8", timeout: 60_000, env: { ...process.env, KEEPKV_METRICS_API_KEY: "metrics-only-key-000000" } });
        assert.equal(refused.status, 2, refused.stderr);
        assert.match(refused.stderr, /--host .*binds beyond loopback without an API key of role user or admin/);
        assert.doesNotMatch(refused.stdout, /listening/);
    });
});
