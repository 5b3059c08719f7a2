// Security of the real server: bearer tokens on every endpoint but /health (a separate one for
// /metrics), WebSocket upgrades without a token refused, browser origins, DNS rebinding, loopback-only
// binding by default, and logs without secrets or conversation text.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { tokenMatches } from "../../server/http/auth.js";
import { hostAllowed, effectiveAllowedHosts } from "../../server/security/hosts.js";
import { httpJson, serverEntry, startServer, testServerArgs, type ServerHandle } from "../helpers/server-process.js";
import { WsTestClient } from "../helpers/ws-client.js";

/** A raw HTTP request, so that the Host header can be anything (fetch does not let a test set it). */
function rawRequest(port: number, opts: { method?: string, path: string, headers?: Record<string, string>, body?: string }): Promise<{ status: number, body: string, headers: http.IncomingHttpHeaders }> {
    return new Promise((resolve, reject) => {
        const req = http.request({ host: "127.0.0.1", port, method: opts.method ?? "GET", path: opts.path, headers: opts.headers }, (res) => {
            let body = "";
            res.setEncoding("utf8").on("data", (d: string) => { body += d; }).on("end", () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
        });
        req.on("error", reject);
        req.end(opts.body);
    });
}

/** Every route of the API, with a body where it takes one. */
const routes: { method: string, path: string, body?: object }[] = [
    { method: "GET", path: "/metrics" },
    { method: "GET", path: "/METRICS" },
    { method: "GET", path: "/metrics/" },
    { method: "GET", path: "/ready" },
    { method: "GET", path: "/slots" },
    { method: "GET", path: "/v1/kv" },
    { method: "GET", path: "/v1/schemas" },
    { method: "GET", path: "/v1/models" },
    { method: "GET", path: "/v1/models/stories3M-q8_0.gguf" },
    { method: "GET", path: "/admin/model" },
    { method: "POST", path: "/admin/model", body: { model: "stories3M-q8_0.gguf" } },
    { method: "POST", path: "/v1/chat/completions", body: { messages: [{ role: "user", content: "hi" }], max_tokens: 2 } },
    { method: "POST", path: "/v1/completions", body: { prompt: "hi", max_tokens: 2 } },
    { method: "GET", path: "/no/such/route" }
];

describe("security: tokens", function () {
    let server: ServerHandle;
    const apiKey = "api-key-7f3c9a51d2";
    const metricsKey = "metrics-key-0b8e44c6aa";
    before(async function () {
        server = await startServer({ args: ["--sequences", "1"], env: { KEEPKV_API_KEY: apiKey, KEEPKV_METRICS_API_KEY: metricsKey } });
    });
    after(async function () {
        await server?.stop();
    });

    const call = (route: typeof routes[number], token?: string) => httpJson(`${server.url}${route.path}`, {
        method: route.method,
        ...(route.body != null ? { body: route.body } : {}),
        headers: token != null ? { Authorization: `Bearer ${token}` } : {}
    });

    it("every endpoint but /health refuses a request without the token, or with a wrong one, with 401 unauthorized", async function () {
        assert.equal((await httpJson(`${server.url}/health`)).status, 200);
        for (const route of routes)
            for (const token of [undefined, "wrong", apiKey.slice(0, -1), apiKey + "x", ""]) {
                const { status, body, headers } = await call(route, token);
                assert.equal(status, 401, `${route.method} ${route.path} with ${JSON.stringify(token)}: ${status}`);
                assert.equal(body.error.code, "unauthorized");
                assert.equal(headers.get("www-authenticate"), "Bearer");
            }
        // nor is the token taken from anywhere but the Authorization header
        assert.equal((await httpJson(`${server.url}/v1/models?api_key=${apiKey}`)).status, 401);
        assert.equal((await httpJson(`${server.url}/v1/models`, { headers: { "X-API-Key": apiKey } })).status, 401);
    });

    it("the API token (an admin key) opens the API and /metrics; the metrics token opens /metrics (in any spelling the router accepts) and nothing else", async function () {
        for (const route of routes) {
            const isMetrics = route.path.toLowerCase().replace(/\/+$/, "") === "/metrics";
            const withApi = await call(route, apiKey);
            const withMetrics = await call(route, metricsKey);
            if (isMetrics) {
                assert.equal(withApi.status, 200, `${route.path} with the API token`);
                assert.equal(withMetrics.status, 200, `${route.path} with the metrics token`);
                assert.match(String(withMetrics.body), /keepkv_generation_tokens_total/);
            } else {
                assert.notEqual(withApi.status, 401, `${route.method} ${route.path} with the API token`);
                assert.notEqual(withApi.status, 403, `${route.method} ${route.path} with the API token`);
                assert.equal(withMetrics.status, 403, `${route.method} ${route.path} with the metrics token`);
                assert.equal(withMetrics.body.error.code, "forbidden");
            }
        }
        // the scheme name is case-insensitive (RFC 7235)
        assert.equal((await httpJson(`${server.url}/v1/models`, { headers: { Authorization: `bearer ${apiKey}` } })).status, 200);
    });

    it("WebSocket: an upgrade without the token is refused (401), a wrong one too; a browser page may send it as its first message", async function () {
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl), 401);
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Authorization: "Bearer wrong" }), 401);
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Authorization: `Bearer ${metricsKey}` }), 403);
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Authorization: `Bearer ${apiKey}` }), 101);
        // a same-origin page: admitted, but nothing works before the auth message, and the hello tells nothing
        const page = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
        assert.equal(page.hello.auth_required, true);
        assert.equal(page.hello.model, null);
        page.send({ type: "ping", id: "p" });
        assert.equal((await page.nextError(null)).code, "unauthorized");
        assert.equal((await page.closed).code, 1008);
        const good = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
        const ok = good.next((m) => m.type === "auth_ok");
        good.send({ type: "auth", token: apiKey });
        await ok;
        assert.equal((await good.chat({ prompt: "Once", max_tokens: 3 }).done).type, "final");
        await good.close();
    });

    it("/health without the token says only ok (or loading): no model name, path or pid; with the token it adds the engine's details", async function () {
        for (const token of [undefined, "wrong", metricsKey]) {
            const res = await call({ method: "GET", path: "/health" }, token);
            assert.equal(res.status, 200);
            assert.deepEqual(res.body, { status: "ok" }, `with ${JSON.stringify(token)}`);
        }
        const full = await call({ method: "GET", path: "/health" }, apiKey);
        assert.equal(full.body.status, "ok");
        assert.equal(full.body.model, "stories3M-q8_0.gguf");
        assert.equal(typeof full.body.engine.pid, "number");
    });

    it("WebSocket: before authenticating, anything but a valid auth message (another type, bad JSON, a binary frame, a non-object) closes the socket with 1008", async function () {
        const frames: (string | Buffer)[] = [
            JSON.stringify({ type: "chat", id: "c", prompt: "hi" }), "{not json", Buffer.from([1, 2, 3]), "[1,2]", "42",
            JSON.stringify({ type: "nonsense" }), JSON.stringify({ type: "auth" }), JSON.stringify({ type: "auth", token: apiKey, extra: 1 })
        ];
        for (const frame of frames) {
            const page = await WsTestClient.connect(server.wsUrl, { headers: { Origin: server.url } });
            const refused = page.nextError(null);
            page.ws.send(frame);
            assert.equal((await refused).code, "unauthorized", String(frame));
            const closed = await page.closed;
            assert.equal(closed.code, 1008, String(frame));
            assert.equal(closed.reason, "unauthorized");
        }
    });

    it("compares tokens in constant time (digests of equal length through crypto.timingSafeEqual)", function () {
        assert.equal(tokenMatches(apiKey, apiKey), true);
        for (const other of ["", "a", apiKey.slice(0, -1), apiKey + "\0", apiKey.toUpperCase(), "x".repeat(10_000)])
            assert.equal(tokenMatches(other, apiKey), false);
        const source = fs.readFileSync(path.join(path.dirname(serverEntry), "http", "auth.js"), "utf8");
        assert.match(source, /timingSafeEqual/);
        assert.doesNotMatch(source, /given\s*===\s*expected/);
    });
});

describe("security: origins and hosts", function () {
    let server: ServerHandle;
    before(async function () {
        server = await startServer({ args: ["--sequences", "1", "--allowed-origins", "http://app.example:3000", "--allowed-hosts", "chat.example"] });
    });
    after(async function () {
        await server?.stop();
    });

    it("browser origins: the server's own and allowed ones pass (with CORS headers), others get 403 forbidden_origin on HTTP and at the upgrade", async function () {
        const own = await httpJson(`${server.url}/v1/models`, { headers: { Origin: server.url } });
        assert.equal(own.status, 200);
        const allowed = await httpJson(`${server.url}/v1/models`, { headers: { Origin: "http://app.example:3000" } });
        assert.equal(allowed.status, 200);
        assert.equal(allowed.headers.get("access-control-allow-origin"), "http://app.example:3000");
        const preflight = await fetch(`${server.url}/v1/chat/completions`, { method: "OPTIONS", headers: { Origin: "http://app.example:3000", "Access-Control-Request-Method": "POST" } });
        assert.equal(preflight.status, 204);
        assert.match(preflight.headers.get("access-control-allow-headers") ?? "", /Authorization/);
        for (const origin of ["http://evil.example", "http://app.example:3001", "null", "http://127.0.0.1.evil.example"]) {
            const denied = await httpJson(`${server.url}/v1/chat/completions`, { headers: { Origin: origin }, body: { messages: [{ role: "user", content: "hi" }] } });
            assert.equal(denied.status, 403, origin);
            assert.equal(denied.body.error.code, "forbidden_origin");
            assert.equal(denied.headers.get("access-control-allow-origin"), null);
            assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Origin: origin }), 403, origin);
        }
        assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Origin: "http://app.example:3000" }), 101);
    });

    it("DNS rebinding: a Host that does not name this machine (or an allowed host) gets 403 forbidden_host, also at the upgrade", async function () {
        for (const host of [`localhost:${server.port}`, `127.0.0.1:${server.port}`, `[::1]:${server.port}`, `chat.example:${server.port}`, "app.localhost"]) {
            const res = await rawRequest(server.port, { path: "/v1/models", headers: { Host: host } });
            assert.equal(res.status, 200, host);
        }
        for (const host of [`evil.example:${server.port}`, "evil.example", `localhost.evil.example:${server.port}`, "127.0.0.1.nip.io", "chat.example.evil"]) {
            // the rebinding page is "same-origin" with itself: Origin and Host agree
            const res = await rawRequest(server.port, { path: "/v1/models", headers: { Host: host, Origin: `http://${host}` } });
            assert.equal(res.status, 403, host);
            assert.equal(JSON.parse(res.body).error.code, "forbidden_host");
            const upgrade = await rawRequest(server.port, {
                path: "/v1/ws",
                headers: { Host: host, Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==" }
            });
            assert.equal(upgrade.status, 403, host);
        }
        // and the rule itself: a server bound to another address keeps the check (names: only its own and
        // the allowed ones; any IP literal, which cannot be rebound); only `*` turns it off
        for (const bind of ["0.0.0.0", "::", "192.168.1.5"]) {
            const policy = effectiveAllowedHosts(bind, []);
            assert.notEqual(policy, null, bind);
            for (const host of ["evil.example:8080", "evil.example", "192.168.1.5.nip.io"])
                assert.equal(hostAllowed(host, policy), false, `${host} on ${bind}`);
            for (const host of ["localhost:8080", "192.168.1.5:8080", "10.0.0.7", "[fe80::1]:8080"])
                assert.equal(hostAllowed(host, policy), true, `${host} on ${bind}`);
            assert.equal(hostAllowed("chat.example:8080", effectiveAllowedHosts(bind, ["chat.example"])), true);
        }
        assert.equal(effectiveAllowedHosts("0.0.0.0", ["*"]), null);
        assert.equal(hostAllowed("10.0.0.7", effectiveAllowedHosts("127.0.0.1", [])), false, "a loopback server is reached by loopback names only");
        assert.equal(hostAllowed("evil.example", effectiveAllowedHosts("127.0.0.1", [])), false);
        assert.equal(hostAllowed("127.0.0.2:80", effectiveAllowedHosts("127.0.0.1", [])), true);
    });
});

describe("security: binding and logs", function () {
    it("binds 127.0.0.1 only by default", async function () {
        const server = await startServer({ args: ["--sequences", "1"] });
        try {
            assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
            // the kernel's table of listening sockets: this port is bound to 127.0.0.1 (0100007F), nothing else
            const hex = server.port.toString(16).toUpperCase().padStart(4, "0");
            const listening = [fs.readFileSync("/proc/net/tcp", "utf8"), fs.existsSync("/proc/net/tcp6") ? fs.readFileSync("/proc/net/tcp6", "utf8") : ""]
                .join("\n").split("\n").map((l) => l.trim().split(/\s+/))
                .filter((f) => f[1]?.endsWith(`:${hex}`) && f[3] === "0A").map((f) => f[1]);
            assert.deepEqual(listening, [`0100007F:${hex}`]);
            // and from another local address of this machine, if it has one, nothing answers
            const external = Object.values(os.networkInterfaces()).flat().find((i) => i != null && i.family === "IPv4" && !i.internal);
            if (external != null)
                await assert.rejects(fetch(`http://${external.address}:${server.port}/health`));
        } finally {
            await server.stop();
        }
    });

    it("refuses to bind beyond loopback without an API key unless --insecure is given; bound beyond loopback it keeps the Host check", async function () {
        const refused = spawnSync(process.execPath, [serverEntry, ...testServerArgs, "--port", "0", "--host", "0.0.0.0"], { encoding: "utf8", timeout: 60_000 });
        assert.equal(refused.status, 2, refused.stdout + refused.stderr);
        assert.match(refused.stderr, /--host .*binds beyond loopback without an API key.*--insecure/);
        assert.doesNotMatch(refused.stdout, /listening/);
        for (const args of [["--insecure"], ["--api-key", "bind-key-4e1d"]]) {
            const server = await startServer({ args: ["--sequences", "1", "--host", "0.0.0.0", ...args] });
            try {
                const headers: Record<string, string> = args[0] === "--api-key" ? { Authorization: `Bearer ${args[1]}` } : {};
                // a rebinding page: its own name, which resolves to this machine; by address or localhost it answers
                const rebound = await rawRequest(server.port, { path: "/v1/models", headers: { ...headers, Host: `evil.example:${server.port}`, Origin: `http://evil.example:${server.port}` } });
                assert.equal(rebound.status, 403, args.join(" "));
                assert.equal(JSON.parse(rebound.body).error.code, "forbidden_host");
                for (const host of [`localhost:${server.port}`, `127.0.0.1:${server.port}`, `192.168.7.9:${server.port}`])
                    assert.equal((await rawRequest(server.port, { path: "/v1/models", headers: { ...headers, Host: host } })).status, 200, host);
            } finally {
                await server.stop();
            }
        }
        // --insecure alone, or with an explicit value; `false` refuses again
        const explicit = spawnSync(process.execPath, [serverEntry, "--print-config", "--insecure", "--host", "0.0.0.0"], { encoding: "utf8", timeout: 60_000 });
        assert.equal(JSON.parse(explicit.stdout).insecure, true);
        const off = spawnSync(process.execPath, [serverEntry, ...testServerArgs, "--port", "0", "--host", "0.0.0.0", "--insecure", "false"], { encoding: "utf8", timeout: 60_000 });
        assert.equal(off.status, 2);
    });

    it("logs no token, prompt or generated text, even at debug level and on errors", async function () {
        const apiKey = "sekrit-api-key-91d7e2";
        const metricsKey = "sekrit-metrics-key-3b5a09";
        const prompt = "Zanzibar quokka prompt marker";
        const server = await startServer({ args: ["--sequences", "1", "--log-level", "debug", "--api-key", apiKey], env: { KEEPKV_METRICS_API_KEY: metricsKey } });
        const auth = { Authorization: `Bearer ${apiKey}` };
        let generated = "";
        try {
            const client = await WsTestClient.connect(server.wsUrl, { headers: auth });
            const run = client.chat({ messages: [{ role: "system", content: `${prompt} system` }, { role: "user", content: prompt }], max_tokens: 60, temperature: 0 });
            await run.done;
            generated = run.text();
            // errors that carry client text: bad JSON, schema errors, a prompt too long, an unknown type
            client.send(`{"type":"chat","id":"bad","prompt":"${prompt} unterminated`);
            await client.nextError(null);
            client.send({ type: "chat", id: "bad2", prompt: `${prompt} schema`, colour: prompt });
            await client.nextError("bad2");
            await client.chat({ prompt: `${prompt} `.repeat(2000), max_tokens: 2 }).done;
            client.send({ type: prompt });
            await client.nextError(null);
            await client.close();
            const httpChat = await httpJson(`${server.url}/v1/chat/completions`, { headers: auth, body: { messages: [{ role: "user", content: prompt }], max_tokens: 20 } });
            generated += httpChat.body.choices[0].message.content;
            await httpJson(`${server.url}/v1/chat/completions`, { headers: { Authorization: "Bearer wrong-token-55aa" }, body: { messages: [{ role: "user", content: prompt }] } });
            assert.equal(await WsTestClient.upgradeStatus(server.wsUrl, { Authorization: "Bearer wrong-token-66bb" }), 401);
            await httpJson(`${server.url}/metrics`, { headers: { Authorization: `Bearer ${metricsKey}` } });
        } finally {
            await server.stop();
        }
        const log = server.output();
        assert.ok(log.length > 0 && /engine ready/.test(log), "the log was captured");
        for (const secret of [apiKey, metricsKey, "wrong-token-55aa", "wrong-token-66bb", prompt, "Zanzibar", "quokka"])
            assert.ok(!log.includes(secret), `the log contains ${JSON.stringify(secret)}`);
        assert.ok(generated.length > 40, "some text was generated");
        for (let i = 0; i + 20 <= generated.length; i += 10) {
            const stretch = generated.slice(i, i + 20);
            assert.ok(!log.includes(stretch), `the log contains generated text ${JSON.stringify(stretch)}`);
        }
    });

    it("never prints a secret option's value: not in an invalid-configuration error, not in --print-config", function () {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-sec-"));
        try {
            const file = path.join(dir, "config.json");
            fs.writeFileSync(file, JSON.stringify({ apiKey: 918273645 }));
            const bad = spawnSync(process.execPath, [serverEntry, "--config", file], { encoding: "utf8", timeout: 60_000 });
            assert.equal(bad.status, 2);
            assert.match(bad.stderr, /apiKey/);
            assert.doesNotMatch(bad.stderr, /918273645/);
            const shown = spawnSync(process.execPath, [serverEntry, "--print-config", "--api-key", "printed-key-x1"], { encoding: "utf8", timeout: 60_000 });
            assert.equal(shown.status, 0);
            assert.doesNotMatch(shown.stdout, /printed-key-x1/);
            assert.equal(JSON.parse(shown.stdout).apiKey, "(set)");
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
