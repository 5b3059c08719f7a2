// Scale-out for real on loopback: two keepkv servers behind a real nginx running the repository's
// deploy/nginx/keepkv.conf. A conversation's turns land on the replica that holds its KV cache (over
// WebSocket and HTTP, on new connections each time), different conversations spread over both replicas,
// once a replica is stopped every new conversation goes to the other one, and the dashboard served
// through nginx keeps talking to the replica that holds its conversation.
import assert from "node:assert/strict";
import { openBrowser } from "../helpers/browser.js";
import { startNginx, type NginxHandle } from "../helpers/nginx.js";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";
import type { ChatMessage, WsFinalMessage } from "../../server/protocol/ws-messages.js";

type Replica = { name: string, server: ServerHandle, addr: string };

describe("scale-out behind nginx: sticky routing per conversation", function () {
    let replicas: Replica[] = [];
    let nginx: NginxHandle;
    const runId = Date.now().toString(36);

    /** the replica that nginx says answered (X-Keepkv-Replica: the upstream address) */
    function replicaOf(header: string | null): Replica {
        // after a failed attempt nginx lists every upstream it tried: "A, B"; the last one answered
        const last = (header ?? "").split(",").pop()!.trim();
        const found = replicas.find((r) => r.addr === last);
        assert.ok(found != null, `X-Keepkv-Replica "${header}" names one of ${replicas.map((r) => r.addr).join(", ")}`);
        return found;
    }

    /** the replicas whose scheduler holds the conversation's sequence now (asked directly, not through nginx) */
    async function holders(conversation: string): Promise<string[]> {
        const names: string[] = [];
        for (const r of replicas) {
            if (r.server.proc.exitCode != null || r.server.proc.signalCode != null)
                continue;
            const slots = await httpJson(`${r.server.url}/slots`);
            if ((slots.body as { conversation_id: string | null }[]).some((s) => s.conversation_id === conversation))
                names.push(r.name);
        }
        return names;
    }

    /** One turn over a new WebSocket through nginx, routed by ?conversation_id=. */
    async function wsTurn(conversation: string, messages: ChatMessage[]): Promise<{ final: WsFinalMessage, text: string }> {
        const client = await WsTestClient.connect(`ws://127.0.0.1:${nginx.port}/v1/ws?conversation_id=${encodeURIComponent(conversation)}`);
        try {
            const run = client.chat({ messages, max_tokens: 24, temperature: 0, conversation_id: conversation });
            const final = await run.done;
            assert.equal(final.type, "final", JSON.stringify(final));
            assert.deepEqual(client.schemaViolations, []);
            return { final: final as WsFinalMessage, text: run.text() };
        } finally {
            await client.close();
        }
    }

    /** One turn over HTTP (OpenAI chat completions) through nginx, routed by X-Conversation-Id. */
    async function httpTurn(conversation: string, messages: ChatMessage[]) {
        const res = await httpJson(`${nginx.url}/v1/chat/completions`, {
            body: { model: "any", messages, max_tokens: 24, temperature: 0 },
            headers: { "X-Conversation-Id": conversation }
        });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        return {
            replica: replicaOf(res.headers.get("x-keepkv-replica")),
            cached: res.body.usage.prompt_tokens_details.cached_tokens as number,
            text: res.body.choices[0].message.content as string
        };
    }

    before(async function () {
        const [a, b] = await Promise.all([startServer({ args: ["--sequences", "4"] }), startServer({ args: ["--sequences", "4"] })]);
        replicas = [
            { name: "A", server: a, addr: `127.0.0.1:${a.port}` },
            { name: "B", server: b, addr: `127.0.0.1:${b.port}` }
        ];
        nginx = await startNginx(replicas.map((r) => r.addr));
    });
    after(async function () {
        await nginx?.stop();
        await Promise.all(replicas.map((r) => r.server.stop()));
    });

    it("proxies the dashboard, the API and WebSocket upgrades", async function () {
        const page = await fetch(`${nginx.url}/`);
        assert.equal(page.status, 200);
        assert.match(await page.text(), /dashboard\/app\.js/);
        const health = await httpJson(`${nginx.url}/health`);
        assert.equal(health.status, 200);
        const client = await WsTestClient.connect(`ws://127.0.0.1:${nginx.port}/v1/ws`);
        assert.equal(client.hello.model, "stories3M-q8_0.gguf");
        await client.close();
        // requests without a conversation are spread round-robin
        const answered = new Set<string>();
        for (let i = 0; i < 6; i++)
            answered.add(replicaOf((await fetch(`${nginx.url}/v1/kv`)).headers.get("x-keepkv-replica")).name);
        assert.deepEqual([...answered].sort(), ["A", "B"]);
    });

    it("the dashboard behind nginx: its WebSocket and its HTTP polls reach the replica that holds its conversation", async function () {
        const browser = await openBrowser({ width: 1200, height: 800 });
        try {
            const { page } = browser;
            const replicasSeen: string[] = [];
            page.on("response", (r) => {
                if (/\/v1\/(kv|config)$/.test(new URL(r.url()).pathname))
                    replicasSeen.push(replicaOf(r.headers()["x-keepkv-replica"] ?? null).name);
            });
            await page.goto(nginx.url);
            await page.locator('#connection[data-state="open"]').waitFor();
            const conversation = await page.textContent("#conversation-id") ?? "";
            await page.fill("#max-tokens", "30");
            await page.fill("#prompt", "Once upon a time");
            await page.click("#send");
            await page.locator("#messages .msg-assistant[data-finish-reason]").waitFor({ timeout: 120_000 });
            const home = await holders(conversation);
            assert.equal(home.length, 1, `${conversation} is held by ${home.join(", ")}`);
            // a few more polls of the KV statistics
            await page.waitForTimeout(2500);
            assert.ok(replicasSeen.length >= 3, `${replicasSeen.length} polls`);
            assert.deepEqual([...new Set(replicasSeen)], home);
            assert.equal(await page.locator("#sequences tr.mine").count(), 1, "the KV table shows this chat's sequence");
            assert.deepEqual(browser.problems, []);
        } finally {
            await browser.close();
        }
    });

    it("a conversation's follow-up turns land on the replica holding it and reuse its cache (new connections each turn)", async function () {
        for (let c = 0; c < 3; c++) {
            const conversation = `sticky-${runId}-${c}`;
            const messages: ChatMessage[] = [{ role: "user", content: `Once upon a time, there was a ${["cat", "boy", "tree"][c]} who` }];
            const first = await wsTurn(conversation, messages);
            assert.equal(first.final.usage.cached_tokens, 0);
            const home = await holders(conversation);
            assert.equal(home.length, 1, `one replica holds ${conversation}: ${home.join(", ")}`);

            let reply = first.text;
            for (let turn = 2; turn <= 3; turn++) {
                messages.push({ role: "assistant", content: reply }, { role: "user", content: `And then? (${turn})` });
                const next = await wsTurn(conversation, messages);
                assert.ok(next.final.usage.cached_tokens > 0, `turn ${turn} of ${conversation} reused the cache (${JSON.stringify(next.final.usage)})`);
                assert.deepEqual(await holders(conversation), home, "still on the same replica");
                reply = next.text;
            }
            messages.push({ role: "assistant", content: reply });

            // the HTTP API with X-Conversation-Id reaches the same replica and the same cache
            const viaHttp = await httpTurn(conversation, [...messages, { role: "user", content: "The end." }]);
            assert.equal(viaHttp.replica.name, home[0]);
            assert.ok(viaHttp.cached > 0, `HTTP turn reused the cache (${viaHttp.cached} cached tokens)`);
        }
    });

    it("different conversations are spread over both replicas, each staying on its own", async function () {
        const seen = new Map<string, string>();
        for (let c = 0; c < 16; c++) {
            const conversation = `spread-${runId}-${c}`;
            const first = await httpTurn(conversation, [{ role: "user", content: `Tom had a red ball ${c}.` }]);
            seen.set(conversation, first.replica.name);
        }
        const counts = new Map<string, number>();
        for (const name of seen.values())
            counts.set(name, (counts.get(name) ?? 0) + 1);
        assert.deepEqual([...counts.keys()].sort(), ["A", "B"], `conversations per replica: ${JSON.stringify(Object.fromEntries(counts))}`);
        // the routing is a function of the conversation: asking again gives the same replica
        for (const [conversation, name] of [...seen].slice(0, 6)) {
            const again = await fetch(`${nginx.url}/v1/kv`, { headers: { "X-Conversation-Id": conversation } });
            assert.equal(again.status, 200);
            assert.equal(replicaOf(again.headers.get("x-keepkv-replica")).name, name, conversation);
        }
        // nginx's own record: every request of a conversation went to one upstream
        const upstreamsByConversation = new Map<string, Set<string>>();
        for (const line of nginx.accessLog()) {
            const [conversation, upstream] = line.split(" ");
            if (conversation == null || conversation === "-" || conversation === "" || upstream == null || upstream === "-")
                continue;
            upstreamsByConversation.set(conversation, (upstreamsByConversation.get(conversation) ?? new Set()).add(upstream));
        }
        assert.ok(upstreamsByConversation.size >= 16 + 3);
        for (const [conversation, upstreams] of upstreamsByConversation)
            assert.equal(upstreams.size, 1, `${conversation} went to ${[...upstreams].join(" and ")}`);
    });

    it("after a replica stops, new conversations (WebSocket and HTTP) go to the other one", async function () {
        // find conversation ids that nginx routes to A while A is up: those must move
        const toA: string[] = [];
        for (let c = 0; toA.length < 4 && c < 64; c++) {
            const conversation = `failover-${runId}-${c}`;
            const res = await fetch(`${nginx.url}/v1/kv`, { headers: { "X-Conversation-Id": conversation } });
            if (replicaOf(res.headers.get("x-keepkv-replica")).name === "A")
                toA.push(conversation);
        }
        assert.equal(toA.length, 4);

        const stopped = await replicas[0]!.server.stop();
        assert.equal(stopped.code, 0);

        for (const conversation of toA.slice(0, 2)) {
            const turn = await httpTurn(conversation, [{ role: "user", content: "Lily found a shell." }]);
            assert.equal(turn.replica.name, "B", conversation);
        }
        for (const conversation of toA.slice(2)) {
            const { final } = await wsTurn(conversation, [{ role: "user", content: "Ben saw a big fish." }]);
            assert.ok(["stop", "length"].includes(final.finish_reason));
            assert.deepEqual(await holders(conversation), ["B"], conversation);
        }
        // and conversations that were on A go on, on B, re-evaluating their history
        for (let c = 0; c < 4; c++) {
            const turn = await httpTurn(`spread-${runId}-${c}`, [{ role: "user", content: `Tom had a red ball ${c}.` }, { role: "user", content: "More." }]);
            assert.equal(turn.replica.name, "B");
        }
    });
});
