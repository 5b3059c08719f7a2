// A GGUF header reader that trusts nothing in the file. Every count and length is checked against the
// bytes left in the file (and an absolute cap) before anything is read or allocated, so a 68-byte file
// that declares 2^48 strings fails at once instead of looping until memory runs out. It reads through
// one fixed window, keeps only small values (numbers, short strings, short numeric arrays) and for the
// rest only their type and length, and mirrors the checks of llama.cpp's gguf.cpp, so that a file it
// accepts is one llama.cpp parses. Pure and synchronous: the server runs it in a worker thread
// (gguf-inspector.ts); the fuzzer runs it in-process over buffers.
import * as fs from "node:fs";

/** Why a header was refused. Stable: listed in server/protocol/model-file-errors.ts. */
export type GgufErrorCode = "not_gguf" | "unsupported_version" | "truncated_header" | "corrupt_header" | "header_limit" | "truncated_data";

/** The only error the reader throws (anything else is a bug in the reader). */
export class GgufFormatError extends Error {
    constructor(readonly code: GgufErrorCode, message: string) {
        super(message);
        this.name = "GgufFormatError";
    }
}

/** Absolute caps, beyond what the file's size already bounds. Each is far above any real model's. */
export const ggufLimits = {
    /** key length (the GGUF specification's maximum) */
    maxKeyBytes: 65_535,
    /** key-value pairs (real models have under 100) */
    maxKeyValues: 65_536,
    /** elements of one array (the largest vocabularies have about 262 000 tokens) */
    maxArrayLength: 1 << 24,
    /** tensors (the largest models have about two thousand) */
    maxTensors: 65_536,
    /** strings kept as values; a longer one (a chat template) is kept as its length */
    maxKeptStringBytes: 1024,
    /** numeric arrays kept as values (per-layer head counts); a longer one is kept as its length */
    maxKeptArrayLength: 1024,
    /** keys and kept values together */
    maxKeptBytes: 16 * 2 ** 20,
    /** the read window: the only buffer the reader allocates */
    windowBytes: 1 << 20
} as const;

/** GGUF value types (gguf.h) */
export const enum GgufType {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8,
    ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12
}
const typeNames = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64"];
const typeBytes = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
const typeCount = 13;

/** A value as kept: numbers (bigint when a 64-bit one is not a safe integer), booleans, short strings, short numeric arrays. */
export type GgufScalar = number | bigint | boolean | string;
export type GgufValue =
    | { kind: "scalar", type: GgufType, value: GgufScalar }
    | { kind: "long-string", length: number }
    | { kind: "array", elementType: GgufType, length: number, values: GgufScalar[] | null };

export type GgufHeader = {
    version: number,
    /** the key-value pairs in file order (a Map: keys such as "__proto__" are plain keys) */
    metadata: Map<string, GgufValue>,
    alignment: number,
    tensorCount: number,
    /** elements in all tensors */
    parameters: number,
    /** where the tensor data starts (the header's end, aligned) */
    dataOffset: number,
    /** where the last tensor's data ends: at most the file's size */
    dataEnd: number
};

/** Where the reader gets its bytes: a file descriptor, or a buffer (the fuzzer). */
export interface ByteSource {
    readonly size: number;
    /** Copies up to `length` bytes at `position` into `into` at 0; returns how many. */
    read(into: Buffer, length: number, position: number): number;
}

export function fileSource(fd: number, size: number): ByteSource {
    return { size, read: (into, length, position) => fs.readSync(fd, into, 0, length, position) };
}

/** A buffer, followed by zeros up to `size` (a sparse file: a header without its gigabytes of weights). */
export function bufferSource(bytes: Buffer, size = bytes.length): ByteSource {
    return {
        size,
        read: (into, length, position) => {
            const n = Math.max(0, Math.min(length, size - position));
            const copied = position < bytes.length ? bytes.copy(into, 0, position, Math.min(bytes.length, position + n)) : 0;
            into.fill(0, copied, n);
            return n;
        }
    };
}

/**
 * ggml tensor types: [elements per block, bytes per block] (ggml.c type_traits of the bundled llama.cpp);
 * null for the ids whose support was removed (llama.cpp refuses them).
 */
const ggmlBlocks: readonly ([number, number] | null)[] = [
    [1, 4], [1, 2], [32, 18], [32, 20], null, null, [32, 22], [32, 24], [32, 34], [32, 36], // F32 F16 Q4_0 Q4_1 - - Q5_0 Q5_1 Q8_0 Q8_1
    [256, 84], [256, 110], [256, 144], [256, 176], [256, 210], [256, 292], // Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K
    [256, 66], [256, 74], [256, 98], [256, 50], [32, 18], [256, 110], [256, 82], [256, 136], // IQ2_XXS IQ2_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S IQ2_S IQ4_XS
    [1, 1], [1, 2], [1, 4], [1, 8], [1, 8], [256, 56], [1, 2], // I8 I16 I32 I64 F64 IQ1_M BF16
    null, null, null, [256, 54], [256, 66], null, null, null, // - - - TQ1_0 TQ2_0 - - -
    [32, 17], [64, 36], [128, 18], [64, 18] // MXFP4 NVFP4 Q1_0 Q2_0
];
const maxDims = 4; // GGML_MAX_DIMS
const maxTensorName = 64; // GGML_MAX_NAME, with its terminating zero
const int64Max = 2n ** 63n - 1n;

/** A key or name from the file, in a message: JSON-quoted (control characters escaped), at most 64 characters. */
export function quote(text: string): string {
    return JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}...` : text);
}

function fail(code: GgufErrorCode, message: string): never {
    throw new GgufFormatError(code, message);
}

function safeNumber(value: bigint): number | bigint {
    return value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(value) : value;
}

/** Reads forward through one window; every read is checked against the end of the file first. */
class BoundedReader {
    private readonly window: Buffer;
    private windowStart = 0;
    private windowEnd = 0;
    pos = 0;

    constructor(private readonly source: ByteSource) {
        this.window = Buffer.allocUnsafe(Math.min(ggufLimits.windowBytes, Math.max(64, source.size)));
    }

    get size(): number {
        return this.source.size;
    }

    get remaining(): number {
        return this.source.size - this.pos;
    }

    /** Fails unless `n` more bytes are in the file. */
    need(n: number | bigint, what: string): void {
        // a bigint beyond 2^53 converts inexactly, but still to more than any file's size
        if ((typeof n === "number" ? n : Number(n)) > this.remaining)
            fail("truncated_header", `${what} at byte ${this.pos} needs ${n} bytes, the file has ${this.source.size}`);
    }

    /** `n` bytes at the position, valid until the next read; n is at most the window. */
    private take(n: number, what: string): Buffer {
        this.need(n, what);
        if (this.pos < this.windowStart || this.pos + n > this.windowEnd) {
            const length = Math.min(this.window.length, this.source.size - this.pos);
            const got = this.source.read(this.window, length, this.pos);
            if (got < n)
                fail("truncated_header", `${what} at byte ${this.pos}: the file ended after ${got} of ${n} bytes`);
            this.windowStart = this.pos;
            this.windowEnd = this.pos + got;
        }
        const at = this.pos - this.windowStart;
        this.pos += n;
        return this.window.subarray(at, at + n);
    }

    skip(n: number | bigint, what: string): void {
        this.need(n, what);
        this.pos += Number(n);
    }

    u32(what: string): number {
        return this.take(4, what).readUInt32LE(0);
    }

    u64(what: string): bigint {
        return this.take(8, what).readBigUInt64LE(0);
    }

    i64(what: string): bigint {
        return this.take(8, what).readBigInt64LE(0);
    }

    bytes(n: number, what: string): Buffer {
        return this.take(n, what);
    }

    /** Skips `n` strings (a vocabulary: hundreds of thousands), each length checked; `what` is built only to fail. */
    skipStrings(n: number, what: () => string): void {
        for (let j = 0; j < n; j++) {
            if (this.remaining < 8)
                this.need(8, `the length of element ${j} of ${what()}`);
            const b = this.take(8, "");
            const length = b.readUInt32LE(4) * 4294967296 + b.readUInt32LE(0);
            if (length > this.remaining)
                this.need(length, `element ${j} of ${what()}`);
            this.pos += length;
        }
    }

    scalar(type: GgufType, what: string): GgufScalar {
        const b = this.take(typeBytes[type]!, what);
        switch (type) {
            case GgufType.UINT8: return b.readUInt8(0);
            case GgufType.INT8: return b.readInt8(0);
            case GgufType.UINT16: return b.readUInt16LE(0);
            case GgufType.INT16: return b.readInt16LE(0);
            case GgufType.UINT32: return b.readUInt32LE(0);
            case GgufType.INT32: return b.readInt32LE(0);
            case GgufType.FLOAT32: return b.readFloatLE(0);
            case GgufType.BOOL: return b.readUInt8(0) !== 0;
            case GgufType.UINT64: return safeNumber(b.readBigUInt64LE(0));
            case GgufType.INT64: return safeNumber(b.readBigInt64LE(0));
            default: return b.readDoubleLE(0);
        }
    }
}

const utf8 = new TextDecoder("utf-8", { fatal: false });

/** Reads a GGUF header (key-value pairs and tensor infos) and checks that the tensor data fits the file. */
export function readGgufHeader(source: ByteSource): GgufHeader {
    if (source.size < 4)
        fail("not_gguf", `not a GGUF file (${source.size} bytes, shorter than the GGUF magic)`);
    const r = new BoundedReader(source);
    const magic = r.bytes(4, "the magic");
    if (magic.toString("latin1") !== "GGUF")
        fail("not_gguf", "not a GGUF file (the file does not start with the GGUF magic bytes)");
    const version = r.u32("the version");
    if (version === 0 || (version & 0xffff) === 0)
        fail("unsupported_version", `unsupported GGUF version ${version}` + (version !== 0 ? " (a big-endian GGUF?)" : ""));
    if (version === 1)
        fail("unsupported_version", "GGUF version 1 is no longer supported by llama.cpp");
    if (version > 3)
        fail("unsupported_version", `unsupported GGUF version ${version} (llama.cpp reads versions 2 and 3)`);

    const tensorCount = r.u64("the tensor count");
    const kvCount = r.u64("the key-value count");
    // each count is checked against the bytes its smallest form takes, then against its cap: the smallest
    // key-value pair is a one-byte key (9), a type (4) and a one-byte value (1); the smallest tensor info
    // an empty name (8), no dimensions (4), a type (4) and an offset (8)
    r.need(kvCount * 14n + tensorCount * 24n, `${kvCount} key-value pairs and ${tensorCount} tensor infos`);
    if (kvCount > BigInt(ggufLimits.maxKeyValues))
        fail("header_limit", `the header declares ${kvCount} key-value pairs, more than the ${ggufLimits.maxKeyValues} allowed`);
    if (tensorCount > BigInt(ggufLimits.maxTensors))
        fail("header_limit", `the header declares ${tensorCount} tensors, more than the ${ggufLimits.maxTensors} allowed`);

    const metadata = new Map<string, GgufValue>();
    let kept = 0;
    const keep = (bytes: number, what: string) => {
        kept += bytes;
        if (kept > ggufLimits.maxKeptBytes)
            fail("header_limit", `${what}: the metadata's keys and short values exceed ${ggufLimits.maxKeptBytes} bytes`);
    };

    const readString = (what: string, maxKeep: number): string | number => {
        const length = r.u64(`the length of ${what}`);
        r.need(length, what);
        const n = Number(length);
        if (n > maxKeep) {
            r.skip(n, what);
            return n;
        }
        return utf8.decode(r.bytes(n, what));
    };

    for (let i = 0; i < Number(kvCount); i++) {
        const keyLength = r.u64(`the length of key ${i}`);
        r.need(keyLength, `key ${i}`);
        if (keyLength > BigInt(ggufLimits.maxKeyBytes))
            fail("header_limit", `key ${i} is ${keyLength} bytes long, more than the ${ggufLimits.maxKeyBytes} allowed`);
        if (keyLength === 0n)
            fail("corrupt_header", `key ${i} is empty`);
        const key = utf8.decode(r.bytes(Number(keyLength), `key ${i}`));
        keep(key.length, `key ${i}`);
        if (metadata.has(key))
            fail("corrupt_header", `duplicate key ${quote(key)}`);
        const type = r.u32(`the type of ${quote(key)}`) as GgufType;
        if (type >= typeCount)
            fail("corrupt_header", `${quote(key)} has an invalid GGUF type ${type}`);
        if (type === GgufType.ARRAY) {
            const elementType = r.u32(`the element type of ${quote(key)}`) as GgufType;
            if (elementType >= typeCount)
                fail("corrupt_header", `${quote(key)} is an array of an invalid GGUF type ${elementType}`);
            if (elementType === GgufType.ARRAY)
                fail("corrupt_header", `${quote(key)} is an array of arrays (llama.cpp refuses nested arrays)`);
            const length = r.u64(`the length of ${quote(key)}`);
            const what = `${quote(key)}, an array of ${length} ${typeNames[elementType]}s`;
            // strings take at least their 8-byte length each
            r.need(length * BigInt(elementType === GgufType.STRING ? 8 : typeBytes[elementType]!), what);
            if (length > BigInt(ggufLimits.maxArrayLength))
                fail("header_limit", `${what}: more than the ${ggufLimits.maxArrayLength} elements allowed`);
            const n = Number(length);
            if (elementType === GgufType.STRING) {
                r.skipStrings(n, () => what);
                metadata.set(key, { kind: "array", elementType, length: n, values: null });
            } else if (n <= ggufLimits.maxKeptArrayLength) {
                keep(n * 8, what);
                const values: GgufScalar[] = [];
                for (let j = 0; j < n; j++)
                    values.push(r.scalar(elementType, `element ${j} of ${what}`));
                metadata.set(key, { kind: "array", elementType, length: n, values });
            } else {
                r.skip(n * typeBytes[elementType]!, what);
                metadata.set(key, { kind: "array", elementType, length: n, values: null });
            }
        } else if (type === GgufType.STRING) {
            const value = readString(`the value of ${quote(key)}`, ggufLimits.maxKeptStringBytes);
            if (typeof value === "number")
                metadata.set(key, { kind: "long-string", length: value });
            else {
                keep(value.length, `the value of ${quote(key)}`);
                metadata.set(key, { kind: "scalar", type, value });
            }
        } else
            metadata.set(key, { kind: "scalar", type, value: r.scalar(type, `the value of ${quote(key)}`) });
    }

    const alignmentValue = metadata.get("general.alignment");
    let alignment = 32;
    if (alignmentValue != null) {
        if (alignmentValue.kind !== "scalar" || alignmentValue.type !== GgufType.UINT32)
            fail("corrupt_header", `general.alignment must be a uint32, it is ${alignmentValue.kind === "scalar" ? `a ${typeNames[alignmentValue.type]}` : `an ${alignmentValue.kind}`}`);
        alignment = alignmentValue.value as number;
        if (alignment === 0 || (alignment & (alignment - 1)) !== 0)
            fail("corrupt_header", `general.alignment ${alignment} is not a power of 2`);
    }

    // llama.cpp requires the tensors to follow each other in order, each padded to the alignment, so their
    // offsets are checked as they come (against the data section's start, which is known only at the end)
    const pad = (n: bigint) => (n + BigInt(alignment) - 1n) / BigInt(alignment) * BigInt(alignment);
    const names = new Set<string>();
    let parameters = 0;
    let expected = 0n;
    let lastEnd = 0n;
    for (let i = 0; i < Number(tensorCount); i++) {
        const nameLength = r.u64(`the name length of tensor ${i}`);
        if (nameLength >= BigInt(maxTensorName))
            fail("corrupt_header", `the name of tensor ${i} is ${nameLength} bytes long, llama.cpp allows at most ${maxTensorName - 1}`);
        const name = utf8.decode(r.bytes(Number(nameLength), `the name of tensor ${i}`));
        if (names.has(name))
            fail("corrupt_header", `duplicate tensor name ${quote(name)}`);
        names.add(name);
        const nDims = r.u32(`the dimension count of tensor ${quote(name)}`);
        if (nDims > maxDims)
            fail("corrupt_header", `tensor ${quote(name)} has ${nDims} dimensions, llama.cpp allows at most ${maxDims}`);
        const dims: bigint[] = [];
        for (let d = 0; d < nDims; d++) {
            const dim = r.i64(`dimension ${d} of tensor ${quote(name)}`);
            if (dim < 0n)
                fail("corrupt_header", `dimension ${d} of tensor ${quote(name)} is negative (${dim})`);
            dims.push(dim);
        }
        const elements = dims.reduce((a, d) => a * d, 1n);
        if (elements > int64Max)
            fail("corrupt_header", `tensor ${quote(name)} has ${elements} elements, more than a 64-bit count`);
        const ggmlType = r.u32(`the type of tensor ${quote(name)}`);
        const block = ggmlBlocks[ggmlType] ?? null;
        if (block == null)
            fail("corrupt_header", `tensor ${quote(name)} has an unknown or unsupported ggml type ${ggmlType}`);
        if ((dims[0] ?? 1n) % BigInt(block[0]) !== 0n)
            fail("corrupt_header", `tensor ${quote(name)} has ${dims[0] ?? 1n} elements per row, not a multiple of its type's block size ${block[0]}`);
        const offset = r.u64(`the data offset of tensor ${quote(name)}`);
        if (offset !== expected)
            fail("corrupt_header", `tensor ${quote(name)} has data offset ${offset}, expected ${expected}`);
        const bytes = elements / BigInt(block[0]) * BigInt(block[1]);
        lastEnd = offset + bytes;
        expected += pad(bytes);
        parameters += Number(elements);
    }

    const count = Number(tensorCount);
    const dataOffset = count > 0 ? pad(BigInt(r.pos)) : BigInt(r.pos);
    const dataEnd = dataOffset + lastEnd;
    if (dataEnd > BigInt(source.size))
        fail("truncated_data", `truncated: the tensors need ${dataEnd} bytes, the file has ${source.size}`);
    return {
        version, metadata, alignment, tensorCount: count, parameters,
        dataOffset: Number(dataOffset), dataEnd: Number(dataEnd)
    };
}
