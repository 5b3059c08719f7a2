// Builds llama.cpp with the keepkv patch series through node-llama-cpp, offline, and caches the result.
//
//   node dist/scripts/build-llama.js [--gpu cpu|cuda|vulkan|metal] [--force] [--vanilla]
//
// --vanilla builds the same sources without the series (the baseline for equivalence tests and benchmarks).
//
// Steps: apply patches/node-llama-cpp to the installed package (idempotent), compute the build key,
// reuse a build cached under that key if there is one, otherwise clone the bundled llama.cpp release,
// apply patches/llama.cpp (checked; a patch that does not apply stops the build and names itself),
// run `node-llama-cpp source build`, and store the result in the cache.
//
// The compile's output (tens of thousands of lines) goes to .work/build-llama-<flavor>.log, whose path is
// printed; the terminal gets a line at every tenth of the compile, and a failed build prints the last
// 100 lines of the log.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import {
    BuildFlavor, BuildGpu, BuildManifest, buildDigest, buildInputsOf, computeBuildKey, cpuCmakeOptions, listPatches, parseBuildGpu,
    readBuildManifest
} from "../lib/build-key.js";
import { ccacheLauncherOptions, commandExists } from "./lib/cmake.js";
import { describeParseArgsError, isParseArgsError } from "./lib/command-line.js";
import { describeLoggedFailure, progressPrinter, runLogged } from "./lib/logged-run.js";
import {
    buildCacheDir, buildManifestPath, llamaPatchesDir, nlcBundlePath, nlcLlamaCppDir, nlcLlamaDir,
    nlcLocalBuildsDir, nlcPackageDir, nlcPatchesDir, repoRoot, vanillaBuildManifestPath, workDir
} from "../lib/paths.js";
import {
    applySeriesToGitTree, applySeriesToPlainTree, git, nlcTrackedPaths, PatchApplyError, restorePristineSnapshot
} from "./lib/patch-series.js";
import { errorMessage } from "../lib/error-message.js";

const log = (msg: string) => process.stderr.write(`[keepkv build] ${msg}\n`);

export const pristineDirName = ".keepkv-pristine";

/** Applies patches/node-llama-cpp to the installed package; safe to run any number of times. */
export function applyNodeLlamaCppSeries(): void {
    const patches = listPatches(nlcPatchesDir);
    applySeriesToPlainTree(nlcPackageDir, patches, path.join(nlcPackageDir, pristineDirName));
    log(`applied ${patches.length} node-llama-cpp patch(es)`);
}

/** A fresh checkout of the bundled llama.cpp release, with node-llama-cpp's own fix applied as the base commit. */
export function cloneBundledLlamaCpp(dest: string): void {
    fs.rmSync(dest, { recursive: true, force: true });
    git(path.dirname(dest), "clone", "-q", nlcBundlePath, dest);
    git(dest, "checkout", "-q", "-B", "keepkv");
    try {
        git(dest, "remote", "remove", "origin");
    } catch {
        // a bundle clone without an origin is fine
    }
    // node-llama-cpp applies this fix to every source build (applyLlamaCppRepoPatches.js); so do we
    const ownFix = path.join(nlcLlamaDir, "patches", "PR-22566.diff");
    const loader = fs.readFileSync(path.join(dest, "src", "llama-model-loader.cpp"), "utf8");
    if (fs.existsSync(ownFix) && !loader.includes("n_tensors = gguf_get_n_tensors(metadata);")) {
        git(dest, "apply", "--ignore-whitespace", ownFix);
        git(dest, "-c", "user.name=keepkv", "-c", "user.email=keepkv@localhost", "commit", "-qam",
            "node-llama-cpp: PR-22566 (applied by node-llama-cpp to every source build)");
    }
    git(dest, "tag", "-f", "keepkv-base");
}

function copyDir(src: string, dest: string): void {
    fs.cpSync(src, dest, { recursive: true, dereference: false, preserveTimestamps: true });
}

function restoreFromCache(cacheEntry: string, manifest: BuildManifest, manifestPath: string): void {
    const target = path.join(nlcLocalBuildsDir, manifest.folderName);
    fs.rmSync(target, { recursive: true, force: true });
    fs.mkdirSync(nlcLocalBuildsDir, { recursive: true });
    copyDir(path.join(cacheEntry, "build"), target);
    fs.writeFileSync(manifestPath, JSON.stringify({ ...manifest, digest: buildDigest(manifest.folderName) }, null, 4) + "\n");
}

function storeInCache(cacheEntry: string, manifest: BuildManifest): void {
    const tmp = `${cacheEntry}.tmp-${process.pid}`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(path.join(tmp, "build"), { recursive: true });
    const built = path.join(nlcLocalBuildsDir, manifest.folderName);
    copyDir(path.join(built, "Release"), path.join(tmp, "build", "Release"));
    fs.copyFileSync(path.join(built, "buildDone.status"), path.join(tmp, "build", "buildDone.status"));
    fs.writeFileSync(path.join(tmp, "manifest.json"), JSON.stringify(manifest, null, 4) + "\n");
    fs.rmSync(cacheEntry, { recursive: true, force: true });
    fs.renameSync(tmp, cacheEntry);
}

export type BuildResult = { manifest: BuildManifest, source: "up-to-date" | "cache" | "built", seconds: number };

function manifestPathOf(flavor: BuildFlavor): string {
    return flavor === "keepkv" ? buildManifestPath : vanillaBuildManifestPath;
}

/** Where the compile of a flavor writes its output. */
export function buildLogPath(flavor: BuildFlavor): string {
    return path.join(workDir, `build-llama-${flavor}.log`);
}

export async function buildLlama(opts: { gpu: BuildGpu, force?: boolean, flavor?: BuildFlavor }): Promise<BuildResult> {
    const started = Date.now();
    const flavor = opts.flavor ?? "keepkv";
    if (!fs.existsSync(nlcPackageDir))
        throw new Error("node-llama-cpp is not installed: run `npm ci` first");

    applyNodeLlamaCppSeries();

    const inputs = buildInputsOf(flavor, opts.gpu);
    const key = computeBuildKey(inputs);
    const cacheEntry = path.join(buildCacheDir(), key);
    const seconds = () => (Date.now() - started) / 1000;
    const manifestPath = manifestPathOf(flavor);

    const current = readBuildManifest(manifestPath);
    if (opts.force !== true && current?.key === key &&
        fs.existsSync(path.join(nlcLocalBuildsDir, current.folderName, "Release", "llama-addon.node"))) {
        if (current.digest != null && current.digest === buildDigest(current.folderName)) {
            log(`${flavor} build ${key} is up to date`);
            return { manifest: current, source: "up-to-date", seconds: seconds() };
        }
        log(`the installed ${flavor} build is not the one recorded for ${key} (rebuilt in place by scripts/dev-rebuild.sh?): replacing it`);
    }

    if (opts.force !== true && fs.existsSync(path.join(cacheEntry, "manifest.json"))) {
        const manifest = JSON.parse(fs.readFileSync(path.join(cacheEntry, "manifest.json"), "utf8")) as BuildManifest;
        restoreFromCache(cacheEntry, manifest, manifestPath);
        log(`restored ${flavor} build ${key} from the cache (${cacheEntry})`);
        return { manifest, source: "cache", seconds: seconds() };
    }

    log(`no cached ${flavor} build for key ${key}: building (a full CPU build takes about 5 to 9 minutes on 2 cores)`);
    if (!commandExists("cmake"))
        throw new Error("cmake is required to build llama.cpp (Debian: apt-get install cmake)");
    if (!commandExists("git"))
        throw new Error("git is required to build llama.cpp (Debian: apt-get install git)");

    // the build reads node-llama-cpp's own llama.cpp tree and addon sources: for vanilla, both as shipped,
    // and afterwards both are put back as the keepkv build wants them
    cloneBundledLlamaCpp(nlcLlamaCppDir);
    const llamaPatches = listPatches(llamaPatchesDir);
    if (flavor === "keepkv") {
        applySeriesToGitTree(nlcLlamaCppDir, llamaPatches, { commit: true });
        log(`applied ${llamaPatches.length} llama.cpp patch(es)`);
    } else {
        restorePristineSnapshot(nlcPackageDir, path.join(nlcPackageDir, pristineDirName), nlcTrackedPaths);
        log("building without the patch series");
    }

    const keepKvLastBuild = path.join(nlcLlamaDir, "lastBuild.json");
    const lastBuildBefore = fs.existsSync(keepKvLastBuild) ? fs.readFileSync(keepKvLastBuild) : null;
    let built: { folderName: string, cmakeOptions: Record<string, string> };
    try {
        // the option only names the build folder, so that the two flavors live side by side
        built = await runSourceBuild(flavor, opts.gpu, flavor === "keepkv" ? { KEEPKV: "ON" } : { KEEPKV_VANILLA: "ON" });
    } finally {
        if (flavor === "vanilla") {
            applyNodeLlamaCppSeries();
            cloneBundledLlamaCpp(nlcLlamaCppDir);
            applySeriesToGitTree(nlcLlamaCppDir, llamaPatches, { commit: true });
            // node-llama-cpp's "last build" stays the keepkv one
            if (lastBuildBefore != null)
                fs.writeFileSync(keepKvLastBuild, lastBuildBefore);
        }
    }

    const manifest: BuildManifest = {
        key, folderName: built.folderName, gpu: opts.gpu, cmakeOptions: built.cmakeOptions, builtAt: new Date().toISOString(), inputs,
        digest: buildDigest(built.folderName) ?? undefined
    };
    fs.writeFileSync(manifestPath, JSON.stringify(manifest, null, 4) + "\n");
    storeInCache(cacheEntry, manifest);
    log(`built ${flavor} ${key} in ${seconds().toFixed(0)} s and cached it in ${cacheEntry}`);
    return { manifest, source: "built", seconds: seconds() };
}

/** The keepkv build (see buildLlama). */
export async function buildPatchedLlama(opts: { gpu: BuildGpu, force?: boolean }): Promise<BuildResult> {
    return await buildLlama({ ...opts, flavor: "keepkv" });
}

/**
 * Runs `node-llama-cpp source build` with its output in the flavor's log; returns the build folder's name
 * and every CMake option it got.
 */
async function runSourceBuild(flavor: BuildFlavor, gpu: BuildGpu, options: Record<string, string>): Promise<{ folderName: string, cmakeOptions: Record<string, string> }> {
    const cmakeOptions = { ...options, ...cpuCmakeOptions(), ...ccacheLauncherOptions() };
    if (cmakeOptions.CMAKE_C_COMPILER_LAUNCHER == null)
        log("ccache not found: every rebuild will be a full build (Debian: apt-get install ccache)");

    // no colour codes in the log: node-llama-cpp writes them even into a pipe
    const env: NodeJS.ProcessEnv = { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: "true", CCACHE_BASEDIR: repoRoot, FORCE_COLOR: "0" };
    for (const [name, value] of Object.entries(cmakeOptions))
        env[`NODE_LLAMA_CPP_CMAKE_OPTION_${name}`] = value;

    const cli = path.join(nlcPackageDir, "dist", "cli", "cli.js");
    const gpuArg = gpu === false ? "false" : gpu;
    const logFile = buildLogPath(flavor);
    fs.mkdirSync(path.dirname(logFile), { recursive: true });
    fs.writeFileSync(logFile, "");
    log(`compiling ${flavor} llama.cpp with node-llama-cpp; the full output goes to ${logFile}`);
    const code = await runLogged(process.execPath, [cli, "source", "build", "--gpu", gpuArg, "--noUsageExample"],
        { cwd: repoRoot, env, logFile, onLine: progressPrinter(`${flavor} compile`, log) });
    if (code !== 0)
        throw new Error(describeLoggedFailure(`node-llama-cpp source build failed (exit code ${code})`, logFile));

    const lastBuild = JSON.parse(fs.readFileSync(path.join(nlcLlamaDir, "lastBuild.json"), "utf8")) as { folderName: string };
    const addon = path.join(nlcLocalBuildsDir, lastBuild.folderName, "Release", "llama-addon.node");
    if (!fs.existsSync(addon))
        throw new Error(`the build finished but ${addon} is missing`);
    return { folderName: lastBuild.folderName, cmakeOptions };
}

const usage = "usage: npm run build:llama -- [--gpu cpu|cuda|vulkan|metal] [--force] [--vanilla]\n";

async function main(argv: string[]): Promise<void> {
    const { values } = parseArgs({
        args: argv,
        options: {
            gpu: { type: "string" },
            force: { type: "boolean", default: false },
            vanilla: { type: "boolean", default: false },
            help: { type: "boolean", short: "h", default: false }
        },
        strict: true,
        allowPositionals: false
    });
    if (values.help) {
        process.stdout.write(usage);
        return;
    }
    const gpu: BuildGpu = parseBuildGpu(values.gpu ?? process.env.KEEPKV_GPU);
    const flavor: BuildFlavor = values.vanilla ? "vanilla" : "keepkv";
    const result = await buildLlama({ gpu, force: values.force, flavor });
    process.stdout.write(`${flavor} build ${result.manifest.key} (${result.source}, ${result.seconds.toFixed(1)} s)\n`);
}

if (process.argv[1] != null && path.resolve(process.argv[1]).replace(/\.ts$/, ".js").endsWith(path.join("scripts", "build-llama.js"))) {
    main(process.argv.slice(2)).catch((err: unknown) => {
        if (err instanceof PatchApplyError)
            process.stderr.write(`[keepkv build] error ${err.code}: ${err.message}\n`);
        else if (isParseArgsError(err))
            process.stderr.write(`[keepkv build] ${describeParseArgsError(err)}\n${usage}`);
        else
            process.stderr.write(`[keepkv build] error: ${errorMessage(err)}\n`);
        process.exitCode = 1;
    });
}
