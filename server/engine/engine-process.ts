// Entry point of the engine child process (forked by EngineSupervisor). Everything native lives here, so
// that a crash, an abort or a hang in llama.cpp costs the server an engine restart, not its life.
import { LlamaLogLevel } from "node-llama-cpp";
import { LlamaBuildError, loadPatchedLlama } from "./llama-loader.js";
import { EngineRuntime, LoadedModel } from "./engine-runtime.js";
import { monoMs, type FromEngine, type ToEngine } from "../protocol/engine-ipc.js";
import { KeepKvError } from "./keepkv.js";
import { SequenceStateStore } from "./sequence-state-store.js";
import { errorMessage } from "../../lib/error-message.js";

const heartbeatMs = 1000;

function send(message: FromEngine): void {
    // a server that went away leaves nobody to talk to: exit instead of generating into the void
    if (process.connected)
        process.send!(message);
}

function errorCodeOf(err: unknown): string {
    if (err instanceof LlamaBuildError || err instanceof KeepKvError)
        return err.code;
    return "ENGINE_INIT_FAILED";
}

let runtime: EngineRuntime | null = null;
let shuttingDown = false;

async function shutdown(code: number): Promise<void> {
    if (shuttingDown)
        return;
    shuttingDown = true;
    try {
        await runtime?.dispose();
    } finally {
        process.exit(code);
    }
}

async function handle(message: ToEngine): Promise<void> {
    switch (message.t) {
        case "init": {
            try {
                const llama = await loadPatchedLlama({ logLevel: LlamaLogLevel.error });
                const loaded = await LoadedModel.load(llama, message.settings);
                const state = message.state == null ? null
                    : new SequenceStateStore(message.state, (event) => send({ t: "state", diskBytes: state?.diskBytes() ?? 0, ...event }));
                runtime = new EngineRuntime(llama, loaded, send, state);
                send({ t: "ready", info: runtime.info, stats: await runtime.stats() });
            } catch (err) {
                send({ t: "init_failed", code: errorCodeOf(err), message: errorMessage(err) });
                // give the message time to leave before exiting
                setTimeout(() => process.exit(1), 50);
            }
            return;
        }
        case "shutdown":
            await shutdown(0);
            return;
    }
    if (runtime == null)
        throw new Error(`engine: "${message.t}" before init`);
    switch (message.t) {
        case "generate":
            await runtime.generate(message.job);
            return;
        case "cancel":
            runtime.cancel(message.job);
            return;
        case "release":
            await runtime.release(message.slot);
            return;
        case "stats":
            send({ t: "stats", nonce: message.nonce, stats: await runtime.stats() });
            return;
        case "load_model":
            try {
                send({ t: "model_loaded", nonce: message.nonce, info: await runtime.stageModel(message.settings) });
            } catch (err) {
                send({ t: "model_load_failed", nonce: message.nonce, message: errorMessage(err) });
            }
            return;
        case "activate_model": {
            const info = await runtime.activateStaged();
            send({ t: "model_activated", nonce: message.nonce, info, stats: await runtime.stats() });
            return;
        }
        case "discard_model":
            await runtime.discardStaged();
            send({ t: "model_discarded", nonce: message.nonce });
            return;
    }
}

process.on("message", (message: ToEngine) => {
    handle(message).catch((err: unknown) => {
        process.stderr.write(`engine: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
        // an engine in an unknown state is worse than a restarted one
        process.exit(1);
    });
});
process.on("disconnect", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));
// the server owns Ctrl-C: it shuts the engine down in order
process.on("SIGINT", () => {});

setInterval(() => send({ t: "heartbeat", rssBytes: process.memoryUsage.rss(), sentAt: monoMs() }), heartbeatMs).unref();
