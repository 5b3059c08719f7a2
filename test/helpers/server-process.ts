// The real server for the tests: bench/lib/server-process.ts, with the test defaults.
import { testModelPath } from "../../lib/model-paths.js";
import { startServer as startAnyServer, type ServerHandle, type StartOptions as BaseOptions } from "../../bench/lib/server-process.js";

export { httpJson, serverEntry, waitFor, waitForHealth, type Exit, type ServerHandle } from "../../bench/lib/server-process.js";

/**
 * Arguments every test server gets unless a test overrides them. stories3M with the server's KeepKV defaults
 * (policy, budget, selection), so that every server test runs the path users run. One thread: the test machine is
 * small and shared, and ggml's threads spin against each other on busy cores (measured: 50 tokens of
 * stories3M in 38 ms with 1 thread, minutes with 2 threads on 2 busy cores). A 2048-token context
 * per sequence lets a stream run long enough to be cancelled or killed in the middle.
 */
export const testServerArgs = [
    "--model", testModelPath(), "--threads", "1", "--context-size", "2048", "--log-level", "warn"
];

export type StartOptions = Omit<BaseOptions, "defaultArgs"> & {
    /** leave out testServerArgs */
    bareArgs?: boolean
};

export async function startServer(opts: StartOptions = {}): Promise<ServerHandle> {
    return await startAnyServer({ ...opts, defaultArgs: opts.bareArgs === true ? [] : testServerArgs });
}
