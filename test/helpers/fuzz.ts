// Seeded generators of hostile input for the WebSocket messages and the HTTP bodies: random and mutated
// JSON, deep nesting, huge strings and arrays, wrong types, prototype names, invalid UTF-8, binary
// frames. Reproducible: the same seed gives the same cases. Used by test/e2e/fuzz.test.ts and test/helpers/gguf-fuzz.ts.
import { seededRandom } from "../../lib/seeded-random.js";

export class Rng {
    /** mulberry32, the project's one seeded generator */
    readonly next: () => number;
    constructor(seed: number) {
        this.next = seededRandom(seed);
    }
    int(n: number): number {
        return Math.floor(this.next() * n);
    }
    bool(p = 0.5): boolean {
        return this.next() < p;
    }
    pick<T>(items: readonly T[]): T {
        return items[this.int(items.length)]!;
    }
}

/** Strings that break naive code: prototype names, escapes, control characters, lone surrogates, ... */
export const nastyStrings: readonly string[] = [
    "", " ", "chat", "cancel", "auth", "ping", "CHAT", " chat", "chat\u0000", "__proto__", "constructor", "prototype",
    "hasOwnProperty", "toString", "valueOf", "__defineGetter__", "isPrototypeOf", "then", "null", "undefined", "NaN",
    "\u0000", "\ud800", "\udfff", "\ud83d\ude00", "\u202e\u202d", "\uffff", "\ufeff", "%s%s%n", "${7*7}", "{{7*7}}",
    "<script>alert(1)</script>", "'; DROP TABLE x; --", "../../etc/passwd", "/dev/zero", "C:\\con\\con", "\r\n\r\nHTTP/1.1 200 OK",
    "a".repeat(129), "x".repeat(5000), "é".repeat(300), "\n".repeat(100), "Once upon a time"
];

const interestingNumbers: readonly number[] = [
    0, -0, 1, -1, 2, 0.5, -0.5, 1.5, 7, 40, 64, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), 2 ** 32, 2 ** 53, -(2 ** 53),
    2 ** 63, 1e21, 1e300, -1e300, 5e-324, Number.MAX_VALUE, 3.14159
];

const keys: readonly string[] = [
    "type", "id", "prompt", "messages", "role", "content", "max_tokens", "temperature", "top_k", "top_p", "min_p",
    "repeat_penalty", "seed", "stop", "conversation_id", "token", "stream", "stream_options", "include_usage", "model", "n",
    "max_completion_tokens", "text", ...nastyStrings.slice(0, 20)
];

export function randomString(rng: Rng): string {
    switch (rng.int(6)) {
        case 0: return rng.pick(nastyStrings);
        case 1: return String.fromCharCode(...Array.from({ length: rng.int(20) }, () => rng.int(0x10000)));
        case 2: return Array.from({ length: 1 + rng.int(12) }, () => rng.pick(["the", "dog", "ran", "Once", "upon", "a", "time", ".", ","])).join(" ");
        case 3: return "z".repeat(rng.pick([0, 1, 100, 1000, 20_000]));
        case 4: return String(rng.pick(interestingNumbers));
        default: return rng.pick(keys);
    }
}

export function randomValue(rng: Rng, depth = 0): unknown {
    const kinds = depth > 3 ? 5 : 8;
    switch (rng.int(kinds)) {
        case 0: return null;
        case 1: return rng.bool();
        case 2: return rng.pick(interestingNumbers) * (rng.bool(0.2) ? -1 : 1);
        case 3: return rng.next() * 10 ** rng.int(10);
        case 4: return randomString(rng);
        case 5: return Array.from({ length: rng.int(5) }, () => randomValue(rng, depth + 1));
        case 6: return Object.fromEntries(Array.from({ length: rng.int(6) }, () => [rng.pick(keys), randomValue(rng, depth + 1)]));
        default: return { role: rng.pick(["user", "assistant", "system", "robot"]), content: randomValue(rng, depth + 1) };
    }
}

/** Nested arrays or objects, `depth` deep, as JSON text (built as text: JSON.stringify itself would overflow the stack). */
export function deepJson(depth: number, kind: "array" | "object"): string {
    return kind === "array" ? "[".repeat(depth) + "]".repeat(depth) : "{\"a\":".repeat(depth) + "1" + "}".repeat(depth);
}

/** A valid client message of the WebSocket API. */
export function validWsMessage(rng: Rng, id: string): Record<string, unknown> {
    switch (rng.int(6)) {
        case 0: return { type: "ping", id };
        case 1: return { type: "cancel", id };
        case 2: return { type: "auth", token: "t" };
        case 3: return { type: "chat", id, prompt: randomString(rng).slice(0, 200), max_tokens: 1 + rng.int(4) };
        default: return {
            type: "chat", id, messages: [{ role: "user", content: "Once upon a time" }],
            max_tokens: 1 + rng.int(4), temperature: rng.next() * 2, top_k: rng.int(100), top_p: rng.next(), min_p: rng.next() * 0.2,
            repeat_penalty: 1 + rng.next(), seed: rng.int(2 ** 31), stop: rng.bool() ? "." : [".", "!"]
        };
    }
}

/** A valid OpenAI-style body. */
export function validHttpBody(rng: Rng, kind: "chat" | "completion"): Record<string, unknown> {
    const common = { max_tokens: 1 + rng.int(4), stream: rng.bool(), temperature: rng.next(), seed: rng.int(1000) };
    return kind === "chat"
        ? { model: "x", messages: [{ role: rng.pick(["user", "system", "developer"]), content: rng.bool() ? "Hello" : [{ type: "text", text: "Hi" }] }], ...common }
        : { model: "x", prompt: rng.bool() ? "Once upon a time" : ["Once"], ...common };
}

/** One to three mutations of a JSON object: keys deleted or added, values of wrong types, extremes, nesting. */
export function mutate(rng: Rng, value: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = structuredClone(value);
    const n = 1 + rng.int(3);
    for (let i = 0; i < n; i++) {
        const existing = Object.keys(out);
        switch (rng.int(7)) {
            case 0:
                if (existing.length > 0)
                    delete out[rng.pick(existing)];
                break;
            case 1:
                out[rng.pick(keys)] = randomValue(rng);
                break;
            case 2:
                if (existing.length > 0)
                    out[rng.pick(existing)] = randomValue(rng);
                break;
            case 3:
                if (existing.length > 0)
                    out[rng.pick(existing)] = rng.pick(interestingNumbers) * (rng.bool() ? 1 : -1);
                break;
            case 4:
                out.type = rng.pick(nastyStrings);
                break;
            case 5:
                if (Array.isArray(out.messages))
                    out.messages = Array.from({ length: rng.pick([0, 1, 2, 500]) }, () => rng.bool(0.8) ? { role: "user", content: "hi" } : randomValue(rng));
                else
                    out.messages = randomValue(rng);
                break;
            default:
                if (existing.length > 0)
                    out[rng.pick(existing)] = rng.bool() ? [randomValue(rng)] : { nested: randomValue(rng) };
        }
    }
    return out;
}

export type Frame = { data: string | Buffer, binary: boolean, note: string };

/** Raw text that is not (quite) JSON, or JSON that is unusual. */
export function junkText(rng: Rng, maxBytes: number): string {
    switch (rng.int(9)) {
        case 0: return "";
        case 1: return JSON.stringify(validWsMessage(rng, "j")).slice(0, 1 + rng.int(40));
        case 2: return JSON.stringify(validWsMessage(rng, "j")) + rng.pick(["}", "]", ",", " x", "\u0000", "{}"]);
        case 3: return deepJson(Math.min(rng.pick([10, 1000, 20_000]), Math.floor(maxBytes / 6)), rng.bool() ? "array" : "object");
        case 4: return "\ufeff" + JSON.stringify({ type: "ping", id: "bom" });
        case 5: return `{"type":"ping","id":"a","id":"b"}`;
        case 6: return rng.pick(["null", "true", "0", "\"chat\"", "[]", "{}", "1e999", "-0", "NaN", "undefined", "'x'", "{'type':'ping'}"]);
        case 7: return `{"type":"chat","id":"n","prompt":"${"\\ud800".repeat(rng.int(50))}","max_tokens":2}`;
        default: return Array.from({ length: rng.int(200) }, () => String.fromCharCode(rng.int(128))).join("");
    }
}

/** Bytes that are not valid UTF-8 (sent in a text frame they must close the socket with 1007). */
export function invalidUtf8(rng: Rng): Buffer {
    const bad = rng.pick([[0xc3, 0x28], [0xa0, 0xa1], [0xe2, 0x28, 0xa1], [0xf0, 0x28, 0x8c, 0x28], [0xff], [0xed, 0xa0, 0x80], [0xc0, 0xaf]]);
    return Buffer.concat([Buffer.from("{\"type\":\"ping\",\"id\":\""), Buffer.from(bad), Buffer.from("\"}")]);
}
