// The web dashboard in real headless Chromium against a real server (stories3M, KeepKV on with a budget
// so that the KV charts carry real data): the page loads offline, a message streams a reply, a follow-up
// reuses the conversation's cache, the stop button cancels, the KV charts show non-zero data. Saves
// docs/screenshots/dashboard.png. Last, the page chats with the default model (SmolLM2) through its chat template.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import type { Locator, Page } from "playwright-core";
import { repoRoot } from "../../lib/paths.js";
import { openBrowser, saveScreenshot, type BrowserHandle } from "../helpers/browser.js";
import { httpJson, startServer, type ServerHandle } from "../helpers/server-process.js";
import { smolArgs } from "../helpers/smollm2.js";

const budget = 64;
const batch = 16;

/** Waits until a reply bubble has its finish reason (set when the final message arrives). */
async function finished(page: Page, bubble: Locator): Promise<string> {
    await bubble.and(page.locator("[data-finish-reason]")).waitFor({ timeout: 120_000 });
    return await bubble.getAttribute("data-finish-reason") ?? "";
}

/** Types a message, sends it and returns once the reply has a finish reason; records every text length seen while streaming. */
async function sendAndWait(page: Page, text: string, opts: { maxTokens?: number, temperature?: number } = {}) {
    if (opts.maxTokens != null)
        await page.fill("#max-tokens", String(opts.maxTokens));
    if (opts.temperature != null)
        await page.fill("#temperature", String(opts.temperature));
    const before = await page.locator("#messages .msg-assistant").count();
    await page.evaluate(() => {
        const w = window as unknown as { lengths: number[] };
        w.lengths = [];
        new MutationObserver(() => {
            const bubbles = document.querySelectorAll("#messages .msg-assistant .msg-text");
            const last = bubbles[bubbles.length - 1];
            if (last != null)
                w.lengths.push(last.textContent?.length ?? 0);
        }).observe(document.getElementById("messages")!, { subtree: true, childList: true, characterData: true });
    });
    await page.fill("#prompt", text);
    await page.click("#send");
    await page.locator("#messages .msg-assistant").nth(before).waitFor();
    return page.locator("#messages .msg-assistant").nth(before);
}

async function legendValue(page: Page, chart: string, series: string, attr: "latest" | "max"): Promise<number | null> {
    const value = await page.locator(`#${chart} .legend li[data-series="${series}"]`).getAttribute(`data-${attr}`, { timeout: 1000 }).catch(() => null);
    return value == null || value === "" ? null : Number(value);
}

describe("dashboard in headless Chromium", function () {
    let server: ServerHandle;
    let browser: BrowserHandle;
    const requested: string[] = [];

    before(async function () {
        server = await startServer({ args: ["--sequences", "2", "--policy", "keepkv", "--budget", String(budget), "--batch-size", String(batch)] });
        browser = await openBrowser();
        browser.page.on("request", (r) => requested.push(r.url()));
    });
    after(async function () {
        await browser?.close();
        await server?.stop();
    });

    it("the dashboard's modules type-check (tsc -p dashboard: plain ES modules with JSDoc types, no build step)", function () {
        const tsc = spawnSync(process.execPath, [path.join(repoRoot, "node_modules", "typescript", "bin", "tsc"), "-p", path.join(repoRoot, "dashboard")], { encoding: "utf8" });
        assert.equal(tsc.status, 0, `${tsc.stdout}${tsc.stderr}`);
    });

    it("serves the page and its modules without a token, with a strict content security policy, and nothing else", async function () {
        const page = await fetch(`${server.url}/`);
        assert.equal(page.status, 200);
        assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
        assert.match(page.headers.get("content-security-policy") ?? "", /default-src 'self'/);
        assert.match(await page.text(), /<script type="module" src="dashboard\/app.js">/);
        const js = await fetch(`${server.url}/dashboard/app.js`);
        assert.equal(js.status, 200);
        assert.match(js.headers.get("content-type") ?? "", /^text\/javascript/);
        for (const p of ["/dashboard/tsconfig.json", "/dashboard/..%2Fpackage.json", "/dashboard/.hidden", "/dashboard/nope.js"])
            assert.equal((await fetch(`${server.url}${p}`)).status, 404, p);
        const config = await httpJson(`${server.url}/v1/config`);
        assert.equal(config.status, 200);
        assert.equal(config.body.keepkv.policy, "keepkv");
        assert.equal(config.body.keepkv.budget, budget);
        // every KeepKV setting that serves, the server's defaults here
        assert.deepEqual(
            [config.body.keepkv.selection, config.body.keepkv.protect, config.body.keepkv.value_threshold, config.body.keepkv.observed,
                config.body.keepkv.score_mode, config.body.keepkv.score_decay, config.body.keepkv.query_decay],
            ["recency", 0.5, 0.8, 8, "ema", 0.9, 0]);
        assert.equal(config.body.model.id, "stories3M-q8_0.gguf");
        assert.equal(config.body.sequences, 2);
    });

    it("loads offline: only the server itself is asked for anything, and the model and KeepKV settings are shown", async function () {
        const { page } = browser;
        await page.goto(server.url);
        await page.locator('#connection[data-state="open"]').waitFor().catch((err: Error) => {
            throw new Error(`${err.message}\nbrowser problems: ${browser.problems.join("; ")}`);
        });
        await page.locator("#settings dd").first().waitFor();
        assert.equal(await page.textContent("#model-name"), "stories3M-q8_0.gguf");
        assert.match(await page.textContent("#policy") ?? "", new RegExp(`keepkv · budget ${budget}`));
        const settings = await page.textContent("#settings");
        assert.match(settings ?? "", /KV policykeepkv/);
        assert.match(settings ?? "", /merge variantkey/);
        assert.match(settings ?? "", /attention scoresmoving average, decay 0\.9/);
        assert.match(settings ?? "", /value threshold0\.8/);
        const origin = new URL(server.url).origin;
        const foreign = requested.filter((u) => !u.startsWith(origin) && !u.startsWith(origin.replace(/^http/, "ws")) && !u.startsWith("data:"));
        assert.deepEqual(foreign, []);
        assert.deepEqual(browser.problems, []);
    });

    it("a message sent from the page streams a reply", async function () {
        const { page } = browser;
        const bubble = await sendAndWait(page, "Once upon a time, there was a little dog", { maxTokens: 120, temperature: 0.8 });
        const reason = await finished(page, bubble);
        assert.ok(reason === "length" || reason === "stop", `finish reason ${reason}`);
        const text = await bubble.locator(".msg-text").textContent() ?? "";
        assert.ok(text.trim().length > 0, "the reply has text");
        // streamed: the bubble grew through several intermediate lengths before the final one
        const lengths = await page.evaluate(() => (window as unknown as { lengths: number[] }).lengths);
        const distinct = new Set(lengths.filter((l) => l > 0 && l < text.length));
        assert.ok(distinct.size >= 3, `intermediate lengths seen while streaming: ${[...distinct].join(", ")}`);
        assert.match(await bubble.locator(".msg-meta").textContent() ?? "", /\d+ tokens · [\d.]+ tok\/s · first token [\d.]+ ms/);
        assert.equal(await page.isEnabled("#send"), true);
        assert.equal(await page.isEnabled("#stop"), false);
    });

    it("a follow-up turn reuses the conversation's KV cache", async function () {
        const { page } = browser;
        const bubble = await sendAndWait(page, "The dog wanted to play.", { maxTokens: 120 });
        await finished(page, bubble);
        const meta = await bubble.locator(".msg-meta").textContent() ?? "";
        const cached = /(\d+) of (\d+) prompt tokens cached/.exec(meta);
        assert.ok(cached != null, meta);
        assert.ok(Number(cached[1]) > 0, `cached tokens in "${meta}"`);
        assert.match(meta, new RegExp(`KV \\d+/${budget} cells for \\d+ tokens`));
    });

    it("the KV charts show non-zero data: cells used within the budget, K/V bytes below a full cache, merges", async function () {
        const { page } = browser;
        // two more turns, a poll apart: the conversation grows past its budget while its cells stay within it
        for (const text of ["They ran to the park.", "Then it started to rain."]) {
            await page.waitForTimeout(1500);
            assert.ok(["stop", "length"].includes(await finished(page, await sendAndWait(page, text, { maxTokens: 150 }))));
        }
        const conversation = await page.textContent("#conversation-id");
        // the conversation's sequence keeps its cache after the reply; the poller plots it every second
        let seqKey: string | null = null;
        for (let i = 0; i < 600 && seqKey == null; i++) {
            seqKey = await page.locator("#chart-kv-cells .legend li[data-series^='seq']").first().getAttribute("data-series", { timeout: 100 }).catch(() => null);
            if (seqKey == null)
                await page.waitForTimeout(100);
        }
        assert.ok(seqKey != null, "a sequence series in the KV cells chart");
        const used = await legendValue(page, "chart-kv-cells", seqKey, "latest");
        assert.ok(used != null && used > 0, `cells used ${used}`);
        assert.ok(used <= budget, `cells used ${used} within the budget`);
        assert.equal(await legendValue(page, "chart-kv-cells", "budget", "latest"), budget);
        assert.ok((await legendValue(page, "chart-kv-cells", "capacity", "latest") ?? 0) >= budget);
        assert.ok(await page.locator("#chart-kv-cells polyline[data-series^='seq']").count() >= 1, "a plotted line");
        const bytesUsed = await legendValue(page, "chart-kv-bytes", "used", "latest");
        const bytesFull = await legendValue(page, "chart-kv-bytes", "full", "latest");
        assert.ok(bytesUsed != null && bytesUsed > 0, `K/V bytes used ${bytesUsed}`);
        assert.ok(bytesFull != null && bytesFull > bytesUsed, `a full cache (${bytesFull}) needs more than the compressed one (${bytesUsed})`);
        const merged = await legendValue(page, "chart-compression", "merges", "max") ?? 0;
        const evicted = await legendValue(page, "chart-compression", "evictions", "max") ?? 0;
        assert.ok(merged + evicted > 0, `merges ${merged}, evictions ${evicted}`);
        assert.ok((await legendValue(page, "chart-tps", "request", "max") ?? 0) > 0);
        assert.ok((await legendValue(page, "chart-ttft", "request", "max") ?? 0) > 0);
        // the sequences table marks this chat's sequence
        assert.match(await page.textContent("#sequences tr.mine") ?? "", new RegExp(`${(conversation ?? "").slice(0, 12)}`));
    });

    it("the stop button cancels a long reply; the page stays usable", async function () {
        const { page } = browser;
        const bubble = await sendAndWait(page, "Once upon a time", { maxTokens: 1900, temperature: 1 });
        await page.waitForFunction(() => {
            const bubbles = document.querySelectorAll("#messages .msg-assistant .msg-text");
            return (bubbles[bubbles.length - 1]?.textContent?.length ?? 0) > 0;
        });
        await page.click("#stop");
        assert.equal(await finished(page, bubble), "cancel");
        const meta = await bubble.locator(".msg-meta").textContent() ?? "";
        assert.match(meta, /stopped/);
        assert.ok(Number(/^(\d+) tokens/.exec(meta)?.[1]) < 1900, meta);
        assert.equal(await page.isEnabled("#send"), true);
        assert.equal(await page.isEnabled("#stop"), false);
        // the server counted it as a cancel
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        assert.match(metrics, /keepkv_request_success_total\{model_name="stories3M-q8_0.gguf",finished_reason="cancel"\} 1/);
        // let the poller draw a few more points, then the screenshot for the README
        await page.waitForTimeout(1500);
        await saveScreenshot(page, "dashboard.png", { fullPage: true });
        assert.deepEqual(browser.problems, []);
    });

    it("New conversation starts afresh: a new id, an empty chat, nothing cached", async function () {
        const { page } = browser;
        const before = await page.textContent("#conversation-id");
        await page.click("#new-conversation");
        await page.locator('#connection[data-state="open"]').waitFor();
        const after = await page.textContent("#conversation-id");
        assert.notEqual(after, before);
        assert.equal(await page.locator("#messages li").count(), 0);
        const bubble = await sendAndWait(page, "The sun was hot.", { maxTokens: 20 });
        assert.ok(["stop", "length"].includes(await finished(page, bubble)));
        assert.match(await bubble.locator(".msg-meta").textContent() ?? "", / 0 of \d+ prompt tokens cached/);
        assert.deepEqual(browser.problems, []);
    });
});

describe("dashboard with an API key", function () {
    let server: ServerHandle;
    let browser: BrowserHandle;

    before(async function () {
        server = await startServer({ args: ["--sequences", "1", "--api-key", "s3cret"] });
        browser = await openBrowser({ width: 1100, height: 800 });
    });
    after(async function () {
        await browser?.close();
        await server?.stop();
    });

    it("the page loads without the key, asks for it, and works once it is given", async function () {
        const { page } = browser;
        assert.equal((await fetch(`${server.url}/`)).status, 200);
        assert.equal((await httpJson(`${server.url}/v1/config`)).status, 401);
        assert.equal((await httpJson(`${server.url}/v1/config`, { headers: { Authorization: "Bearer s3cret" } })).status, 200);
        await page.goto(server.url);
        await page.locator('#connection[data-state="auth_required"]').waitFor();
        assert.equal(await page.isVisible("#auth"), true);
        await page.fill("#api-key", "wrong");
        await page.click("#auth button");
        await page.locator('#connection[data-state="auth_failed"]').waitFor();
        await page.fill("#api-key", "s3cret");
        await page.click("#auth button");
        await page.locator('#connection[data-state="open"]').waitFor();
        assert.equal(await page.isVisible("#auth"), false);
        await page.locator("#settings dd").first().waitFor();
        assert.match(await page.textContent("#policy") ?? "", /^keepkv · budget 0\.5/);
        const bubble = await sendAndWait(page, "Once upon a time", { maxTokens: 20 });
        assert.ok(["stop", "length"].includes(await finished(page, bubble)));
        // the KV poller sends the key too
        await page.locator("#sequences tbody tr").first().waitFor();
    });
});

describe("dashboard chatting with SmolLM2-135M-Instruct (the default model, KeepKV at the default budget)", function () {
    let server: ServerHandle;
    let browser: BrowserHandle;

    before(async function () {
        server = await startServer({ bareArgs: true, args: smolArgs("--sequences", "1") });
        browser = await openBrowser({ width: 1100, height: 800 });
    });
    after(async function () {
        await browser?.close();
        await server?.stop();
    });

    it("a question gets the model's answer through its chat template, ended at its end-of-turn token; the next turn is cached", async function () {
        const { page } = browser;
        await page.goto(server.url);
        await page.locator('#connection[data-state="open"]').waitFor();
        await page.locator("#settings dd").first().waitFor();
        assert.match(await page.textContent("#settings") ?? "", /SmolLM2-135M-Instruct/);
        const bubble = await sendAndWait(page, "What is the capital of France? Answer in one sentence.", { maxTokens: 48, temperature: 0 });
        assert.equal(await finished(page, bubble), "stop");
        const text = await bubble.locator(".msg-text").textContent() ?? "";
        assert.match(text, /Paris/);
        assert.doesNotMatch(text, /<\|im_end\|>|<\|im_start\|>/);
        const next = await sendAndWait(page, "And of Italy?", { maxTokens: 48, temperature: 0 });
        assert.equal(await finished(page, next), "stop");
        const meta = await next.locator(".msg-meta").textContent() ?? "";
        const cached = /(\d+) of (\d+) prompt tokens cached/.exec(meta);
        assert.ok(cached != null && Number(cached[1]) > 0, meta);
        assert.deepEqual(browser.problems, []);
    });
});
