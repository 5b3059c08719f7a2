// llama.cpp's own llama-quantize, built from the bundled release (not the patched tree the product uses: the
// tool only rewrites weights, and a pristine clone keeps the patch series out of it), cached in the build
// cache, and the conversion of a GGUF to another type with it.
//
// The binary is linked statically (BUILD_SHARED_LIBS=OFF) so that the one file in the cache runs on its own.
// It is built with GGML_NATIVE=ON for this CPU, so the key holds the CPU flags next to the node-llama-cpp
// version (which fixes the llama.cpp release) and the compiler; the patch series is not part of it.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { cloneBundledLlamaCpp } from "../build-llama.js";
import { computeBuildInputs } from "../../lib/build-key.js";
import { cmakeConfigureArgs, commandExists } from "./cmake.js";
import { describeLoggedFailure, progressPrinter, runLogged } from "./logged-run.js";
import { ModelPullError } from "../../lib/models.js";
import { buildCacheDir, workDir } from "../../lib/paths.js";
import { errorMessage } from "../../lib/error-message.js";

/** Bump when the tool's build recipe changes. */
export const quantizeToolRecipe = 1;

export type QuantizeToolInputs = {
    tool: "llama-quantize",
    recipe: number,
    nodeLlamaCppVersion: string,
    platform: string,
    arch: string,
    cpuFlags: string,
    compiler: string
};

export type QuantizeTool = { binary: string, key: string, source: "cache" | "built", seconds: number };

type Log = (msg: string) => void;

export function quantizeToolInputs(): QuantizeToolInputs {
    let inputs: ReturnType<typeof computeBuildInputs>;
    try {
        inputs = computeBuildInputs(false);
    } catch (err) {
        // node-llama-cpp is not installed: its version names the llama.cpp release the tool is built from
        throw new ModelPullError("TOOL_BUILD_FAILED", `cannot tell which llama.cpp to build llama-quantize from: ${errorMessage(err)}`);
    }
    const { nodeLlamaCppVersion, platform, arch, cpuFlags, compiler } = inputs;
    return { tool: "llama-quantize", recipe: quantizeToolRecipe, nodeLlamaCppVersion, platform, arch, cpuFlags, compiler };
}

export function quantizeToolKey(inputs: QuantizeToolInputs = quantizeToolInputs()): string {
    return createHash("sha256").update(JSON.stringify(inputs)).digest("hex").slice(0, 24);
}

function toolCacheEntry(key: string): string {
    return path.join(buildCacheDir(), "tools", `llama-quantize-${key}`);
}

/** The cached binary for this machine, or null when it has not been built yet. */
export function cachedQuantizeTool(key: string = quantizeToolKey()): string | null {
    const binary = path.join(toolCacheEntry(key), "llama-quantize");
    return fs.existsSync(binary) && fs.existsSync(path.join(toolCacheEntry(key), "manifest.json")) ? binary : null;
}

function toolBuildError(message: string, logFile: string): ModelPullError {
    return new ModelPullError("TOOL_BUILD_FAILED", describeLoggedFailure(message, logFile));
}

/** The cached llama-quantize for this machine, built first when there is none (a few minutes on 2 cores). */
export async function ensureQuantizeTool(log: Log): Promise<QuantizeTool> {
    const started = Date.now();
    const inputs = quantizeToolInputs();
    const key = quantizeToolKey(inputs);
    const cached = cachedQuantizeTool(key);
    if (cached != null)
        return { binary: cached, key, source: "cache", seconds: (Date.now() - started) / 1000 };

    fs.mkdirSync(workDir, { recursive: true });
    const logFile = path.join(workDir, "llama-quantize-build.log");
    fs.writeFileSync(logFile, "");
    for (const cmd of ["git", "cmake"])
        if (!commandExists(cmd))
            throw new ModelPullError("TOOL_BUILD_FAILED", `${cmd} is required to build llama-quantize (Debian: apt-get install ${cmd})`);

    const tree = path.join(workDir, `llama-quantize-${key}`);
    const src = path.join(tree, "llama.cpp");
    const build = path.join(tree, "build");
    log(`building llama-quantize ${key} from the bundled llama.cpp (a few minutes on 2 cores); output in ${logFile}`);
    try {
        fs.mkdirSync(tree, { recursive: true });
        cloneBundledLlamaCpp(src);
    } catch (err) {
        throw toolBuildError(`cannot clone the bundled llama.cpp: ${errorMessage(err)}`, logFile);
    }

    const options: Record<string, string> = {
        CMAKE_BUILD_TYPE: "Release",
        BUILD_SHARED_LIBS: "OFF",
        GGML_NATIVE: "ON",
        LLAMA_BUILD_TOOLS: "ON",
        LLAMA_BUILD_TESTS: "OFF",
        LLAMA_BUILD_EXAMPLES: "OFF",
        LLAMA_BUILD_SERVER: "OFF",
        LLAMA_BUILD_APP: "OFF",
        LLAMA_CURL: "OFF",
        LLAMA_OPENSSL: "OFF"
    };
    // the same base for every clone of this key, so that ccache serves a rebuild
    const env = { ...process.env, CCACHE_BASEDIR: tree };
    const configure = await runLogged("cmake", cmakeConfigureArgs(src, build, options), { cwd: tree, env, logFile });
    if (configure !== 0)
        throw toolBuildError(`cmake configure failed (exit code ${configure})`, logFile);
    const jobs = String(Math.max(1, Math.min(os.availableParallelism(), 2)));
    const compiled = await runLogged("cmake", ["--build", build, "--target", "llama-quantize", "-j", jobs],
        { cwd: tree, env, logFile, onLine: progressPrinter("llama-quantize build", log) });
    if (compiled !== 0)
        throw toolBuildError(`building llama-quantize failed (exit code ${compiled})`, logFile);

    const binary = path.join(build, "bin", "llama-quantize");
    const probe = spawnSync(binary, ["--help"], { encoding: "utf8" });
    if (!`${probe.stdout}${probe.stderr}`.includes("usage:"))
        throw toolBuildError(`the built ${binary} does not run (${probe.error?.message ?? `exit code ${probe.status}`})`, logFile);

    const entry = toolCacheEntry(key);
    const tmp = `${entry}.tmp-${process.pid}`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true });
    fs.copyFileSync(binary, path.join(tmp, "llama-quantize"));
    fs.chmodSync(path.join(tmp, "llama-quantize"), 0o755);
    fs.writeFileSync(path.join(tmp, "manifest.json"), JSON.stringify({
        key, inputs, cmakeOptions: options, builtAt: new Date().toISOString()
    }, null, 4) + "\n");
    fs.rmSync(entry, { recursive: true, force: true });
    fs.renameSync(tmp, entry);
    // the clone and the objects are a few hundred MB; ccache keeps what a rebuild needs
    fs.rmSync(tree, { recursive: true, force: true });
    const seconds = (Date.now() - started) / 1000;
    log(`built llama-quantize in ${seconds.toFixed(0)} s and cached it in ${entry}`);
    return { binary: path.join(entry, "llama-quantize"), key, source: "built", seconds };
}

/**
 * Writes `src` converted to `outputType` into `dst` with llama-quantize. --allow-requantize lets it take
 * quantized tensors: it dequantizes each to F32 and rounds that to the output type (for F16 output an exact
 * copy of the Q4_1 values up to F16 rounding).
 */
export async function convertGguf(tool: string, src: string, dst: string, outputType: string, logFile: string): Promise<void> {
    fs.writeFileSync(logFile, "");
    const threads = String(os.availableParallelism());
    const code = await runLogged(tool, ["--allow-requantize", src, dst, outputType, threads], { cwd: path.dirname(dst), logFile });
    if (code !== 0)
        throw new ModelPullError("CONVERSION_FAILED", describeLoggedFailure(`llama-quantize ${outputType} of ${src} failed (exit code ${code})`, logFile));
}
