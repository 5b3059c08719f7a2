// Builds llama.cpp with the keepkv patch series through node-llama-cpp, offline, and caches the result.
//
//   node dist/scripts/build-llama.js [--gpu cpu|cuda|vulkan|metal] [--force]
//
// Steps: apply patches/node-llama-cpp to the installed package (idempotent), compute the build key,
// reuse a build cached under that key if there is one, otherwise clone the bundled llama.cpp release,
// apply patches/llama.cpp (checked; a patch that does not apply stops the build and names itself),
// run `node-llama-cpp source build`, and store the result in the cache.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import {
    BuildGpu, BuildManifest, computeBuildInputs, computeBuildKey, parseBuildGpu, readBuildManifest
} from "./lib/build-key.js";
import {
    buildCacheDir, buildManifestPath, llamaPatchesDir, nlcBundlePath, nlcLlamaCppDir, nlcLlamaDir,
    nlcLocalBuildsDir, nlcPackageDir, nlcPatchesDir, repoRoot
} from "./lib/paths.js";
import { applySeriesToGitTree, applySeriesToPlainTree, git, listPatches, PatchApplyError } from "./lib/patch-series.js";

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

function commandExists(cmd: string): boolean {
    return spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).status === 0;
}

function restoreFromCache(cacheEntry: string, manifest: BuildManifest): void {
    const target = path.join(nlcLocalBuildsDir, manifest.folderName);
    fs.rmSync(target, { recursive: true, force: true });
    fs.mkdirSync(nlcLocalBuildsDir, { recursive: true });
    copyDir(path.join(cacheEntry, "build"), target);
    fs.writeFileSync(buildManifestPath, JSON.stringify(manifest, null, 4) + "\n");
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

export function buildPatchedLlama(opts: { gpu: BuildGpu, force?: boolean }): BuildResult {
    const started = Date.now();
    if (!fs.existsSync(nlcPackageDir))
        throw new Error("node-llama-cpp is not installed: run `npm ci` first");

    applyNodeLlamaCppSeries();

    const inputs = computeBuildInputs(opts.gpu);
    const key = computeBuildKey(inputs);
    const cacheEntry = path.join(buildCacheDir(), key);
    const seconds = () => (Date.now() - started) / 1000;

    const current = readBuildManifest();
    if (opts.force !== true && current?.key === key &&
        fs.existsSync(path.join(nlcLocalBuildsDir, current.folderName, "Release", "llama-addon.node"))) {
        log(`build ${key} is up to date`);
        return { manifest: current, source: "up-to-date", seconds: seconds() };
    }

    if (opts.force !== true && fs.existsSync(path.join(cacheEntry, "manifest.json"))) {
        const manifest = JSON.parse(fs.readFileSync(path.join(cacheEntry, "manifest.json"), "utf8")) as BuildManifest;
        restoreFromCache(cacheEntry, manifest);
        log(`restored build ${key} from the cache (${cacheEntry})`);
        return { manifest, source: "cache", seconds: seconds() };
    }

    log(`no cached build for key ${key}: building (a full CPU build takes about 9 minutes on 2 cores)`);
    if (!commandExists("cmake"))
        throw new Error("cmake is required to build llama.cpp (Debian: apt-get install cmake)");
    if (!commandExists("git"))
        throw new Error("git is required to build llama.cpp (Debian: apt-get install git)");

    cloneBundledLlamaCpp(nlcLlamaCppDir);
    const llamaPatches = listPatches(llamaPatchesDir);
    applySeriesToGitTree(nlcLlamaCppDir, llamaPatches, { commit: true });
    log(`applied ${llamaPatches.length} llama.cpp patch(es)`);

    const cmakeOptions: Record<string, string> = { KEEPKV: "ON" };
    if (commandExists("ccache")) {
        cmakeOptions.CMAKE_C_COMPILER_LAUNCHER = "ccache";
        cmakeOptions.CMAKE_CXX_COMPILER_LAUNCHER = "ccache";
    } else {
        log("ccache not found: every rebuild will be a full build (Debian: apt-get install ccache)");
    }

    const env: NodeJS.ProcessEnv = { ...process.env, NODE_LLAMA_CPP_SKIP_DOWNLOAD: "true", CCACHE_BASEDIR: repoRoot };
    for (const [name, value] of Object.entries(cmakeOptions))
        env[`NODE_LLAMA_CPP_CMAKE_OPTION_${name}`] = value;

    const cli = path.join(nlcPackageDir, "dist", "cli", "cli.js");
    const gpuArg = opts.gpu === false ? "false" : opts.gpu;
    const res = spawnSync(process.execPath, [cli, "source", "build", "--gpu", gpuArg, "--noUsageExample"], {
        cwd: repoRoot, env, stdio: ["ignore", "inherit", "inherit"]
    });
    if (res.status !== 0)
        throw new Error(`node-llama-cpp source build failed (exit code ${res.status}); see the output above`);

    const lastBuild = JSON.parse(fs.readFileSync(path.join(nlcLlamaDir, "lastBuild.json"), "utf8")) as { folderName: string };
    const addon = path.join(nlcLocalBuildsDir, lastBuild.folderName, "Release", "llama-addon.node");
    if (!fs.existsSync(addon))
        throw new Error(`the build finished but ${addon} is missing`);

    const manifest: BuildManifest = {
        key, folderName: lastBuild.folderName, gpu: opts.gpu, cmakeOptions, builtAt: new Date().toISOString(), inputs
    };
    fs.writeFileSync(buildManifestPath, JSON.stringify(manifest, null, 4) + "\n");
    storeInCache(cacheEntry, manifest);
    log(`built ${key} in ${seconds().toFixed(0)} s and cached it in ${cacheEntry}`);
    return { manifest, source: "built", seconds: seconds() };
}

function main(argv: string[]): void {
    let gpu: BuildGpu = parseBuildGpu(process.env.KEEPKV_GPU);
    let force = false;
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i]!;
        if (arg === "--gpu")
            gpu = parseBuildGpu(argv[++i]);
        else if (arg.startsWith("--gpu="))
            gpu = parseBuildGpu(arg.slice("--gpu=".length));
        else if (arg === "--force")
            force = true;
        else if (arg === "--help" || arg === "-h") {
            process.stdout.write("usage: npm run build:llama -- [--gpu cpu|cuda|vulkan|metal] [--force]\n");
            return;
        } else
            throw new Error(`unknown option ${arg}`);
    }
    const result = buildPatchedLlama({ gpu, force });
    process.stdout.write(`keepkv build ${result.manifest.key} (${result.source}, ${result.seconds.toFixed(1)} s)\n`);
}

if (process.argv[1] != null && path.resolve(process.argv[1]).replace(/\.ts$/, ".js").endsWith(path.join("scripts", "build-llama.js"))) {
    try {
        main(process.argv.slice(2));
    } catch (err) {
        if (err instanceof PatchApplyError)
            process.stderr.write(`[keepkv build] error ${err.code}: ${err.message}\n`);
        else
            process.stderr.write(`[keepkv build] error: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
    }
}
