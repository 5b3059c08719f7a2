// Looks at a model file without loading it: is it a GGUF, is it complete, which architecture and context,
// and can KeepKV compress its cache. The header is read by a bounded reader in a worker thread
// (gguf-inspector.ts), so a hostile file costs that worker, not the server. The server runs this before
// handing a file to the engine, so a bad file is refused with a reason instead of reaching llama.cpp.
import * as fs from "node:fs";
import * as path from "node:path";
import * as nodeLlamaCpp from "node-llama-cpp";
import type { ModelFileErrorCode } from "../protocol/model-file-errors.js";
import { quote, type GgufHeader, type GgufScalar, type GgufValue } from "./gguf-header.js";
import { GgufInspector, type HeaderReport } from "./gguf-inspector.js";

/** What the memory estimate needs from the header (supervisor/memory-estimate.ts). */
export type ModelShape = {
    embeddingLength: number | null,
    blockCount: number | null,
    /** the largest, when the header gives one per layer */
    headCount: number | null,
    headCountKv: number | null,
    keyLength: number | null,
    valueLength: number | null,
    vocabularySize: number | null
};

export type ModelInspection = {
    /** file name: the model id in the API */
    id: string,
    path: string,
    sizeBytes: number,
    modifiedMs: number,
    valid: boolean,
    /** why the file cannot be used (when valid is false) */
    error: string | null,
    /** the stable code of that reason (server/protocol/model-file-errors.ts) */
    errorCode: ModelFileErrorCode | null,
    architecture: string | null,
    name: string | null,
    contextLength: number | null,
    parameters: number | null,
    fileType: string | null,
    hasChatTemplate: boolean,
    keepKvSupported: boolean,
    /** why KeepKV cannot compress this model's cache (when keepKvSupported is false) */
    keepKvReason: string | null,
    shape: ModelShape | null
};

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

type Base = Pick<ModelInspection, "id" | "path" | "sizeBytes" | "modifiedMs">;
type Described = Omit<ModelInspection, "valid" | "error" | "errorCode" | "keepKvSupported" | "keepKvReason">;

function described(base: Base): Described {
    return { ...base, architecture: null, name: null, contextLength: null, parameters: null, fileType: null, hasChatTemplate: false, shape: null };
}

function invalid(what: Described, code: ModelFileErrorCode, error: string): ModelInspection {
    return { ...what, valid: false, error, errorCode: code, keepKvSupported: false, keepKvReason: "the file is not a usable model" };
}

/**
 * An invalid entry for a file refused before its header is read (a link to outside the models folder): its
 * size and time are the link's own, so that nothing of the file it points to is told.
 */
export function refusedModelFile(file: string, code: ModelFileErrorCode, error: string): ModelInspection {
    const resolved = path.resolve(file);
    let stat: fs.Stats | null = null;
    try {
        stat = fs.lstatSync(resolved);
    } catch {
        stat = null;
    }
    return invalid(described({ id: path.basename(resolved), path: resolved, sizeBytes: stat?.size ?? 0, modifiedMs: stat?.mtimeMs ?? 0 }), code, error);
}

function scalar(meta: Map<string, GgufValue>, key: string): GgufScalar | null {
    const v = meta.get(key);
    return v?.kind === "scalar" ? v.value : null;
}

function num(meta: Map<string, GgufValue>, key: string): number | null {
    const v = scalar(meta, key);
    return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** A number, or the largest of a numeric array (per-layer head counts). */
function maxNum(meta: Map<string, GgufValue>, key: string): number | null {
    const v = meta.get(key);
    if (v?.kind === "array" && v.values != null && v.values.length > 0) {
        const numbers = v.values.filter((x): x is number => typeof x === "number" && Number.isFinite(x));
        return numbers.length > 0 ? Math.max(...numbers) : null;
    }
    return num(meta, key);
}

function str(meta: Map<string, GgufValue>, key: string): string | null {
    const v = scalar(meta, key);
    return typeof v === "string" ? v : null;
}

function fromHeader(base: Base, header: GgufHeader): ModelInspection {
    const meta = header.metadata;
    const architecture = str(meta, "general.architecture");
    const arch = architecture ?? "";
    const fileType = scalar(meta, "general.file_type");
    const tokens = meta.get("tokenizer.ggml.tokens");
    const what: Described = {
        ...base,
        architecture,
        name: str(meta, "general.name"),
        contextLength: num(meta, `${arch}.context_length`),
        fileType: fileType != null ? String(fileType) : null,
        hasChatTemplate: typeof scalar(meta, "tokenizer.chat_template") === "string" || meta.get("tokenizer.chat_template")?.kind === "long-string",
        parameters: header.parameters,
        shape: {
            embeddingLength: num(meta, `${arch}.embedding_length`),
            blockCount: num(meta, `${arch}.block_count`),
            headCount: maxNum(meta, `${arch}.attention.head_count`),
            headCountKv: maxNum(meta, `${arch}.attention.head_count_kv`),
            keyLength: num(meta, `${arch}.attention.key_length`),
            valueLength: num(meta, `${arch}.attention.value_length`),
            vocabularySize: tokens?.kind === "array" ? tokens.length : null
        }
    };
    if (architecture == null)
        return invalid(what, "no_architecture", "the GGUF metadata has no general.architecture");
    if (!knownArchitectures.has(architecture))
        return invalid(what, "unsupported_architecture", `unsupported architecture ${quote(architecture)} (not known to this llama.cpp)`);
    if (header.tensorCount === 0)
        return invalid(what, "no_tensors", "the file has no tensors (a vocabulary-only GGUF?)");

    // a GGUF that sets {arch}.attention.sliding_window (gemma2/3, cohere2, olmo2...) makes llama.cpp keep only
    // the last window in its sliding-window layers' cache, and the patched llama.cpp refuses KeepKV there; said
    // here so that the server refuses up front (exit code 2, or a refused switch) instead of failing in the engine
    const slidingWindow = maxNum(meta, `${architecture}.attention.sliding_window`);
    const swa = slidingWindow != null && slidingWindow > 0;
    const noKv = noKvCacheArchitectures.has(architecture);
    return {
        ...what,
        valid: true,
        error: null,
        errorCode: null,
        keepKvSupported: !noKv && !swa,
        keepKvReason: noKv ? `"${architecture}" has no attention KV cache to compress`
            : swa ? `"${architecture}" uses sliding-window attention (a ${slidingWindow}-token window), which KeepKV does not support ` +
                "(it compresses a full attention cache); serve it with --policy off"
                : null
    };
}

function toInspection(file: string, stat: fs.Stats, report: HeaderReport): ModelInspection {
    // the reader's own fstat when it got that far (the file it read), else the stat that keyed the cache
    const known = report.ok || report.code !== "inspection_failed";
    const base: Base = { id: path.basename(file), path: file, sizeBytes: known ? report.size : stat.size, modifiedMs: known ? report.mtimeMs : stat.mtimeMs };
    if (!report.ok)
        return invalid(described(base), report.code, report.message);
    return fromHeader(base, report.header);
}

const inspector = new GgufInspector();

/** Inspections by path, valid while the file's device, inode, size and modification time stay the same. */
const cache = new Map<string, { key: string, inspection: Promise<ModelInspection> }>();
const maxCached = 4096;

export async function inspectModelFile(file: string): Promise<ModelInspection> {
    const resolved = path.resolve(file);
    let stat: fs.Stats;
    try {
        stat = fs.statSync(resolved);
    } catch (err) {
        cache.delete(resolved);
        return invalid(described({ id: path.basename(resolved), path: resolved, sizeBytes: 0, modifiedMs: 0 }),
            "unreadable", `cannot read the file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const key = `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeMs}`;
    const cached = cache.get(resolved);
    if (cached?.key === key) {
        // most recently used last: the first entry is the one to drop
        cache.delete(resolved);
        cache.set(resolved, cached);
        return await cached.inspection;
    }
    const inspection = inspector.read(resolved).then((report) => toInspection(resolved, stat, report));
    cache.delete(resolved);
    cache.set(resolved, { key, inspection });
    while (cache.size > maxCached)
        cache.delete(cache.keys().next().value!);
    return await inspection;
}

/** Stops the reader process (at shutdown; it would also exit on its own when the server's process ends). */
export function closeModelInspector(): void {
    inspector.close();
}
