// @ts-check
// The keepkv dashboard: chat with streamed replies, a stop button, the serving settings, and live charts
// of the KV cache (polled from GET /v1/kv every second) and of each reply's speed.
import { ApiError, ChatSocket, getJson, storedToken, storeToken } from "./api.js";
import { formatBytes, formatNumber, LineChart } from "./chart.js";

/**
 * @typedef {{ role: "user" | "assistant", content: string }} Turn
 * @typedef {{
 *   sequence: number, busy: boolean, held: boolean, conversation_id: string | null, logical_tokens: number,
 *   cells_used: number, budget: number | null, capacity: number, vote_max: number
 * }} KvSequence
 * @typedef {{
 *   policy: string, capacity_cells: number, kv_bytes_allocated: number, kv_bytes_used: number,
 *   kv_bytes_full: number, merges: number, evictions: number, compressions: number, sequences: KvSequence[]
 * }} KvSnapshot
 */

const pollMs = 1000;

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @returns {T}
 */
function byId(id) {
    const el = document.getElementById(id);
    if (el == null)
        throw new Error(`#${id} is missing`);
    return /** @type {T} */ (el);
}

const els = {
    modelName: byId("model-name"),
    policy: byId("policy"),
    connection: byId("connection"),
    conversationId: byId("conversation-id"),
    newConversation: /** @type {HTMLButtonElement} */ (byId("new-conversation")),
    messages: byId("messages"),
    composer: /** @type {HTMLFormElement} */ (byId("composer")),
    prompt: /** @type {HTMLTextAreaElement} */ (byId("prompt")),
    maxTokens: /** @type {HTMLInputElement} */ (byId("max-tokens")),
    temperature: /** @type {HTMLInputElement} */ (byId("temperature")),
    send: /** @type {HTMLButtonElement} */ (byId("send")),
    stop: /** @type {HTMLButtonElement} */ (byId("stop")),
    auth: /** @type {HTMLFormElement} */ (byId("auth")),
    apiKey: /** @type {HTMLInputElement} */ (byId("api-key")),
    authError: byId("auth-error"),
    settings: byId("settings"),
    kvSaved: byId("kv-saved"),
    sequences: /** @type {HTMLTableElement} */ (byId("sequences"))
};

const charts = {
    kvCells: new LineChart(byId("chart-kv-cells"), { format: formatNumber, emptyText: "no active conversation" }),
    kvBytes: new LineChart(byId("chart-kv-bytes"), {
        format: formatBytes,
        series: [
            { key: "used", label: "used" },
            { key: "allocated", label: "allocated" },
            { key: "full", label: "full cache", dashed: true }
        ]
    }),
    compression: new LineChart(byId("chart-compression"), {
        series: [{ key: "merges", label: "merged" }, { key: "evictions", label: "evicted" }]
    }),
    tps: new LineChart(byId("chart-tps"), {
        markers: true,
        series: [{ key: "live", label: "streaming" }, { key: "request", label: "per reply" }]
    }),
    ttft: new LineChart(byId("chart-ttft"), {
        markers: true,
        format: (v) => `${formatNumber(v)} ms`,
        series: [{ key: "request", label: "per reply" }]
    })
};

let token = storedToken();
/** @type {{ id: string, tokens: number, tokensAtTick: number, tickAt: number } | null} */
let running = null;
/** @type {import("./api.js").ConnectionState} */
let connectionState = "connecting";
let socketGeneration = 0;
/** @type {{ id: string, turns: Turn[] }} */
let conversation = { id: newConversationId(), turns: [] };
/** @type {ChatSocket} */
let socket = connect();

function newConversationId() {
    // getRandomValues, not randomUUID: the page may be served over plain HTTP from another host (not a
    // secure context), where randomUUID does not exist
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return `c-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function connect() {
    els.conversationId.textContent = conversation.id;
    // a replaced socket may still deliver a late event: only the newest one speaks
    const generation = ++socketGeneration;
    return new ChatSocket({
        conversationId: conversation.id,
        token,
        onModel: (model) => { if (model != null && generation === socketGeneration) els.modelName.textContent = model; },
        onState: (state, detail) => {
            if (generation !== socketGeneration)
                return;
            connectionState = state;
            els.connection.dataset.state = state;
            els.connection.textContent = detail == null ? state.replace("_", " ") : `${state.replace("_", " ")}: ${detail}`;
            els.auth.hidden = !(state === "auth_required" || state === "auth_failed");
            if (state === "auth_failed")
                els.authError.textContent = detail ?? "wrong API key";
            if (state === "open")
                void loadSettings();
            updateButtons();
        }
    });
}

function updateButtons() {
    els.send.disabled = running != null || connectionState !== "open";
    els.stop.disabled = running == null;
}

/**
 * @param {"user" | "assistant" | "note"} role
 * @param {string} text
 */
function addBubble(role, text) {
    const li = document.createElement("li");
    li.className = `msg msg-${role}`;
    const body = document.createElement("div");
    body.className = "msg-text";
    body.textContent = text;
    li.append(body);
    els.messages.append(li);
    els.messages.scrollTop = els.messages.scrollHeight;
    return li;
}

/** @param {HTMLElement} bubble @param {string} text */
function addMeta(bubble, text) {
    const meta = document.createElement("div");
    meta.className = "msg-meta";
    meta.textContent = text;
    bubble.append(meta);
    els.messages.scrollTop = els.messages.scrollHeight;
}

function send() {
    const text = els.prompt.value.trim();
    if (text === "" || running != null || connectionState !== "open")
        return;
    els.prompt.value = "";
    conversation.turns.push({ role: "user", content: text });
    addBubble("user", text);
    const bubble = addBubble("assistant", "");
    bubble.classList.add("streaming");
    const body = /** @type {HTMLElement} */ (bubble.querySelector(".msg-text"));
    let reply = "";
    const maxTokens = Number(els.maxTokens.value);
    const temperature = Number(els.temperature.value);
    const id = socket.chat({
        messages: conversation.turns.map((t) => ({ role: t.role, content: t.content })),
        ...(Number.isInteger(maxTokens) && maxTokens > 0 ? { max_tokens: maxTokens } : {}),
        ...(Number.isFinite(temperature) && temperature >= 0 ? { temperature } : {})
    }, {
        // a long prompt: how far its evaluation is, until the first words arrive
        onProgress: (m) => {
            if (reply === "")
                body.textContent = `reading the prompt: ${m.evaluated_tokens} of ${m.prompt_tokens} tokens`;
        },
        onDelta: (m) => {
            reply += m.text;
            body.textContent = reply;
            if (running != null)
                running.tokens += m.tokens;
            els.messages.scrollTop = els.messages.scrollHeight;
        },
        onFinal: (m) => {
            bubble.classList.remove("streaming");
            bubble.dataset.finishReason = m.finish_reason;
            conversation.turns.push({ role: "assistant", content: reply });
            const t = m.timings;
            const parts = [
                `${m.usage.completion_tokens} tokens`,
                `${formatNumber(t.tokens_per_second)} tok/s`,
                `first token ${formatNumber(t.ttft_ms)} ms`,
                `${m.usage.cached_tokens} of ${m.usage.prompt_tokens} prompt tokens cached`
            ];
            if (m.kv != null && m.kv.budget != null)
                parts.push(`KV ${m.kv.cells_used}/${m.kv.budget} cells for ${m.kv.logical_tokens} tokens`);
            parts.push(m.finish_reason === "cancel" ? "stopped" : m.finish_reason === "error" ? `error: ${m.error?.message ?? ""}` : m.finish_reason);
            addMeta(bubble, parts.join(" · "));
            const now = Date.now();
            if (m.usage.completion_tokens > 1)
                charts.tps.add("request", now, t.tokens_per_second);
            if (m.usage.completion_tokens > 0)
                charts.ttft.add("request", now, t.ttft_ms);
            finish();
        },
        onError: (e) => {
            bubble.classList.remove("streaming");
            bubble.classList.add("msg-error");
            addMeta(bubble, `${e.code}: ${e.message}`);
            // the user turn stays out of the history: it was never answered
            conversation.turns.pop();
            finish();
        }
    });
    running = { id, tokens: 0, tokensAtTick: 0, tickAt: performance.now() };
    updateButtons();
}

function finish() {
    running = null;
    updateButtons();
    els.prompt.focus();
}

els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
});
els.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        send();
    }
});
els.stop.addEventListener("click", () => {
    if (running != null)
        socket.cancel(running.id);
});
els.newConversation.addEventListener("click", () => {
    if (running != null)
        socket.cancel(running.id);
    socket.close();
    running = null;
    conversation = { id: newConversationId(), turns: [] };
    els.messages.replaceChildren();
    socket = connect();
});
els.auth.addEventListener("submit", (event) => {
    event.preventDefault();
    token = els.apiKey.value;
    storeToken(token);
    els.authError.textContent = "";
    socket.close();
    socket = connect();
});

/** @param {string} label @param {unknown} value */
function settingRow(label, value) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value == null ? "none" : String(value);
    return [dt, dd];
}

async function loadSettings() {
    try {
        const c = await getJson("/v1/config", { token, conversationId: conversation.id });
        els.modelName.textContent = c.model?.id ?? "no model";
        els.policy.textContent = c.keepkv.policy === "off" ? "KV compression off" : `${c.keepkv.policy} · budget ${c.keepkv.budget ?? "none"}`;
        els.policy.dataset.policy = c.keepkv.policy;
        els.settings.replaceChildren(
            ...settingRow("model", c.model?.id),
            ...settingRow("architecture", c.model?.architecture),
            ...settingRow("context per sequence", `${c.context_size} tokens`),
            ...settingRow("sequences", c.sequences),
            ...settingRow("chat format", c.model?.chat_format),
            ...settingRow("K / V cache type", `${c.cache_type_k} / ${c.cache_type_v}`),
            ...settingRow("flash attention", c.flash_attention),
            ...settingRow("KV policy", c.keepkv.policy),
            ...settingRow("budget (cells per sequence)", c.keepkv.budget),
            ...settingRow("merge variant", c.keepkv.variant),
            ...settingRow("leaving cells chosen by", c.keepkv.selection),
            ...settingRow("attention scores", c.keepkv.score_mode === "sum" ? "sum (H2O)" : `moving average, decay ${c.keepkv.score_decay}`),
            ...settingRow("sinks / recent", `${c.keepkv.sinks} / ${c.keepkv.recent}`),
            ...settingRow("merge threshold", c.keepkv.threshold),
            ...settingRow("protected from merges", c.keepkv.protect),
            ...settingRow("value threshold", c.keepkv.value_threshold),
            ...settingRow("KeepKV build", c.keepkv_version)
        );
    } catch (err) {
        if (err instanceof ApiError && err.status === 401)
            els.auth.hidden = false;
    }
}

/** @param {number} ratio */
function formatPercent(ratio) {
    return `${(ratio * 100).toFixed(ratio < 0.1 ? 1 : 0)}%`;
}

/** @param {string | null} id */
function shortId(id) {
    return id == null ? "" : id.length > 14 ? `${id.slice(0, 12)}…` : id;
}

/** @param {KvSnapshot} kv */
function showKv(kv) {
    const now = Date.now();
    charts.kvBytes.add("used", now, kv.kv_bytes_used);
    charts.kvBytes.add("allocated", now, kv.kv_bytes_allocated);
    charts.kvBytes.add("full", now, kv.kv_bytes_full);
    els.kvSaved.textContent = kv.kv_bytes_full > 0 && kv.kv_bytes_allocated < kv.kv_bytes_full
        ? `allocated: ${formatPercent(kv.kv_bytes_allocated / kv.kv_bytes_full)} of a full cache`
        : "no compression: the cache is allocated in full";
    charts.compression.add("merges", now, kv.merges);
    charts.compression.add("evictions", now, kv.evictions);

    const active = kv.sequences.filter((s) => s.busy || s.held);
    for (const s of active) {
        const mine = s.conversation_id === conversation.id ? " (this chat)" : "";
        charts.kvCells.add(`seq${s.sequence}`, now, s.cells_used, `seq ${s.sequence}${mine} used`);
    }
    const withBudget = active.find((s) => s.budget != null) ?? kv.sequences.find((s) => s.budget != null);
    if (withBudget?.budget != null)
        charts.kvCells.add("budget", now, withBudget.budget, "budget");
    if (active.length > 0 || withBudget != null)
        charts.kvCells.add("capacity", now, kv.sequences[0]?.capacity ?? 0, "capacity");
    for (const key of ["budget", "capacity"]) {
        const s = charts.kvCells.series.get(key);
        if (s != null)
            s.spec.dashed = true;
    }

    const tbody = /** @type {HTMLTableSectionElement} */ (els.sequences.tBodies[0]);
    tbody.replaceChildren(...kv.sequences.map((s) => {
        const tr = document.createElement("tr");
        if (s.conversation_id === conversation.id)
            tr.className = "mine";
        const cells = [
            // the server names only this key's own conversations (all of them for an admin key)
            String(s.sequence), s.held && s.conversation_id == null ? "another client's" : shortId(s.conversation_id),
            s.busy ? "generating" : s.held ? "held" : "free",
            String(s.logical_tokens), String(s.cells_used), s.budget == null ? "–" : String(s.budget), String(s.capacity),
            formatNumber(s.vote_max)
        ];
        tr.append(...cells.map((text) => {
            const td = document.createElement("td");
            td.textContent = text;
            return td;
        }));
        return tr;
    }));
}

async function poll() {
    const started = performance.now();
    if (running != null) {
        const dt = (started - running.tickAt) / 1000;
        if (dt > 0 && running.tokens > running.tokensAtTick)
            charts.tps.add("live", Date.now(), (running.tokens - running.tokensAtTick) / dt);
        running.tokensAtTick = running.tokens;
        running.tickAt = started;
    }
    if (!document.hidden && connectionState === "open")
        try {
            showKv(/** @type {KvSnapshot} */ (await getJson("/v1/kv", { token, conversationId: conversation.id })));
        } catch {
            // engine busy or restarting (503), or no key yet (401): the next tick tries again
        }
    setTimeout(() => void poll(), Math.max(100, pollMs - (performance.now() - started)));
}

void poll();
