import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { buildManifestPath, llamaPatchesDir, nlcLocalBuildsDir, nlcPackageDir, nlcPatchesDir } from "./paths.js";

/** Bump when the build recipe itself changes in a way that changes the binary. */
export const buildRecipeVersion = 2; // 2: no AVX512-FP16 arithmetic (cpuCmakeOptions)

export type BuildGpu = false | "cuda" | "vulkan" | "metal";

export const buildGpuValues: readonly BuildGpu[] = [false, "cuda", "vulkan", "metal"];

export function parseBuildGpu(value: string | undefined): BuildGpu {
    if (value == null || value === "" || value === "false" || value === "cpu" || value === "off")
        return false;
    if (value === "cuda" || value === "vulkan" || value === "metal")
        return value;
    throw new Error(`invalid GPU option "${value}": use cpu, cuda, vulkan or metal`);
}

export type BuildInputs = {
    recipe: number,
    nodeLlamaCppVersion: string,
    gpu: BuildGpu,
    platform: string,
    arch: string,
    cpuFlags: string,
    compiler: string,
    nodeMajor: string,
    patches: { series: string, name: string, sha256: string }[],
    /** set for the unpatched baseline build */
    flavor?: "vanilla"
};

export type BuildManifest = {
    key: string,
    folderName: string,
    gpu: BuildGpu,
    cmakeOptions: Record<string, string>,
    builtAt: string,
    inputs: BuildInputs,
    /** sha256 of the binaries as built or restored (buildDigest): tells a development rebuild in place apart */
    digest?: string
};

/** A patch series is the sorted list of `NNNN-*.patch` files in one folder. */
export function listPatches(dir: string): string[] {
    if (!fs.existsSync(dir))
        return [];
    return fs.readdirSync(dir)
        .filter((name) => /^\d{4}-.*\.patch$/.test(name))
        .sort()
        .map((name) => path.join(dir, name));
}

function sha256(data: string | Buffer): string {
    return createHash("sha256").update(data).digest("hex");
}

/** The CPU's flags line of /proc/cpuinfo, or null where there is none (not Linux). */
function cpuFlagsLine(): string | null {
    try {
        const info = fs.readFileSync("/proc/cpuinfo", "utf8");
        return info.split("\n").find((l) => l.startsWith("flags") || l.startsWith("Features")) ?? null;
    } catch {
        return null;
    }
}

function cpuFlags(): string {
    // the build is for this CPU: a binary built elsewhere may not run here
    const line = cpuFlagsLine();
    return line != null ? sha256(line) : os.cpus()[0]?.model ?? "unknown";
}

// ggml's CMake options for x86 instruction sets, and the /proc/cpuinfo flags each needs
const x86Features: [string, string[]][] = [
    ["GGML_SSE42", ["sse4_2"]], ["GGML_F16C", ["f16c"]], ["GGML_FMA", ["fma"]], ["GGML_BMI2", ["bmi2"]],
    ["GGML_AVX", ["avx"]], ["GGML_AVX2", ["avx2"]], ["GGML_AVX_VNNI", ["avx_vnni"]],
    ["GGML_AVX512", ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"]],
    ["GGML_AVX512_VBMI", ["avx512vbmi"]], ["GGML_AVX512_VNNI", ["avx512_vnni"]], ["GGML_AVX512_BF16", ["avx512_bf16"]],
    ["GGML_AMX_TILE", ["amx_tile"]], ["GGML_AMX_INT8", ["amx_int8"]], ["GGML_AMX_BF16", ["amx_bf16"]]
];

/**
 * CMake options that pick the CPU's instruction sets, where -march=native (ggml's GGML_NATIVE, the default)
 * would be wrong for us: on an x86 CPU with AVX512-FP16, -march=native makes ggml add and multiply F16 vectors
 * in F16 (simd-mappings.h), so F16 dot products (F16 weights, attention over an F16 cache without flash
 * attention) keep about three significant digits. Measured on such a CPU (Xeon, stories3M): recomputing the last
 * token moved its logits by 0.43 where they move by 0 otherwise, and a vote of 2 differed from two copies of the
 * cell by 0.33 logits, which hides what KeepKV changes under rounding. There every instruction set ggml knows is
 * named from /proc/cpuinfo instead, which leaves FP16 arithmetic out (no ggml option turns it on), as
 * node-llama-cpp's prebuilt CPU variants do. Elsewhere: none (-march=native).
 */
export function cpuCmakeOptions(line = cpuFlagsLine(), arch: string = process.arch): Record<string, string> {
    if (arch !== "x64" || line == null)
        return {};
    const flags = new Set(line.split(/\s+/));
    if (!flags.has("avx512_fp16"))
        return {};
    const options: Record<string, string> = { GGML_NATIVE: "OFF" };
    for (const [option, needs] of x86Features)
        options[option] = needs.every((f) => flags.has(f)) ? "ON" : "OFF";
    return options;
}

function compilerVersion(): string {
    const res = spawnSync("c++", ["--version"], { encoding: "utf8" });
    return res.status === 0 ? res.stdout.split("\n")[0]!.trim() : "none";
}

export function nodeLlamaCppVersion(): string {
    const pkgPath = path.join(nlcPackageDir, "package.json");
    if (!fs.existsSync(pkgPath))
        throw new Error("node-llama-cpp is not installed: run `npm ci` first");
    return JSON.parse(fs.readFileSync(pkgPath, "utf8")).version as string;
}

export function computeBuildInputs(
    gpu: BuildGpu, dirs: { llama: string, nodeLlamaCpp: string } = { llama: llamaPatchesDir, nodeLlamaCpp: nlcPatchesDir }
): BuildInputs {
    const patches: BuildInputs["patches"] = [];
    for (const [series, dir] of [["llama.cpp", dirs.llama], ["node-llama-cpp", dirs.nodeLlamaCpp]] as const)
        for (const file of listPatches(dir))
            patches.push({ series, name: path.basename(file), sha256: sha256(fs.readFileSync(file)) });

    return {
        recipe: buildRecipeVersion,
        nodeLlamaCppVersion: nodeLlamaCppVersion(),
        gpu,
        platform: process.platform,
        arch: process.arch,
        cpuFlags: cpuFlags(),
        compiler: compilerVersion(),
        nodeMajor: process.versions.node.split(".")[0]!,
        patches
    };
}

/**
 * keepkv: llama.cpp with the patch series, what the product loads. vanilla: the same bundled llama.cpp and
 * node-llama-cpp addon without any of our patches, built with the same compiler, flags and ggml libraries:
 * the baseline that tells the patches' own cost and effect apart from the differences between this build and
 * node-llama-cpp's prebuilt binary (another compiler, CPU variants picked at run time).
 */
export type BuildFlavor = "keepkv" | "vanilla";

export function buildInputsOf(flavor: BuildFlavor, gpu: BuildGpu): BuildInputs {
    const inputs = computeBuildInputs(gpu);
    return flavor === "keepkv" ? inputs : { ...inputs, patches: [], flavor };
}

export function computeBuildKey(inputs: BuildInputs): string {
    return sha256(JSON.stringify(inputs)).slice(0, 24);
}

/**
 * A digest of the binaries of a local build (every file of its Release folder but node-llama-cpp's JSON
 * metadata), or null when the folder does not exist. scripts/dev-rebuild.sh rebuilds in place under the same
 * folder and key, so the key alone cannot tell its binaries from the ones npm run build:llama made.
 */
export function buildDigest(folderName: string): string | null {
    const dir = path.join(nlcLocalBuildsDir, folderName, "Release");
    if (!fs.existsSync(dir))
        return null;
    const hash = createHash("sha256");
    for (const name of fs.readdirSync(dir).sort()) {
        const file = path.join(dir, name);
        if (name.endsWith(".json") || !fs.statSync(file).isFile())
            continue;
        hash.update(name).update("\0").update(fs.readFileSync(file)).update("\0");
    }
    return hash.digest("hex");
}

export function readBuildManifest(manifestPath: string = buildManifestPath): BuildManifest | null {
    if (!fs.existsSync(manifestPath))
        return null;
    return JSON.parse(fs.readFileSync(manifestPath, "utf8")) as BuildManifest;
}
