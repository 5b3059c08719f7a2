// Whether a model with its context fits in memory, decided before anything native runs. llama.cpp
// allocates the whole KV cache (and clears it, touching every page) when a context is created: a cache
// larger than the machine's free memory either fails to allocate or, worse, is granted by the kernel's
// overcommit and then gets the engine (or a bystander) killed by the OOM killer while it is cleared. So
// the server estimates what a start or a model switch needs from the GGUF header and refuses one that
// cannot fit, with the numbers and the options to change.
import * as fs from "node:fs";
import { inspectModelFile } from "../models/gguf-inspect.js";
import { readBuildManifest } from "../../lib/build-key.js";
import type { EngineModelSettings, KvCacheType } from "../protocol/engine-ipc.js";

/** bytes per element of the K/V cache types (block types: block bytes / block elements) */
const cacheTypeBytes: Record<KvCacheType, number> = {
    f32: 4, f16: 2, bf16: 2, q8_0: 34 / 32, q4_0: 18 / 32, q4_1: 20 / 32, q5_0: 22 / 32, q5_1: 24 / 32
};

export type MemoryEstimate = {
    /** the model file (weights are mapped from it) */
    weightsBytes: number,
    /** physical KV cells of the context, all sequences */
    kvCells: number,
    kvBytes: number,
    /** the largest compute buffers: attention scores of one batch over a full stream, and the logits */
    computeBytes: number,
    totalBytes: number,
    /** how the cells come about, for messages */
    cellsDoc: string
};

const pad = (n: number, to: number) => Math.ceil(n / to) * to;

/** Cells each sequence gets: its logical context, or with a KeepKV budget the budget. */
export function cellsPerSequence(settings: EngineModelSettings): { cells: number, doc: string, budgeted: boolean } {
    const policy = settings.keepKv.policy ?? "off";
    const budget = settings.keepKv.budget;
    if (policy !== "off" && budget != null) {
        const cells = budget <= 1 ? Math.floor(budget * settings.contextSize) : budget;
        return { cells, doc: `budget ${cells} cells`, budgeted: true };
    }
    return { cells: settings.contextSize, doc: `context ${settings.contextSize} cells`, budgeted: false };
}

/** What loading `settings.modelPath` with these settings needs; null when the header does not say. */
export async function estimateMemory(settings: EngineModelSettings): Promise<MemoryEstimate | null> {
    // the header as the bounded reader in its worker saw it: node-llama-cpp's reader trusts the counts
    const shape = (await inspectModelFile(settings.modelPath)).shape;
    const nEmbd = shape?.embeddingLength;
    const nLayer = shape?.blockCount;
    const nHead = shape?.headCount;
    if (shape == null || nEmbd == null || nLayer == null || nHead == null || nHead <= 0)
        return null;
    const nHeadKv = shape.headCountKv ?? nHead;
    const keyLength = shape.keyLength ?? nEmbd / nHead;
    const valueLength = shape.valueLength ?? nEmbd / nHead;
    const perCell = nLayer * nHeadKv * (keyLength * cacheTypeBytes[settings.cacheTypeK] + valueLength * cacheTypeBytes[settings.cacheTypeV]);

    const { cells, doc, budgeted } = cellsPerSequence(settings);
    // every sequence has its own stream; llama.cpp pads a full-size stream to 256 cells (a KeepKV
    // budget's stream is exactly the budget)
    const cellsPerStream = budgeted ? cells : pad(cells, 256);
    const kvCells = cellsPerStream * settings.sequences;
    const kvBytes = kvCells * perCell;
    const batch = Math.max(settings.batchSize, settings.sequences);
    const vocab = shape.vocabularySize ?? 32_000;
    // without flash attention the scores of a batch over a whole stream are materialized (f32)
    const scores = settings.flashAttention === "on" ? 0 : nHead * cellsPerStream * batch * 4;
    const computeBytes = scores + vocab * batch * 4;
    let weightsBytes = 0;
    try {
        weightsBytes = fs.statSync(settings.modelPath).size;
    } catch {
        weightsBytes = 0;
    }
    return {
        weightsBytes, kvCells, kvBytes, computeBytes,
        totalBytes: weightsBytes + kvBytes + computeBytes,
        cellsDoc: `${settings.sequences} sequences x ${doc}`
    };
}

function gpuOffload(settings: EngineModelSettings): boolean {
    try {
        const gpu = readBuildManifest()?.gpu ?? false;
        return gpu !== false && settings.gpuLayers !== 0;
    } catch {
        return false;
    }
}

/** Memory available now: MemAvailable, or less when a cgroup limit is closer. */
export function availableMemory(): number | null {
    let available: number | null = null;
    try {
        const meminfo = fs.readFileSync("/proc/meminfo", "utf8");
        const kb = /^MemAvailable:\s+(\d+) kB/m.exec(meminfo)?.[1];
        if (kb != null)
            available = Number(kb) * 1024;
    } catch {
        available = null;
    }
    // cgroup v2 (containers): the limit minus what the group uses
    try {
        const max = fs.readFileSync("/sys/fs/cgroup/memory.max", "utf8").trim();
        const current = Number(fs.readFileSync("/sys/fs/cgroup/memory.current", "utf8").trim());
        if (max !== "max" && Number.isFinite(Number(max)) && Number.isFinite(current)) {
            const room = Number(max) - current;
            available = available == null ? room : Math.min(available, room);
        }
    } catch {
        // no cgroup v2 memory controller
    }
    return available;
}

export const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(bytes < 2 ** 30 ? 3 : 1)} GiB`;

export type MemoryVerdict = { fits: true, estimate: MemoryEstimate | null } | { fits: false, estimate: MemoryEstimate, message: string };

/**
 * Whether the settings fit: within `limitBytes` (the memory-limit option, counting `inUseBytes` the
 * engine already holds) or, with no limit, within the memory available now.
 */
export async function checkMemory(settings: EngineModelSettings, limitBytes: number, inUseBytes = 0): Promise<MemoryVerdict> {
    const estimate = await estimateMemory(settings);
    if (estimate == null)
        return { fits: true, estimate: null };
    // with a GPU backend and layers offloaded, the KV cache lives in GPU memory, which this check does
    // not know: only an explicit memory-limit applies
    if (limitBytes <= 0 && gpuOffload(settings))
        return { fits: true, estimate };
    const room = limitBytes > 0 ? limitBytes - inUseBytes : availableMemory();
    if (room == null || estimate.totalBytes <= room)
        return { fits: true, estimate };
    const where = limitBytes > 0
        ? `memory-limit ${gib(limitBytes)}${inUseBytes > 0 ? ` (the engine already holds ${gib(inUseBytes)})` : ""}`
        : `${gib(room)} available`;
    return {
        fits: false,
        estimate,
        message: `needs about ${gib(estimate.totalBytes)} (KV cache ${gib(estimate.kvBytes)} for ${estimate.cellsDoc}, `
            + `compute buffers ${gib(estimate.computeBytes)}, weights ${gib(estimate.weightsBytes)}), more than the ${where}; `
            + "lower --sequences, --budget or --context-size, or use a smaller cache type"
    };
}
