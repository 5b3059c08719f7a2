// `npm start -- [options]`: the keepkv server.
import * as fs from "node:fs";
import * as path from "node:path";
import { ConfigError, loadConfig } from "./config/load-config.js";
import { optionDecls, optionKeys } from "./config/options.js";
import { helpText } from "./config/options-doc.js";
import { EngineStartError } from "./supervisor/supervisor.js";
import { Logger } from "./logger.js";
import { startServer } from "./server.js";
import { repoRoot } from "../lib/paths.js";

/** exit within this long after SIGTERM/SIGINT, whatever hangs */
const exitBoundExtraMs = 15_000;

function version(): string {
    const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, "package.json"), "utf8")) as { version: string };
    return pkg.version;
}

const isEmptyList = (value: unknown) => Array.isArray(value) && value.length === 0;

async function main(): Promise<void> {
    const loaded = loadConfig(process.argv.slice(2));
    switch (loaded.action.action) {
        case "help":
            process.stdout.write(helpText());
            return;
        case "version":
            process.stdout.write(`keepkv ${version()}\n`);
            return;
        case "print-config": {
            const shown = Object.fromEntries(optionKeys.map((k) =>
                [k, optionDecls[k].secret === true && loaded.config[k] != null && !isEmptyList(loaded.config[k]) ? "(set)" : loaded.config[k]]));
            process.stdout.write(JSON.stringify(shown, null, 2) + "\n");
            return;
        }
    }
    const log = new Logger(loaded.config.logLevel);
    const server = await startServer(loaded, log);

    let stopping = false;
    const stop = (signal: string) => {
        if (stopping)
            return;
        stopping = true;
        log.info("signal", { signal });
        setTimeout(() => {
            log.error("shutdown took too long, exiting anyway");
            process.exit(0);
        }, loaded.config.shutdownGrace * 1000 + exitBoundExtraMs).unref();
        server.shutdown().then(() => process.exit(0), (err: unknown) => {
            log.error("shutdown failed", { error: (err as Error).message });
            process.exit(0);
        });
    };
    process.on("SIGTERM", () => stop("SIGTERM"));
    process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((err: unknown) => {
    if (err instanceof ConfigError || err instanceof EngineStartError)
        process.stderr.write(`keepkv: ${err.message}\n`);
    else
        process.stderr.write(`keepkv: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
});
