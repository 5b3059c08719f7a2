import * as fs from "node:fs";
import * as path from "node:path";
import { cachedModelPath, defaultChatModelName } from "./models.js";
import { repoRoot } from "./paths.js";

export class ModelPathError extends Error {
    readonly code = "MODEL_NOT_FOUND";
    constructor(message: string) {
        super(message);
        this.name = "ModelPathError";
    }
}

/** ../shared beside the repository: where the project's test models and corpus live. */
export const sharedDir = path.resolve(process.env.KEEPKV_SHARED_DIR ?? path.join(repoRoot, "..", "shared"));

/**
 * The model the server serves by default: SmolLM2-135M-Instruct, as `npm run model:pull` caches it (the
 * server's `--model` / KEEPKV_MODEL choose another).
 */
export function defaultModelPath(): string {
    return cachedModelPath(defaultChatModelName);
}

/** stories3M from ../shared (or KEEPKV_TEST_MODEL): the fast model of the core tests and of their servers. */
export function testModelPath(): string {
    return path.resolve(process.env.KEEPKV_TEST_MODEL ?? path.join(sharedDir, "models", "stories3M-q8_0.gguf"));
}

/** The tiny smoke-test model. */
export function smokeModelPath(): string {
    return path.resolve(process.env.KEEPKV_SMOKE_MODEL ?? path.join(sharedDir, "models", "stories260K.gguf"));
}

/** Held-out text for perplexity and long prompts. */
export function corpusPath(): string {
    return path.resolve(process.env.KEEPKV_CORPUS ?? path.join(sharedDir, "corpus", "tinystories-val-dev.txt"));
}

/** Returns the path when the file exists, else throws an error that names the path and the variable to set. */
export function requireFile(file: string, what: string, envVar: string): string {
    if (!fs.existsSync(file))
        throw new ModelPathError(`${what} not found at ${file}. Put the file there or set ${envVar} to its path.`);
    return file;
}
