// Builds the ServerConfig from defaults, an optional JSON file, environment variables and command-line
// flags (later sources win), and validates the result with ajv against the declarations.
import * as fs from "node:fs";
import { Ajv, type ErrorObject } from "ajv";
import {
    configFileEnv, configFileFlag, defaultOf, envOf, flagOf, optionDecls, optionKeys,
    type OptionSchema, type ServerConfig
} from "./options.js";

export class ConfigError extends Error {
    readonly code = "CONFIG_INVALID";
    constructor(message: string, readonly option?: string) {
        super(message);
        this.name = "ConfigError";
    }
}

export type ConfigSource = "default" | "file" | "env" | "cli";

export type LoadedConfig = {
    config: ServerConfig,
    /** where each option's value came from */
    sources: Record<keyof ServerConfig, ConfigSource>,
    configFile: string | null
};

export type CliAction = { action: "run" } | { action: "help" } | { action: "version" } | { action: "print-config" };

function describeOption(key: string): string {
    return `${flagOf(key)} (${envOf(key)}, "${key}" in the config file)`;
}

function describeSource(source: ConfigSource, configFile: string | null): string {
    switch (source) {
        case "cli": return "from the command line";
        case "env": return "from the environment";
        case "file": return `from ${configFile ?? "the config file"}`;
        case "default": return "the default";
    }
}

/** The JSON schema of a config file: every option, optional, nothing else. */
export function configFileSchema(): object {
    const properties: Record<string, OptionSchema & { description: string }> = {};
    for (const key of optionKeys)
        properties[key] = { ...optionDecls[key].schema, description: optionDecls[key].doc };
    return {
        $schema: "http://json-schema.org/draft-07/schema#",
        title: "keepkv server configuration",
        type: "object",
        properties,
        additionalProperties: false
    };
}

/**
 * A string from the command line or the environment, converted by the option's type. A value that
 * does not convert stays a string so that the schema check reports it with the option's name.
 */
function fromString(schema: OptionSchema, raw: string): unknown {
    const types: string[] = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (types.includes("null") && /^(none|null)$/i.test(raw.trim()))
        return null;
    if (types.includes("integer") || types.includes("number")) {
        const n = raw.trim() === "" ? NaN : Number(raw);
        return Number.isNaN(n) ? raw : n;
    }
    if (types.includes("boolean")) {
        if (/^(1|true|yes|on)$/i.test(raw)) return true;
        if (/^(0|false|no|off)$/i.test(raw)) return false;
        return raw;
    }
    if (types.includes("array"))
        return raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
    return raw;
}

const flagToKey = new Map<string, keyof ServerConfig>(optionKeys.map((k) => [flagOf(k), k]));

type ParsedArgs = { values: Partial<Record<keyof ServerConfig, string>>, configFile: string | null, action: CliAction };

export function parseArgs(argv: readonly string[]): ParsedArgs {
    const values: Partial<Record<keyof ServerConfig, string>> = {};
    let configFile: string | null = null;
    let action: CliAction = { action: "run" };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i]!;
        if (arg === "--help" || arg === "-h") { action = { action: "help" }; continue; }
        if (arg === "--version") { action = { action: "version" }; continue; }
        if (arg === "--print-config") { action = { action: "print-config" }; continue; }
        const eq = arg.indexOf("=");
        const flag = eq >= 0 ? arg.slice(0, eq) : arg;
        let value: string | undefined = eq >= 0 ? arg.slice(eq + 1) : undefined;
        if (flag !== configFileFlag && !flagToKey.has(flag))
            throw new ConfigError(`unknown option ${JSON.stringify(arg)}; run with --help to list the options`, flag);
        if (value == null && flag !== configFileFlag && optionDecls[flagToKey.get(flag)!].schema.type === "boolean") {
            // a switch: `--insecure` alone means true; an explicit `--trust-proxy false` still works
            const next = argv[i + 1];
            if (next != null && /^(1|true|yes|on|0|false|no|off)$/i.test(next)) {
                value = next;
                i++;
            } else
                value = "true";
        }
        if (value == null) {
            value = argv[i + 1];
            if (value == null || (value.startsWith("--") && value.length > 2))
                throw new ConfigError(`option ${flag} needs a value`, flag);
            i++;
        }
        if (flag === configFileFlag)
            configFile = value;
        else
            values[flagToKey.get(flag)!] = value;
    }
    return { values, configFile, action };
}

function readConfigFile(file: string): Record<string, unknown> {
    let text: string;
    try {
        text = fs.readFileSync(file, "utf8");
    } catch (err) {
        throw new ConfigError(`cannot read the config file ${file} (${configFileFlag} / ${configFileEnv}): ${(err as Error).message}`, "config");
    }
    let parsed: unknown;
    try {
        parsed = JSON.parse(text);
    } catch (err) {
        throw new ConfigError(`the config file ${file} is not valid JSON: ${(err as Error).message}`, "config");
    }
    if (parsed == null || typeof parsed !== "object" || Array.isArray(parsed))
        throw new ConfigError(`the config file ${file} must hold a JSON object of options`, "config");
    return parsed as Record<string, unknown>;
}

const ajv = new Ajv({ allErrors: false, strict: true });
const validateConfig = ajv.compile(configFileSchema());

function explain(error: ErrorObject): { key: string, message: string } {
    const key = error.instancePath.split("/")[1] ?? "";
    if (error.keyword === "additionalProperties") {
        const extra = (error.params as { additionalProperty: string }).additionalProperty;
        return { key: extra, message: "is not a known option" };
    }
    if (error.keyword === "enum")
        return { key, message: `must be one of ${(error.params as { allowedValues: string[] }).allowedValues.join(", ")}` };
    return { key, message: error.message ?? "is invalid" };
}

/** A value for an error message: secrets (API keys) are never printed. */
function shown(key: keyof ServerConfig, value: unknown): string {
    return optionDecls[key].secret === true ? "a hidden value" : JSON.stringify(value);
}

/** Loads and validates the configuration. Throws ConfigError naming the option on any problem. */
export function loadConfig(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): LoadedConfig & { action: CliAction } {
    const args = parseArgs(argv);
    const configFile = args.configFile ?? (env[configFileEnv] != null && env[configFileEnv] !== "" ? env[configFileEnv]! : null);

    const merged: Record<string, unknown> = {};
    const sources = {} as Record<keyof ServerConfig, ConfigSource>;
    for (const key of optionKeys) {
        merged[key] = defaultOf(key);
        sources[key] = "default";
    }
    if (configFile != null) {
        const fileValues = readConfigFile(configFile);
        for (const [key, value] of Object.entries(fileValues)) {
            merged[key] = value;
            if (key in optionDecls)
                sources[key as keyof ServerConfig] = "file";
        }
    }
    for (const key of optionKeys) {
        const raw = env[envOf(key)];
        if (raw != null && raw !== "") {
            merged[key] = fromString(optionDecls[key].schema, raw);
            sources[key] = "env";
        }
    }
    for (const [key, raw] of Object.entries(args.values) as [keyof ServerConfig, string][]) {
        merged[key] = fromString(optionDecls[key].schema, raw);
        sources[key] = "cli";
    }

    // the default budget belongs to the default policy: `--policy off` alone means no compression at all
    if (merged.policy === "off" && sources.budget === "default")
        merged.budget = null;

    if (!validateConfig(merged)) {
        const { key, message } = explain(validateConfig.errors![0]!);
        if (!(key in optionDecls))
            throw new ConfigError(`invalid configuration: "${key}" in ${configFile ?? "the config file"} ${message}`, key);
        const source = sources[key as keyof ServerConfig];
        throw new ConfigError(
            `invalid configuration: ${describeOption(key)} ${message} (got ${shown(key as keyof ServerConfig, merged[key])}, ${describeSource(source, configFile)})`, key);
    }
    return { config: merged as ServerConfig, sources, configFile, action: args.action };
}

/** An error about one option after loading (checks that need the model), worded like the schema errors. */
export function optionError(loaded: LoadedConfig, key: keyof ServerConfig, message: string): ConfigError {
    return new ConfigError(
        `invalid configuration: ${describeOption(key)} ${message} (got ${shown(key, loaded.config[key])}, ${describeSource(loaded.sources[key], loaded.configFile)})`, key);
}
