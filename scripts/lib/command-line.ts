// What the command-line scripts share around util.parseArgs (node:util), which parses their options.

/** util.parseArgs' own errors (an unknown option, a missing value, a stray argument): the user's mistake, not the script's. */
export function isParseArgsError(err: unknown): err is Error & { code: string } {
    const code: unknown = err instanceof Error ? (err as Error & { code?: unknown }).code : undefined;
    return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_");
}
