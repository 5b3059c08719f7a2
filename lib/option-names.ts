// How a server option's key reads on the command line and in the environment: the server's option table
// (server/config/options.ts) and the tools that start a server (bench/) name its flags the same way.

/** `contextSize` -> `--context-size` */
export function flagOf(key: string): string {
    return "--" + key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
}

/** `contextSize` -> `KEEPKV_CONTEXT_SIZE` */
export function envOf(key: string): string {
    return "KEEPKV_" + key.replace(/[A-Z]/g, (c) => "_" + c).toUpperCase();
}
