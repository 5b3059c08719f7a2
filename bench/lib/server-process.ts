// Starts the real server (node dist/server/main.js) as a child process on a free loopback port and
// waits until it serves. Shared by the benchmarks that go through the server and by the tests
// (test/helpers/server-process.ts adds the test defaults).
import { spawn, type ChildProcess } from "node:child_process";
import * as path from "node:path";
import { repoRoot } from "../../lib/paths.js";

export const serverEntry = path.join(repoRoot, "dist", "server", "main.js");

export type Exit = { code: number | null, signal: NodeJS.Signals | null };

export type ServerHandle = {
    url: string,
    wsUrl: string,
    port: number,
    proc: ChildProcess,
    /** everything written to stdout and stderr so far */
    output(): string,
    exited: Promise<Exit>,
    /** SIGTERM (or the given signal) and wait for the exit */
    stop(signal?: NodeJS.Signals): Promise<Exit>
};

export type StartOptions = {
    args?: string[],
    env?: Record<string, string | undefined>,
    /** wait for GET /health to answer 200 (default true) */
    waitReady?: boolean,
    /** arguments before `args` (the tests' defaults) */
    defaultArgs?: string[],
    timeoutMs?: number
};

// servers a failed test did not stop must not outlive the test run
const running = new Set<ChildProcess>();
process.on("exit", () => {
    for (const proc of running)
        proc.kill("SIGKILL");
});

export async function startServer(opts: StartOptions = {}): Promise<ServerHandle> {
    const args = [serverEntry, "--port", "0", ...(opts.defaultArgs ?? []), ...(opts.args ?? [])];
    const proc = spawn(process.execPath, args, {
        cwd: repoRoot,
        env: { ...process.env, ...opts.env },
        stdio: ["ignore", "pipe", "pipe"]
    });
    let output = "";
    proc.stdout!.setEncoding("utf8").on("data", (d: string) => { output += d; });
    proc.stderr!.setEncoding("utf8").on("data", (d: string) => { output += d; });
    running.add(proc);
    const exited = new Promise<Exit>((resolve) => proc.once("exit", (code, signal) => {
        running.delete(proc);
        resolve({ code, signal });
    }));
    const timeoutMs = opts.timeoutMs ?? 120_000;

    const url = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the server did not print its address within ${timeoutMs} ms:\n${output}`)), timeoutMs);
        const check = () => {
            const match = /keepkv listening on (http:\/\/\S+)/.exec(output);
            if (match != null) {
                clearTimeout(timer);
                resolve(match[1]!);
            }
        };
        proc.stdout!.on("data", check);
        void exited.then((exit) => {
            clearTimeout(timer);
            reject(new Error(`the server exited (${exit.code ?? exit.signal}) before listening:\n${output}`));
        });
    });
    const port = Number(new URL(url).port);
    const handle: ServerHandle = {
        url,
        wsUrl: url.replace(/^http/, "ws") + "/v1/ws",
        port,
        proc,
        output: () => output,
        exited,
        stop: async (signal: NodeJS.Signals = "SIGTERM") => {
            if (proc.exitCode == null && proc.signalCode == null)
                proc.kill(signal);
            return await exited;
        }
    };
    if (opts.waitReady !== false)
        await waitForHealth(handle, timeoutMs);
    return handle;
}

/** Waits for GET /health to answer 200: of a server started here, or (without `exited`) of one running elsewhere. */
export async function waitForHealth(server: Pick<ServerHandle, "url" | "output"> & { exited?: Promise<Exit> }, timeoutMs = 120_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void server.exited?.then(() => { exited = true; });
    for (;;) {
        if (exited)
            throw new Error(`the server exited before it was ready:\n${server.output()}`);
        try {
            const res = await fetch(`${server.url}/health`);
            if (res.status === 200)
                return;
        } catch {
            // not listening yet
        }
        if (Date.now() > deadline)
            throw new Error(`the server was not ready within ${timeoutMs} ms:\n${server.output()}`);
        await new Promise((r) => setTimeout(r, 100));
    }
}

/** GET or POST JSON, returning status and parsed body. */
export async function httpJson(url: string, init: { method?: string, body?: unknown, headers?: Record<string, string> } = {}): Promise<{ status: number, body: any, headers: Headers }> {
    const res = await fetch(url, {
        method: init.method ?? (init.body !== undefined ? "POST" : "GET"),
        headers: { ...(init.body !== undefined ? { "Content-Type": "application/json" } : {}), ...init.headers },
        body: init.body === undefined ? undefined : typeof init.body === "string" ? init.body : JSON.stringify(init.body)
    });
    const text = await res.text();
    let body: unknown = text;
    try {
        body = JSON.parse(text);
    } catch {
        // not JSON: keep the text
    }
    return { status: res.status, body, headers: res.headers };
}

/** Polls until `probe` returns a value other than undefined (waiting is not a pass/fail condition; the deadline only ends a hung test). */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000, everyMs = 100): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await probe();
        if (value !== undefined)
            return value;
        if (Date.now() > deadline)
            throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, everyMs));
    }
}
