// The CLI help and the documentation table, both generated from the option declarations.
import { configFileEnv, configFileFlag, defaultOf, envOf, flagOf, optionDecls, optionKeys, type OptionGroup, type OptionSchema } from "./options.js";

const groupTitles: Record<OptionGroup, string> = {
    server: "Server",
    model: "Model and context",
    keepkv: "KeepKV",
    limits: "Limits and timeouts",
    security: "Security"
};

function typeOf(schema: OptionSchema): string {
    if (schema.enum != null)
        return schema.enum.join(" \\| ");
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    return types.map((t) => t === "array" ? "list" : t === "null" ? "none" : t).join(" \\| ");
}

function defaultText(key: keyof typeof optionDecls): string {
    const decl = optionDecls[key];
    if (decl.defaultDoc != null)
        return decl.defaultDoc;
    const value = defaultOf(key);
    if (value == null)
        return "none";
    if (Array.isArray(value))
        return value.length === 0 ? "none" : value.join(",");
    return `\`${String(value)}\``;
}

/** The markdown table the README carries (checked by a test against this output). */
export function optionsMarkdown(): string {
    const lines: string[] = [];
    lines.push(`Every option can be given as a command-line flag, an environment variable, or a key of a JSON file named by `
        + `\`${configFileFlag} FILE\` (or \`${configFileEnv}\`). The command line wins over the environment, which wins over the file. `
        + `An invalid value stops startup with a message that names the option.`);
    for (const group of Object.keys(groupTitles) as OptionGroup[]) {
        lines.push("", `#### ${groupTitles[group]}`, "", "| flag | environment | config key | type | default | description |", "|---|---|---|---|---|---|");
        for (const key of optionKeys) {
            const decl = optionDecls[key];
            if (decl.group !== group)
                continue;
            lines.push(`| \`${flagOf(key)}\` | \`${envOf(key)}\` | \`${key}\` | ${typeOf(decl.schema)} | ${defaultText(key)} | ${decl.doc.replace(/\|/g, "\\|")} |`);
        }
    }
    return lines.join("\n") + "\n";
}

function wrap(text: string, width: number, indent: string): string {
    const words = text.replace(/`/g, "").split(/\s+/);
    const out: string[] = [];
    let line = "";
    for (const word of words) {
        if (line !== "" && line.length + 1 + word.length > width) {
            out.push(indent + line);
            line = word;
        } else
            line = line === "" ? word : line + " " + word;
    }
    if (line !== "")
        out.push(indent + line);
    return out.join("\n");
}

export function helpText(): string {
    const lines: string[] = [
        "Usage: npm start -- [options]      (or: node dist/server/main.js [options])",
        "",
        "keepkv: a self-hosted LLM chat server with KeepKV KV-cache compression.",
        "WebSocket chat at /v1/ws, OpenAI-compatible HTTP at /v1, Prometheus metrics at /metrics.",
        "",
        `  ${configFileFlag} FILE  JSON file of options (${configFileEnv})`,
        "  --print-config print the resolved configuration as JSON and exit",
        "  --help         this text",
        "  --version      print the version and exit"
    ];
    for (const group of Object.keys(groupTitles) as OptionGroup[]) {
        lines.push("", `${groupTitles[group]}:`);
        for (const key of optionKeys) {
            const decl = optionDecls[key];
            if (decl.group !== group)
                continue;
            lines.push(`  ${flagOf(key)} <${typeOf(decl.schema).replace(/\\/g, "")}>   env ${envOf(key)}, default ${defaultText(key).replace(/`/g, "")}`);
            lines.push(wrap(decl.doc, 92, "      "));
        }
    }
    return lines.join("\n") + "\n";
}
