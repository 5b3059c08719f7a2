// A small leveled logger to stderr. Callers pass facts as fields; prompts, generated text and tokens
// are never passed, so they never reach a log.
import type { LogLevel } from "./config/options.js";

const rank: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export type LogFields = Record<string, string | number | boolean | null | undefined>;

export class Logger {
    constructor(private readonly level: LogLevel, private readonly write: (line: string) => void = (l) => process.stderr.write(l)) {}

    enabled(level: LogLevel): boolean {
        return rank[level] <= rank[this.level];
    }

    log(level: LogLevel, message: string, fields: LogFields = {}): void {
        if (!this.enabled(level))
            return;
        const parts = Object.entries(fields)
            .filter(([, v]) => v !== undefined)
            .map(([k, v]) => `${k}=${typeof v === "string" && /[\s"=]/.test(v) ? JSON.stringify(v) : String(v)}`);
        this.write(`${new Date().toISOString()} ${level.padEnd(5)} ${message}${parts.length > 0 ? " " + parts.join(" ") : ""}\n`);
    }

    error(message: string, fields?: LogFields): void { this.log("error", message, fields); }
    warn(message: string, fields?: LogFields): void { this.log("warn", message, fields); }
    info(message: string, fields?: LogFields): void { this.log("info", message, fields); }
    debug(message: string, fields?: LogFields): void { this.log("debug", message, fields); }
}
