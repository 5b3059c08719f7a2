import * as fs from "node:fs";
import * as path from "node:path";
import { repoRoot } from "../../scripts/lib/paths.js";

export class ModelPathError extends Error {
    readonly code = "MODEL_NOT_FOUND";
    constructor(message: string) {
        super(message);
        this.name = "ModelPathError";
    }
}

/** ../shared beside the repository: where the project's test models and corpus live. */
export const sharedDir = path.resolve(process.env.KEEPKV_SHARED_DIR ?? path.join(repoRoot, "..", "shared"));

/** The default model: stories3M from ../shared, or KEEPKV_MODEL. */
export function defaultModelPath(): string {
    return path.resolve(process.env.KEEPKV_MODEL ?? path.join(sharedDir, "models", "stories3M-q8_0.gguf"));
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
