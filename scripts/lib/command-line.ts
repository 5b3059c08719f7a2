// What the command-line scripts share around util.parseArgs (node:util), which parses their options.

/** util.parseArgs' own errors (an unknown option, a missing value, a stray argument): the user's mistake, not the script's. */
export function isParseArgsError(err: unknown): err is Error & { code: string } {
    const code: unknown = err instanceof Error ? (err as Error & { code?: unknown }).code : undefined;
    return typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_");
}

/**
 * A parseArgs error in the scripts' own words: "unknown option --x" (node's message goes on about
 * positional arguments when a command takes them); the others are clear as they are.
 */
export function describeParseArgsError(err: Error & { code: string }): string {
    const option = /^Unknown option '([^']+)'/.exec(err.message)?.[1];
    return err.code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && option != null ? `unknown option ${option}` : err.message;
}
