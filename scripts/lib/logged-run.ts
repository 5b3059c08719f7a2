// Running the long native builds quietly: all of a command's output goes to a log file, the terminal gets a
// progress line at every tenth of the compile, and a failure shows the end of the log and where the rest is.
// A first build of llama.cpp prints about 29,000 lines of compiler output; nobody reads them when it works.
import { spawn } from "node:child_process";
import * as fs from "node:fs";

/** How many lines of the log a failure shows: enough for the first compiler error and what led to it. */
export const failureTailLines = 100;

/** The last lines of a log file (empty when there is none). */
export function logTail(file: string, lines = failureTailLines): string {
    if (!fs.existsSync(file))
        return "";
    return fs.readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
}

/** "<what>; the full output is in <log>, ending with:\n<tail>": the message of a failed logged step. */
export function describeLoggedFailure(what: string, logFile: string, lines = failureTailLines): string {
    const tail = logTail(logFile, lines);
    return `${what}; the full output is in ${logFile}` + (tail !== "" ? `, ending with:\n${tail}` : "");
}

/**
 * Runs a command with all of its output appended to a log file; onLine sees each line (for progress).
 * Resolves with the exit code; a command that cannot start resolves with -1 and says why in the log.
 */
export function runLogged(cmd: string, args: string[], opts: { cwd: string, env?: NodeJS.ProcessEnv, logFile: string, onLine?: (line: string) => void }): Promise<number> {
    fs.appendFileSync(opts.logFile, `$ ${cmd} ${args.join(" ")}\n`);
    return new Promise((resolve) => {
        const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
        let pending = "";
        const onData = (chunk: Buffer) => {
            fs.appendFileSync(opts.logFile, chunk);
            if (opts.onLine == null)
                return;
            pending += chunk.toString("utf8");
            // ninja and cmake end their status lines with \n when not on a terminal; \r is for tools that do not
            const lines = pending.split(/\r?\n|\r/);
            pending = lines.pop()!;
            for (const line of lines)
                opts.onLine(line);
        };
        child.stdout.on("data", onData);
        child.stderr.on("data", onData);
        child.on("error", (err) => {
            fs.appendFileSync(opts.logFile, `cannot run ${cmd}: ${err.message}\n`);
            resolve(-1);
        });
        child.on("close", (code, signal) => {
            if (pending !== "")
                opts.onLine?.(pending);
            resolve(code ?? (signal != null ? 128 : -1));
        });
    });
}

/** The build's progress in percent from a ninja "[12/278]" or a make "[ 45%]" status line; null for other lines. */
export function buildProgressOf(line: string): { percent: number, done?: number, total?: number } | null {
    const ninja = /^\[(\d+)\/(\d+)\]/.exec(line);
    if (ninja != null && Number(ninja[2]) > 0)
        return { percent: 100 * Number(ninja[1]) / Number(ninja[2]), done: Number(ninja[1]), total: Number(ninja[2]) };
    const make = /^\[\s*(\d+)%\]/.exec(line);
    return make != null ? { percent: Number(make[1]) } : null;
}

/**
 * Prints "<label>: n %" at every tenth of a ninja or make build. A build that starts counting again (a
 * second ninja run with another total, a make percentage going down) starts its tenths again.
 */
export function progressPrinter(label: string, log: (msg: string) => void): (line: string) => void {
    let lastTenth = -1;
    let lastPercent = -1;
    let lastTotal: number | undefined;
    return (line) => {
        const progress = buildProgressOf(line);
        if (progress == null)
            return;
        if (progress.total !== lastTotal || progress.percent < lastPercent - 10)
            lastTenth = -1;
        lastTotal = progress.total;
        lastPercent = progress.percent;
        const tenth = Math.floor(progress.percent / 10);
        if (tenth > lastTenth) {
            lastTenth = tenth;
            const count = progress.total != null ? ` (${progress.done}/${progress.total} steps)` : "";
            log(`  ${label}: ${Math.round(progress.percent)} %${count}`);
        }
    };
}
