// Who may call: the API keys of the configuration, each with a name (the principal) and a role.
//
//   user     the chat and read APIs; sees only its own conversations
//   admin    everything, /admin/* included; sees every conversation
//   metrics  GET /metrics only
//
// Keys come from `--api-key` (one admin key named "admin"), `--metrics-api-key` (one metrics key named
// "metrics"), `--api-keys` (entries `name:role:key`) and `--api-key-file` (a JSON file). Names and keys
// must be unique across all of them: a duplicate stops startup, since two people sharing a name would
// share their conversations, and one key under two names has no single principal.
import * as fs from "node:fs";
import { Ajv } from "ajv";
import { ConfigError } from "../config/load-config.js";
import type { ServerConfig } from "../config/options.js";
import { tokenMatches } from "../http/auth.js";

export const roles = ["user", "admin", "metrics"] as const;
export type Role = typeof roles[number];

export type Principal = { name: string, role: Role };

/** The one principal of a server without user or admin keys: everyone is the same caller. */
export const anonymous: Principal = Object.freeze({ name: "anonymous", role: "admin" });

/** Names appear in logs and in the rate limiter's table: short, printable, no separators. */
const namePattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$";
const nameRegExp = new RegExp(namePattern);
const reservedNames = new Set([anonymous.name]);

type KeyEntry = Principal & { key: string, from: string };

const keyFileSchema = {
    type: "object",
    properties: {
        keys: {
            type: "array",
            minItems: 1,
            items: {
                type: "object",
                properties: {
                    name: { type: "string", pattern: namePattern },
                    role: { enum: roles },
                    key: { type: "string", minLength: 16 }
                },
                required: ["name", "role", "key"],
                additionalProperties: false
            }
        }
    },
    required: ["keys"],
    additionalProperties: false
};
const validateKeyFile = new Ajv({ allErrors: false, strict: true }).compile(keyFileSchema);

export class KeyRing {
    private constructor(private readonly entries: readonly KeyEntry[]) {}

    static from(entries: readonly KeyEntry[]): KeyRing {
        const names = new Map<string, string>();
        for (const [i, entry] of entries.entries()) {
            if (reservedNames.has(entry.name))
                throw new ConfigError(`invalid configuration: the key name "${entry.name}" (${entry.from}) is reserved for callers without a key`, "apiKeys");
            const other = names.get(entry.name);
            if (other != null)
                throw new ConfigError(`invalid configuration: two API keys are named "${entry.name}" (${other} and ${entry.from}); names must be unique`, "apiKeys");
            names.set(entry.name, entry.from);
            for (const earlier of entries.slice(0, i))
                if (earlier.key === entry.key)
                    throw new ConfigError(`invalid configuration: the keys "${earlier.name}" (${earlier.from}) and "${entry.name}" (${entry.from}) are the same key; each key must be unique`, "apiKeys");
        }
        return new KeyRing(entries);
    }

    /** No user or admin key: the API is open and every caller is `anonymous`. */
    get apiOpen(): boolean {
        return !this.entries.some((e) => e.role !== "metrics");
    }

    /** No key at all: /metrics is open too. */
    get metricsOpen(): boolean {
        return this.entries.length === 0;
    }

    get size(): number {
        return this.entries.length;
    }

    /** The principal of a token, or null. Every key is compared, in constant time, whichever matches. */
    identify(token: string): Principal | null {
        let found: KeyEntry | null = null;
        for (const entry of this.entries)
            if (tokenMatches(token, entry.key) && found == null)
                found = entry;
        return found == null ? null : { name: found.name, role: found.role };
    }
}

/** `name:role:key` (the key is the rest, so it may hold colons). */
function parseEntry(raw: string, index: number): KeyEntry {
    const from = `entry ${index + 1} of --api-keys`;
    const first = raw.indexOf(":");
    const second = first < 0 ? -1 : raw.indexOf(":", first + 1);
    if (second < 0)
        throw new ConfigError(`invalid configuration: ${from} must be name:role:key`, "apiKeys");
    const name = raw.slice(0, first);
    const role = raw.slice(first + 1, second);
    const key = raw.slice(second + 1);
    checkEntry({ name, role, key }, from, "apiKeys");
    return { name, role: role as Role, key, from };
}

function checkEntry(entry: { name: string, role: string, key: string }, from: string, option: string): void {
    if (!nameRegExp.test(entry.name))
        throw new ConfigError(`invalid configuration: the name of ${from} must be 1-64 letters, digits, ".", "_", "@" or "-", starting with a letter or digit`, option);
    if (!(roles as readonly string[]).includes(entry.role))
        throw new ConfigError(`invalid configuration: the role of ${from} ("${entry.name}") must be one of ${roles.join(", ")}`, option);
    if (entry.key.length < 16)
        throw new ConfigError(`invalid configuration: the key of ${from} ("${entry.name}") must have at least 16 characters`, option);
}

function readKeyFile(file: string): KeyEntry[] {
    let text: string;
    try {
        text = fs.readFileSync(file, "utf8");
    } catch (err) {
        throw new ConfigError(`invalid configuration: cannot read the key file ${file} (--api-key-file): ${(err as Error).message}`, "apiKeyFile");
    }
    let parsed: unknown;
    try {
        parsed = JSON.parse(text);
    } catch (err) {
        // the parser's message may quote the file, which holds keys: say only where it failed
        const at = /position \d+/.exec((err as Error).message)?.[0];
        throw new ConfigError(`invalid configuration: the key file ${file} (--api-key-file) is not valid JSON${at != null ? ` (at ${at})` : ""}`, "apiKeyFile");
    }
    if (!validateKeyFile(parsed)) {
        const error = validateKeyFile.errors![0]!;
        const where = error.instancePath === "" ? "the file" : error.instancePath.slice(1).replace(/\//g, ".");
        const what = error.keyword === "additionalProperties"
            ? `has the unknown field "${(error.params as { additionalProperty: string }).additionalProperty}"`
            : error.keyword === "enum" ? `must be one of ${roles.join(", ")}`
            : error.keyword === "pattern" ? "must be 1-64 letters, digits, \".\", \"_\", \"@\" or \"-\", starting with a letter or digit"
            : error.message ?? "is invalid";
        throw new ConfigError(`invalid configuration: the key file ${file} (--api-key-file): ${where} ${what}; expected {"keys": [{"name", "role" (${roles.join(", ")}), "key" (at least 16 characters)}, ...]}`, "apiKeyFile");
    }
    return (parsed as { keys: { name: string, role: Role, key: string }[] }).keys
        .map((k, i) => ({ ...k, from: `keys.${i} of ${file}` }));
}

/** The key ring of a configuration; throws ConfigError (stopping startup) on any bad or duplicate key. */
export function keyRingFrom(config: Pick<ServerConfig, "apiKey" | "metricsApiKey" | "apiKeys" | "apiKeyFile">): KeyRing {
    const entries: KeyEntry[] = [];
    if (config.apiKey != null)
        entries.push({ name: "admin", role: "admin", key: config.apiKey, from: "--api-key" });
    if (config.metricsApiKey != null)
        entries.push({ name: "metrics", role: "metrics", key: config.metricsApiKey, from: "--metrics-api-key" });
    config.apiKeys.forEach((raw, i) => entries.push(parseEntry(raw, i)));
    if (config.apiKeyFile != null)
        entries.push(...readKeyFile(config.apiKeyFile));
    return KeyRing.from(entries);
}
