// A small, strict command-line parser for the benchmark scripts, on util.parseArgs (node:util): unknown
// flags and bad values are errors. util.parseArgs splits the command line (--name value, --name=value);
// this layer adds what it lacks: numbers and enums checked, and --flag=false for a boolean.
import { parseArgs as splitArgs } from "node:util";

export type ArgSpec =
    | { type: "boolean", default: boolean }
    | { type: "string", default: string }
    | { type: "number", default: number }
    | { type: "enum", values: readonly string[], default: string }
    | { type: "list", default: string };

export function parseArgs<T extends Record<string, ArgSpec>>(argv: string[], spec: T): { [K in keyof T]: T[K]["default"] } {
    const out: Record<string, unknown> = {};
    for (const [name, s] of Object.entries(spec))
        out[name] = s.default;
    // not strict: the tokens come back in order, with their values, and the checks below are this parser's
    const { tokens } = splitArgs({
        args: argv,
        options: Object.fromEntries(Object.entries(spec).map(([name, s]) => [name, { type: s.type === "boolean" ? "boolean" as const : "string" as const }])),
        strict: false,
        allowPositionals: true,
        tokens: true
    });
    for (const token of tokens) {
        if (token.kind === "positional")
            throw new Error(`unexpected argument ${token.value}`);
        if (token.kind === "option-terminator")
            throw new Error("unexpected argument --");
        const name = token.name;
        const s = spec[name];
        if (s == null || !token.rawName.startsWith("--"))
            throw new Error(`unknown option ${token.rawName}; options: ${Object.keys(spec).map((k) => "--" + k).join(" ")}`);
        if (s.type === "boolean") {
            out[name] = token.value == null || token.value !== "false";
            continue;
        }
        const value = token.value;
        if (value == null)
            throw new Error(`--${name} needs a value`);
        if (s.type === "number") {
            const n = Number(value);
            if (!Number.isFinite(n))
                throw new Error(`--${name} must be a number, got ${value}`);
            out[name] = n;
        } else if (s.type === "enum") {
            if (!s.values.includes(value))
                throw new Error(`--${name} must be one of ${s.values.join(", ")}, got ${value}`);
            out[name] = value;
        } else
            out[name] = value;
    }
    return out as { [K in keyof T]: T[K]["default"] };
}
