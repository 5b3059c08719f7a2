// Loads llama.cpp through node-llama-cpp: the keepkv-patched local build (always, for the product) or,
// on purpose and only for comparisons, node-llama-cpp's own prebuilt binary.
import * as fs from "node:fs";
import * as path from "node:path";
import { getLlama, Llama, LlamaLogLevel } from "node-llama-cpp";
import { BuildManifest, buildDigest, buildInputsOf, computeBuildInputs, computeBuildKey, readBuildManifest } from "../../lib/build-key.js";
import { nlcLocalBuildsDir, vanillaBuildManifestPath } from "../../lib/paths.js";
import { errorMessage } from "../../lib/error-message.js";
import { keepKvVersionOf } from "./native-context.js";

export type LlamaBuildErrorCode =
    "BUILD_MISSING" | "BUILD_STALE" | "BUILD_MODIFIED" | "BUILD_NOT_PATCHED" | "BUILD_LOAD_FAILED" | "VANILLA_UNAVAILABLE";

export type VanillaKind = "prebuilt" | "local";

export class LlamaBuildError extends Error {
    constructor(readonly code: LlamaBuildErrorCode, message: string) {
        super(message);
        this.name = "LlamaBuildError";
    }
}

const howToBuild = "Build it with `npm run build:llama` (or run ./scripts/setup.sh).";

// the native binding is reached in native-context.ts; re-exported for the loader's callers
export { keepKvVersionOf };

let devBuildWarned = false;

/**
 * The binaries must be the ones the build script recorded: scripts/dev-rebuild.sh rebuilds in place under the
 * same key, and such a build is loaded only when KEEPKV_ALLOW_DEV_BUILD=1 says so (with a warning), never
 * in its place without a word.
 */
function checkBuildDigest(manifest: BuildManifest, what: string, howTo: string): void {
    if (manifest.digest == null || manifest.digest === buildDigest(manifest.folderName))
        return;
    if (process.env.KEEPKV_ALLOW_DEV_BUILD !== "1")
        throw new LlamaBuildError("BUILD_MODIFIED",
            `The installed ${what} is not the one the build script made for ${manifest.key}: it was rebuilt in place ` +
            `(scripts/dev-rebuild.sh?). ${howTo} to put the recorded build back, or set KEEPKV_ALLOW_DEV_BUILD=1 to load this one.`);
    if (!devBuildWarned) {
        devBuildWarned = true;
        process.stderr.write(`keepkv: KEEPKV_ALLOW_DEV_BUILD=1: loading a ${what} rebuilt in place, not the recorded build ${manifest.key}\n`);
    }
}

/** node-llama-cpp's loading of the local build a manifest records (never building or downloading anything). */
async function getLocalBuild(manifest: BuildManifest, opts: LoadOptions, failure: (reason: string) => LlamaBuildError): Promise<Llama> {
    try {
        return await getLlama({
            gpu: manifest.gpu,
            build: "never",
            usePrebuiltBinaries: false,
            cmakeOptions: manifest.cmakeOptions,
            skipDownload: true,
            progressLogs: false,
            logLevel: opts.logLevel ?? LlamaLogLevel.error
        });
    } catch (err) {
        throw failure(errorMessage(err));
    }
}

export type LoadOptions = {
    logLevel?: LlamaLogLevel,
    /** skip the check that the build matches the current patch series (tools that inspect old builds) */
    allowStale?: boolean
};

/**
 * Loads the keepkv-patched build made by scripts/build-llama. Refuses, with an error that says how to
 * build, when there is no build, when the patches changed since it was built, or when the binary that
 * node-llama-cpp loaded is not the patched one.
 */
export async function loadPatchedLlama(opts: LoadOptions = {}): Promise<Llama> {
    const manifest = readBuildManifest();
    if (manifest == null || !fs.existsSync(path.join(nlcLocalBuildsDir, manifest.folderName, "Release", "llama-addon.node")))
        throw new LlamaBuildError("BUILD_MISSING", `The keepkv build of llama.cpp is missing. ${howToBuild}`);

    if (opts.allowStale !== true) {
        const key = computeBuildKey(computeBuildInputs(manifest.gpu));
        if (key !== manifest.key)
            throw new LlamaBuildError("BUILD_STALE",
                `The keepkv build of llama.cpp (${manifest.key}) does not match the current patches or machine (${key}). ${howToBuild}`);
        checkBuildDigest(manifest, "keepkv build of llama.cpp", "Run `npm run build:llama`");
    }

    const llama = await getLocalBuild(manifest, opts, (reason) => new LlamaBuildError("BUILD_LOAD_FAILED",
        `node-llama-cpp could not load the keepkv build: ${reason}. ${howToBuild}`));

    if (llama.buildType !== "localBuild" || keepKvVersionOf(llama) == null) {
        await llama.dispose();
        throw new LlamaBuildError("BUILD_NOT_PATCHED",
            `node-llama-cpp loaded a llama.cpp binary without the KeepKV patches (${llama.buildType}). ${howToBuild}`);
    }
    return llama;
}

/**
 * Loads node-llama-cpp's prebuilt CPU binary, unpatched: the "vanilla llama.cpp" that benchmarks and
 * equivalence tests compare against. Never used to serve.
 */
export async function loadVanillaLlama(opts: LoadOptions = {}): Promise<Llama> {
    let llama: Llama;
    try {
        llama = await getLlama({
            gpu: false,
            build: "never",
            usePrebuiltBinaries: true,
            skipDownload: true,
            progressLogs: false,
            logLevel: opts.logLevel ?? LlamaLogLevel.error
        });
    } catch (err) {
        throw new LlamaBuildError("VANILLA_UNAVAILABLE",
            `node-llama-cpp's prebuilt CPU binary could not be loaded: ${errorMessage(err)}`);
    }
    if (llama.buildType !== "prebuilt" || keepKvVersionOf(llama) != null) {
        await llama.dispose();
        throw new LlamaBuildError("VANILLA_UNAVAILABLE",
            `expected node-llama-cpp's prebuilt binary, got a ${llama.buildType} build`);
    }
    return llama;
}

/**
 * Loads the unpatched local build (`npm run build:llama -- --vanilla`, run by the setup command): the bundled
 * llama.cpp and node-llama-cpp addon without the series, built with the same compiler and flags as the keepkv
 * build and sharing its ggml libraries. Where the prebuilt binary differs from this machine's builds in its
 * arithmetic (it picks a CPU variant at run time), this is the baseline that isolates what the patches do.
 */
export async function loadVanillaLocalLlama(opts: LoadOptions = {}): Promise<Llama> {
    const howTo = "Build it with `npm run build:llama -- --vanilla` (./scripts/setup.sh does).";
    const manifest = readBuildManifest(vanillaBuildManifestPath);
    if (manifest == null || !fs.existsSync(path.join(nlcLocalBuildsDir, manifest.folderName, "Release", "llama-addon.node")))
        throw new LlamaBuildError("VANILLA_UNAVAILABLE", `The unpatched local build of llama.cpp is missing. ${howTo}`);
    if (manifest.key !== computeBuildKey(buildInputsOf("vanilla", manifest.gpu)))
        throw new LlamaBuildError("BUILD_STALE", `The unpatched local build of llama.cpp (${manifest.key}) was made for another node-llama-cpp or machine. ${howTo}`);
    checkBuildDigest(manifest, "unpatched local build of llama.cpp", "Run `npm run build:llama -- --vanilla`");
    const llama = await getLocalBuild(manifest, opts, (reason) => new LlamaBuildError("VANILLA_UNAVAILABLE",
        `node-llama-cpp could not load the unpatched local build: ${reason}. ${howTo}`));
    if (llama.buildType !== "localBuild" || keepKvVersionOf(llama) != null) {
        await llama.dispose();
        throw new LlamaBuildError("VANILLA_UNAVAILABLE", `expected the unpatched local build, got a ${llama.buildType} build${keepKvVersionOf(llama) != null ? " with KeepKV" : ""}`);
    }
    return llama;
}

/** The vanilla baseline of a comparison: node-llama-cpp's prebuilt binary or the unpatched local build. */
export async function loadVanilla(kind: VanillaKind, opts: LoadOptions = {}): Promise<Llama> {
    return kind === "prebuilt" ? await loadVanillaLlama(opts) : await loadVanillaLocalLlama(opts);
}
