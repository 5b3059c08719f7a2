// Seeded generators of hostile GGUF headers, for test/e2e/gguf-hostile.test.ts: the headers of the real fixtures
// mutated (bytes flipped, counts, lengths, types and offsets set to extremes), cut short, given a wrong magic
// or version; and headers crafted from scratch with huge counts and lengths, bad and nested types, empty and
// duplicate keys, prototype names, bad tensor shapes, types and offsets. Reproducible: the same seed gives
// the same cases.
import * as fs from "node:fs";
import * as path from "node:path";
import { Rng } from "./fuzz.js";
import { bufferSource, readGgufHeader, type GgufErrorCode } from "../../server/models/gguf-header.js";

/** One generated file: its first bytes, and its size (the rest reads as zeros: a sparse file). */
export type GgufCase = {
    note: string,
    bytes: Buffer,
    size: number,
    /** the error codes this case may end with; null: it may also be a valid header */
    expect: readonly GgufErrorCode[] | null
};

type Field = { at: number, bytes: 4 | 8, kind: "count" | "length" | "type" | "dims" | "dim" | "offset" };

/** A real GGUF's header, with the place of every count, length, type and offset in it. */
export type Fixture = { name: string, header: Buffer, size: number, headerEnd: number, dataOffset: number, dataEnd: number, fields: Field[] };

/** Walks a valid GGUF (the fixtures) and records where its fields are. */
export function loadFixture(file: string): Fixture {
    const size = fs.statSync(file).size;
    const fd = fs.openSync(file, "r");
    const head = Buffer.alloc(Math.min(size, 4 << 20));
    fs.readSync(fd, head, 0, head.length, 0);
    fs.closeSync(fd);
    const fields: Field[] = [];
    let pos = 8;
    const u32 = (kind: Field["kind"] | null) => {
        if (kind != null)
            fields.push({ at: pos, bytes: 4, kind });
        pos += 4;
        return head.readUInt32LE(pos - 4);
    };
    const u64 = (kind: Field["kind"] | null) => {
        if (kind != null)
            fields.push({ at: pos, bytes: 8, kind });
        pos += 8;
        return Number(head.readBigUInt64LE(pos - 8));
    };
    const sizes = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
    const tensors = u64("count");
    const kvs = u64("count");
    for (let i = 0; i < kvs; i++) {
        const keyLength = u64("length");
        pos += keyLength;
        const type = u32("type");
        if (type === 9) {
            const element = u32("type");
            const n = u64("count");
            for (let j = 0; j < n; j++) {
                const length = element === 8 ? u64(j < 50 ? "length" : null) : sizes[element]!;
                pos += length;
            }
        } else if (type === 8) {
            const length = u64("length");
            pos += length;
        } else
            pos += sizes[type]!;
    }
    for (let i = 0; i < tensors; i++) {
        const nameLength = u64("length");
        pos += nameLength;
        const dims = u32("dims");
        for (let d = 0; d < dims; d++)
            u64("dim");
        u32("type");
        u64("offset");
    }
    const headerEnd = pos;
    const { dataOffset, dataEnd } = readGgufHeader(bufferSource(head, size));
    return { name: path.basename(file), header: head.subarray(0, Math.min(head.length, dataOffset + 64)), size, headerEnd, dataOffset, dataEnd, fields };
}

const huge64 = [2n ** 64n - 1n, 2n ** 63n, 2n ** 63n - 1n, 2n ** 48n, 2n ** 32n, 2n ** 32n - 1n, 2n ** 31n, 1n << 24n, (1n << 24n) + 1n, 65_536n, 65_537n];
const huge32 = [0xffffffff, 0x80000000, 0x7fffffff, 0x10000, 13, 9, 43, 64, 255];

function setField(buf: Buffer, field: Field, value: bigint): void {
    if (field.bytes === 8)
        buf.writeBigUInt64LE(BigInt.asUintN(64, value), field.at);
    else
        buf.writeUInt32LE(Number(BigInt.asUintN(32, value)), field.at);
}

/** A fixture's header with one to four mutations. */
function mutated(rng: Rng, fx: Fixture): GgufCase {
    const bytes = Buffer.from(fx.header);
    const notes: string[] = [];
    const n = 1 + rng.int(4);
    for (let i = 0; i < n; i++) {
        const field = rng.pick(fx.fields);
        switch (rng.int(6)) {
            case 0: {
                const at = rng.int(fx.headerEnd);
                bytes[at] = bytes[at]! ^ (1 << rng.int(8));
                notes.push(`bit flip at ${at}`);
                break;
            }
            case 1: {
                const at = rng.int(fx.headerEnd);
                bytes[at] = rng.pick([0, 0xff, 0x7f, 0x80, rng.int(256)]);
                notes.push(`byte ${at} set`);
                break;
            }
            case 2: {
                const value = field.bytes === 8 ? rng.pick(huge64) : BigInt(rng.pick(huge32));
                setField(bytes, field, value);
                notes.push(`${field.kind} at ${field.at} = ${value}`);
                break;
            }
            case 3: {
                // just past what the file can hold, or off by one
                const current = field.bytes === 8 ? bytes.readBigUInt64LE(field.at) : BigInt(bytes.readUInt32LE(field.at));
                const value = rng.pick([current + 1n, current - 1n, current * 2n, BigInt(fx.size - field.at), BigInt(fx.size), 0n]);
                setField(bytes, field, value);
                notes.push(`${field.kind} at ${field.at} = ${value}`);
                break;
            }
            case 4: {
                const types = fx.fields.filter((f) => f.kind === "type");
                const t = rng.pick(types);
                const value = rng.pick([9, 9, 8, 13, 0xffffffff, rng.int(13), rng.int(50)]);
                bytes.writeUInt32LE(value, t.at);
                notes.push(`type at ${t.at} = ${value}`);
                break;
            }
            default: {
                const at = rng.int(fx.headerEnd - 8);
                const count = 1 + rng.int(16);
                for (let j = 0; j < count && at + j < bytes.length; j++)
                    bytes[at + j] = rng.int(256);
                notes.push(`${count} random bytes at ${at}`);
            }
        }
    }
    return { note: `${fx.name} mutated: ${notes.join(", ")}`, bytes, size: fx.size, expect: null };
}

/** A fixture cut short: inside the header (truncated_header), or in its tensor data (truncated_data). */
function truncated(rng: Rng, fx: Fixture): GgufCase {
    if (rng.bool(0.7)) {
        // at least the magic: a shorter file is not a GGUF at all
        const cut = 4 + rng.int(fx.headerEnd - 4);
        return { note: `${fx.name} cut at ${cut} (header ends at ${fx.headerEnd})`, bytes: fx.header.subarray(0, cut), size: cut, expect: ["truncated_header"] };
    }
    const cut = fx.dataOffset + rng.int(fx.dataEnd - fx.dataOffset);
    return { note: `${fx.name} cut at ${cut} in the tensor data (${fx.dataEnd} bytes)`, bytes: fx.header, size: cut, expect: ["truncated_data"] };
}

function wrongMagicOrVersion(rng: Rng, fx: Fixture): GgufCase {
    const bytes = Buffer.from(fx.header);
    if (rng.bool()) {
        bytes.write(rng.pick(["GGUG", "gguf", "GGML", "\0\0\0\0", "FUGG", "GGJT"]), 0, "latin1");
        return { note: `${fx.name} with magic ${bytes.subarray(0, 4).toString("latin1")}`, bytes, size: fx.size, expect: ["not_gguf"] };
    }
    const version = rng.pick([0, 1, 4, 5, 0x03000000, 0x00010000, 0xffffffff]);
    bytes.writeUInt32LE(version, 4);
    return { note: `${fx.name} with version ${version}`, bytes, size: fx.size, expect: ["unsupported_version"] };
}

/** Builds GGUF bytes from parts. */
class Writer {
    private readonly parts: Buffer[] = [];
    length = 0;
    private push(b: Buffer): void {
        this.parts.push(b);
        this.length += b.length;
    }
    raw(b: Buffer | string): this {
        this.push(typeof b === "string" ? Buffer.from(b, "latin1") : b);
        return this;
    }
    u32(v: number): this {
        const b = Buffer.alloc(4);
        b.writeUInt32LE(v >>> 0);
        this.push(b);
        return this;
    }
    u64(v: bigint | number): this {
        const b = Buffer.alloc(8);
        b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)));
        this.push(b);
        return this;
    }
    /** a string; `declared` overrides its length field */
    str(s: string, declared?: bigint): this {
        const b = Buffer.from(s);
        return this.u64(declared ?? BigInt(b.length)).raw(b);
    }
    bytes(): Buffer {
        return Buffer.concat(this.parts);
    }
}

const keys = ["general.architecture", "general.name", "general.alignment", "general.file_type", "llama.context_length",
    "llama.embedding_length", "llama.attention.head_count", "tokenizer.ggml.tokens", "tokenizer.chat_template", "llama.attention.sliding_window",
    "__proto__", "constructor", "hasOwnProperty", "a", "\u0000", "é", "\ud83d\ude00"];

function scalarOf(w: Writer, rng: Rng, type: number): void {
    const sizes = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];
    if (type === 8)
        w.str(rng.pick(["llama", "gemma3", "zzzzz", "", "x".repeat(2000), "mamba"]));
    else
        w.raw(Buffer.from(Array.from({ length: sizes[type]! }, () => rng.pick([0, 1, 0xff, 0x7f, 0x80, rng.int(256)]))));
}

/** A header made up from scratch: a few keys and tensors, each of which may be hostile. */
function crafted(rng: Rng): GgufCase {
    const w = new Writer().raw("GGUF").u32(rng.bool(0.9) ? 3 : 2);
    const notes: string[] = [];
    const nKv = rng.int(7);
    const nTensors = rng.int(4);
    const declaredTensors = rng.bool(0.85) ? BigInt(nTensors) : rng.pick(huge64);
    const declaredKv = rng.bool(0.85) ? BigInt(nKv) : rng.pick(huge64);
    if (declaredTensors !== BigInt(nTensors) || declaredKv !== BigInt(nKv))
        notes.push(`declares ${declaredTensors} tensors and ${declaredKv} pairs`);
    w.u64(declaredTensors).u64(declaredKv);
    const used: string[] = [];
    for (let i = 0; i < nKv; i++) {
        let key = rng.bool(0.1) && used.length > 0 ? rng.pick(used) : rng.pick(keys);
        if (rng.bool(0.03))
            key = "";
        if (rng.bool(0.02))
            key = "k".repeat(70_000);
        used.push(key);
        w.str(key, rng.bool(0.05) ? rng.pick(huge64) : undefined);
        const type = rng.bool(0.9) ? rng.int(13) : rng.pick([13, 99, 0xffffffff]);
        if (key === "general.alignment" && rng.bool(0.5)) {
            w.u32(4).u32(rng.pick([0, 1, 3, 32, 64, 48, 0x80000000]));
            continue;
        }
        w.u32(type);
        if (type === 9) {
            const element = rng.bool(0.85) ? rng.int(13) : rng.pick([9, 13, 0xffffffff]);
            const count = rng.int(5);
            const declared = rng.bool(0.7) ? BigInt(count) : rng.pick(huge64);
            w.u32(element).u64(declared);
            notes.push(`"${key.slice(0, 20)}": array of ${declared} of type ${element}`);
            for (let j = 0; j < count; j++) {
                if (element === 9)
                    w.u32(rng.int(13)).u64(rng.pick([0n, 1n, ...huge64]));
                else if (element < 13)
                    scalarOf(w, rng, element);
            }
        } else if (type === 8) {
            const declared = rng.bool(0.15) ? rng.pick(huge64) : undefined;
            w.str(rng.pick(["llama", "gemma3", "zzzzz", "", "x".repeat(3000)]), declared);
            if (declared != null)
                notes.push(`"${key.slice(0, 20)}": string of ${declared} bytes`);
        } else if (type < 13)
            scalarOf(w, rng, type);
    }
    let offset = 0n;
    for (let i = 0; i < nTensors; i++) {
        const name = rng.bool(0.05) ? "t".repeat(64) : rng.bool(0.05) ? "same" : `t${i}`;
        w.str(name, rng.bool(0.03) ? rng.pick(huge64) : undefined);
        const nDims = rng.bool(0.9) ? 1 + rng.int(4) : rng.pick([0, 5, 0xffffffff]);
        w.u32(nDims);
        const dims: bigint[] = [];
        for (let d = 0; d < Math.min(nDims, 4); d++) {
            const dim = rng.bool(0.9) ? BigInt(32 * (1 + rng.int(4))) : rng.pick([0n, -1n, 2n ** 62n, 2n ** 63n - 1n, 3n]);
            dims.push(dim);
            w.u64(dim);
        }
        const type = rng.bool(0.8) ? 0 : rng.pick([1, 2, 4, 8, 31, 42, 43, 0xffffffff]);
        w.u32(type);
        const bytes = dims.reduce((a, d) => a * d, 1n) * 4n;
        w.u64(rng.bool(0.85) ? offset : rng.pick([offset + 1n, offset + 32n, ...huge64]));
        offset += (bytes + 31n) / 32n * 32n;
    }
    const header = w.bytes();
    // the tensor data: present (as sparse zeros), short, or missing
    const dataStart = Math.ceil(header.length / 32) * 32;
    // (a negative or absurd total, from a hostile shape, gets no data: files stay under 16 GiB, sparse)
    const full = dataStart + Number(offset < 0n || offset > 2n ** 34n ? 0n : offset);
    const size = rng.pick([full, full, header.length, Math.max(header.length, full - 1)]);
    return { note: `crafted (${nKv} pairs, ${nTensors} tensors${notes.length > 0 ? `; ${notes.join(", ")}` : ""})`, bytes: header, size, expect: null };
}

/** The shape of the finding: a tiny file whose one array declares a huge count, for each element type. */
function hugeArray(rng: Rng): GgufCase {
    const drawn = rng.int(13);
    const element = drawn === 9 ? 8 : drawn;
    const count = rng.pick(huge64);
    const w = new Writer().raw("GGUF").u32(3).u64(0).u64(1).str(rng.pick(keys)).u32(9).u32(element).u64(count);
    const bytes = w.bytes();
    return { note: `a ${bytes.length}-byte file, one array of ${count} of type ${element}`, bytes, size: bytes.length, expect: ["truncated_header", "header_limit"] };
}

/** Random bytes after a valid magic and version. */
function noise(rng: Rng): GgufCase {
    const length = rng.pick([0, 8, 24, 100, 1000, 5000]);
    const bytes = Buffer.concat([Buffer.from("GGUF"), Buffer.from([3, 0, 0, 0]), Buffer.from(Array.from({ length }, () => rng.int(256)))]);
    return { note: `magic, version 3, ${length} random bytes`, bytes, size: bytes.length, expect: null };
}

/** The n-th case of a run (cases depend only on the seed and their index). */
export function ggufCase(seed: number, n: number, fixtures: readonly Fixture[]): GgufCase {
    const rng = new Rng(seed * 1_000_003 + n);
    const fx = rng.pick(fixtures);
    const r = rng.int(20);
    if (r < 8)
        return mutated(rng, fx);
    if (r < 11)
        return truncated(rng, fx);
    if (r < 12)
        return wrongMagicOrVersion(rng, fx);
    if (r < 17)
        return crafted(rng);
    if (r < 19)
        return hugeArray(rng);
    return noise(rng);
}
