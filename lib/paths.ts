import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { keepkvCacheDir } from "./cache-dir.js";

// dist/scripts/lib/paths.js or scripts/lib/paths.ts: the repository root is three or two levels up
function findRepoRoot(): string {
    let dir = path.dirname(fileURLToPath(import.meta.url));
    for (let i = 0; i < 6; i++) {
        if (fs.existsSync(path.join(dir, "package.json")) && fs.existsSync(path.join(dir, "patches")))
            return dir;
        dir = path.dirname(dir);
    }
    throw new Error("keepkv: cannot find the repository root (a folder with package.json and patches/)");
}

export const repoRoot = findRepoRoot();
export const patchesDir = path.join(repoRoot, "patches");
export const llamaPatchesDir = path.join(patchesDir, "llama.cpp");
export const nlcPatchesDir = path.join(patchesDir, "node-llama-cpp");
export const nlcPackageDir = path.join(repoRoot, "node_modules", "node-llama-cpp");
export const nlcLlamaDir = path.join(nlcPackageDir, "llama");
export const nlcLlamaCppDir = path.join(nlcLlamaDir, "llama.cpp");
export const nlcBundlePath = path.join(nlcLlamaDir, "gitRelease.bundle");
export const nlcLocalBuildsDir = path.join(nlcLlamaDir, "localBuilds");
export const buildManifestPath = path.join(nlcLlamaDir, "keepkv-build.json");
export const vanillaBuildManifestPath = path.join(nlcLlamaDir, "keepkv-vanilla-build.json");
export const workDir = path.join(repoRoot, ".work");

/** Where finished builds are cached, outside the repository so that a fresh clone finds them. */
export function buildCacheDir(): string {
    return keepkvCacheDir("builds", "KEEPKV_BUILD_CACHE");
}
