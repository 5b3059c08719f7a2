// The folders keepkv keeps outside the repository (builds, models, generated texts), so that a fresh clone
// finds them: each movable by its own environment variable, else under $XDG_CACHE_HOME/keepkv or
// ~/.cache/keepkv.
import * as os from "node:os";
import * as path from "node:path";

export function keepkvCacheDir(name: string, envVar: string): string {
    const fromEnv = process.env[envVar];
    if (fromEnv != null && fromEnv !== "")
        return path.resolve(fromEnv);
    const xdg = process.env.XDG_CACHE_HOME;
    const base = xdg != null && xdg !== "" ? xdg : path.join(os.homedir(), ".cache");
    return path.join(base, "keepkv", name);
}
