import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { keepkvCacheDir } from "./cache-dir.js";

// Where everything of the repository is. Computed from this module's own place, without touching the
// disk, so that importing it has no effect: it runs as dist/lib/paths.js, two folders below the root
// (the source, lib/paths.ts, one).
const here = path.dirname(fileURLToPath(import.meta.url));

export const repoRoot = import.meta.url.endsWith(".ts") ? path.dirname(here) : path.resolve(here, "..", "..");
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
