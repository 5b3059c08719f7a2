// Looks at a model file without loading it (node-llama-cpp's pure-JS GGUF reader, no native code): is it
// a GGUF, is it complete, which architecture and context, and can KeepKV compress its cache. The server
// runs this before handing a file to the engine, so a bad file is refused with a reason instead of
// reaching llama.cpp.
import * as fs from "node:fs";
import * as path from "node:path";
import * as nodeLlamaCpp from "node-llama-cpp";
import { GgmlType, readGgufFileInfo, type GgufTensorInfo } from "node-llama-cpp";

export type ModelInspection = {
    /** file name: the model id in the API */
    id: string,
    path: string,
    sizeBytes: number,
    modifiedMs: number,
    valid: boolean,
    /** why the file cannot be used (when valid is false) */
    error: string | null,
    architecture: string | null,
    name: string | null,
    contextLength: number | null,
    parameters: number | null,
    fileType: string | null,
    hasChatTemplate: boolean,
    keepKvSupported: boolean,
    /** why KeepKV cannot compress this model's cache (when keepKvSupported is false) */
    keepKvReason: string | null
};

/** [elements per block, bytes per block] of the ggml tensor types (ggml.c type_traits) */
const blockSizes: Partial<Record<GgmlType, [number, number]>> = {
    [GgmlType.F32]: [1, 4], [GgmlType.F16]: [1, 2], [GgmlType.BF16]: [1, 2], [GgmlType.F64]: [1, 8],
    [GgmlType.I8]: [1, 1], [GgmlType.I16]: [1, 2], [GgmlType.I32]: [1, 4], [GgmlType.I64]: [1, 8],
    [GgmlType.Q4_0]: [32, 18], [GgmlType.Q4_1]: [32, 20], [GgmlType.Q5_0]: [32, 22], [GgmlType.Q5_1]: [32, 24],
    [GgmlType.Q8_0]: [32, 34], [GgmlType.Q8_1]: [32, 36], [GgmlType.MXFP4]: [32, 17], [GgmlType.IQ4_NL]: [32, 18],
    [GgmlType.Q2_K]: [256, 84], [GgmlType.Q3_K]: [256, 110], [GgmlType.Q4_K]: [256, 144], [GgmlType.Q5_K]: [256, 176],
    [GgmlType.Q6_K]: [256, 210], [GgmlType.Q8_K]: [256, 292], [GgmlType.IQ2_XXS]: [256, 66], [GgmlType.IQ2_XS]: [256, 74],
    [GgmlType.IQ3_XXS]: [256, 98], [GgmlType.IQ1_S]: [256, 50], [GgmlType.IQ3_S]: [256, 110], [GgmlType.IQ2_S]: [256, 82],
    [GgmlType.IQ4_XS]: [256, 136], [GgmlType.IQ1_M]: [256, 56], [GgmlType.TQ1_0]: [256, 54], [GgmlType.TQ2_0]: [256, 66]
};

/** Bytes of a tensor's data, or null for a type this table does not know. */
function tensorBytes(tensor: GgufTensorInfo): number | null {
    const size = blockSizes[tensor.ggmlType];
    if (size == null)
        return null;
    const elements = tensor.dimensions.reduce<number>((acc, d) => acc * Number(d), 1);
    return Math.ceil(elements / size[0]) * size[1];
}

/**
 * Architectures whose cache is not a plain attention KV cache (recurrent state, or no causal cache):
 * KeepKV merges attention KV cells, so it has nothing to compress there.
 */
const noKvCacheArchitectures = new Set<string>([
    "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "bert", "nomic-bert", "nomic-bert-moe",
    "neo-bert", "jina-bert-v2", "t5", "t5encoder", "jamba", "falcon-h1", "granitehybrid", "plamo2", "lfm2",
    "nemotron_h", "qwen3next"
]);

// declared as a const enum, but node-llama-cpp exports it as an object at runtime
const knownArchitectures = new Set<string>(Object.values(
    (nodeLlamaCpp as unknown as { GgufArchitectureType: Record<string, string> }).GgufArchitectureType));

function invalid(base: Omit<ModelInspection, "valid" | "error" | "keepKvSupported" | "keepKvReason">, error: string): ModelInspection {
    return { ...base, valid: false, error, keepKvSupported: false, keepKvReason: "the file is not a usable model" };
}

export async function inspectModelFile(file: string): Promise<ModelInspection> {
    const resolved = path.resolve(file);
    const base = {
        id: path.basename(resolved), path: resolved, sizeBytes: 0, modifiedMs: 0, architecture: null, name: null,
        contextLength: null, parameters: null, fileType: null, hasChatTemplate: false
    };
    let stat: fs.Stats;
    try {
        stat = fs.statSync(resolved);
    } catch (err) {
        return invalid(base, `cannot read the file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    base.sizeBytes = stat.size;
    base.modifiedMs = stat.mtimeMs;
    if (!stat.isFile())
        return invalid(base, "not a regular file");

    const fd = fs.openSync(resolved, "r");
    const magic = Buffer.alloc(4);
    try {
        fs.readSync(fd, magic, 0, 4, 0);
    } finally {
        fs.closeSync(fd);
    }
    if (magic.toString("latin1") !== "GGUF")
        return invalid(base, "not a GGUF file (the file does not start with the GGUF magic bytes)");

    let info;
    try {
        info = await readGgufFileInfo(resolved, { logWarnings: false, spliceSplitFiles: false, sourceType: "filesystem" });
    } catch (err) {
        return invalid(base, `invalid GGUF header (truncated or corrupt): ${(err as Error).message}`);
    }
    // node-llama-cpp's reader does not notice the end of the file: a header cut short parses into
    // partial or empty metadata instead of failing, so check that the header fits in the file
    const headerBytes = info.metadataSize + (info.tensorInfoSize ?? 0);
    if (headerBytes > stat.size)
        return invalid(base, `invalid GGUF header (truncated or corrupt): the header needs ${headerBytes} bytes, the file has ${stat.size}`);
    const general = info.metadata?.general;
    const architecture = typeof general?.architecture === "string" ? general.architecture : null;
    const archMeta = info.architectureMetadata as { context_length?: number, attention?: { sliding_window?: number } } | undefined;
    const withMeta = {
        ...base,
        architecture,
        name: typeof general?.name === "string" ? general.name : null,
        contextLength: typeof archMeta?.context_length === "number" ? archMeta.context_length : null,
        fileType: general?.file_type != null ? String(general.file_type) : null,
        hasChatTemplate: typeof info.metadata?.tokenizer?.chat_template === "string",
        parameters: (info.tensorInfo ?? []).reduce((acc, t) => acc + t.dimensions.reduce<number>((a, d) => a * Number(d), 1), 0)
    };
    if (architecture == null)
        return invalid(withMeta, "the GGUF metadata has no general.architecture");
    if (!knownArchitectures.has(architecture))
        return invalid(withMeta, `unsupported architecture "${architecture}" (not known to this llama.cpp)`);
    const tensors = info.tensorInfo ?? [];
    if (tensors.length === 0)
        return invalid(withMeta, "the file has no tensors (a vocabulary-only GGUF?)");

    // the data of every tensor must be inside the file: a truncated download fails here
    let end = 0;
    for (const tensor of tensors) {
        const bytes = tensorBytes(tensor) ?? 1;
        end = Math.max(end, Number(tensor.fileOffset) + bytes);
    }
    if (end > stat.size)
        return invalid(withMeta, `truncated: the tensors need ${end} bytes, the file has ${stat.size}`);

    // a GGUF that sets {arch}.attention.sliding_window (gemma2/3, cohere2, olmo2...) makes llama.cpp keep only
    // the last window in its sliding-window layers' cache, and the patched llama.cpp refuses KeepKV there; said
    // here so that the server refuses up front (exit code 2, or a refused switch) instead of failing in the engine
    const slidingWindow = archMeta?.attention?.sliding_window;
    const swa = typeof slidingWindow === "number" && slidingWindow > 0;
    const noKv = noKvCacheArchitectures.has(architecture);
    return {
        ...withMeta,
        valid: true,
        error: null,
        keepKvSupported: !noKv && !swa,
        keepKvReason: noKv ? `"${architecture}" has no attention KV cache to compress`
            : swa ? `"${architecture}" uses sliding-window attention (a ${slidingWindow}-token window), which KeepKV does not support ` +
                "(it compresses a full attention cache); serve it with --policy off"
                : null
    };
}
