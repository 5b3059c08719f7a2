// A small, strict command-line parser for the benchmark scripts: unknown flags and bad values are errors.
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
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i]!;
        if (!arg.startsWith("--"))
            throw new Error(`unexpected argument ${arg}`);
        const eq = arg.indexOf("=");
        const name = arg.slice(2, eq >= 0 ? eq : undefined);
        const s = spec[name];
        if (s == null)
            throw new Error(`unknown option --${name}; options: ${Object.keys(spec).map((k) => "--" + k).join(" ")}`);
        if (s.type === "boolean") {
            out[name] = eq >= 0 ? arg.slice(eq + 1) !== "false" : true;
            continue;
        }
        const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
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
