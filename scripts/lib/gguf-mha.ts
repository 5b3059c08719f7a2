// Makes a multi-head-attention copy of a grouped-query-attention llama GGUF: every KV head is repeated for
// each query head of its group, and head_count_kv is set to head_count. The copy computes exactly the same
// function as the original (the query heads of a group read identical copies of their K and V), but every
// KV head now serves one query head, which is what ZIP merging is exact for. Tests use it to check the
// exactness of the merge apart from the GQA question.
import * as fs from "node:fs";

const GGUF_MAGIC = 0x46554747; // "GGUF" little endian

enum ValueType {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8,
    ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12
}

const scalarSize: Record<number, number> = {
    [ValueType.UINT8]: 1, [ValueType.INT8]: 1, [ValueType.UINT16]: 2, [ValueType.INT16]: 2,
    [ValueType.UINT32]: 4, [ValueType.INT32]: 4, [ValueType.FLOAT32]: 4, [ValueType.BOOL]: 1,
    [ValueType.UINT64]: 8, [ValueType.INT64]: 8, [ValueType.FLOAT64]: 8
};

class Reader {
    pos = 0;
    constructor(readonly buf: Buffer) {}
    u32() { const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v; }
    u64() { const v = this.buf.readBigUInt64LE(this.pos); this.pos += 8; return Number(v); }
    str() { const n = this.u64(); const s = this.buf.toString("utf8", this.pos, this.pos + n); this.pos += n; return s; }
    skipValue(type: number): void {
        if (type === ValueType.STRING) {
            this.str();
        } else if (type === ValueType.ARRAY) {
            const elemType = this.u32();
            const n = this.u64();
            for (let i = 0; i < n; i++)
                this.skipValue(elemType);
        } else {
            const size = scalarSize[type];
            if (size == null)
                throw new Error(`GGUF: unknown value type ${type}`);
            this.pos += size;
        }
    }
}

type TensorInfo = { name: string, dims: number[], type: number, offset: number, infoStart: number, infoEnd: number };

export function makeMhaCopy(src: string, dst: string): { nHead: number, nHeadKv: number } {
    const buf = fs.readFileSync(src);
    const r = new Reader(buf);
    if (r.u32() !== GGUF_MAGIC)
        throw new Error(`${src} is not a GGUF file`);
    const version = r.u32();
    if (version < 2)
        throw new Error(`GGUF version ${version} is not supported`);
    const nTensors = r.u64();
    const nKv = r.u64();

    let arch = "";
    let alignment = 32;
    let nHead = 0;
    let nHeadKv = 0;
    let headCountKvValuePos = -1;

    for (let i = 0; i < nKv; i++) {
        const key = r.str();
        const type = r.u32();
        const valuePos = r.pos;
        if (key === "general.architecture" && type === ValueType.STRING)
            arch = r.str();
        else if (key === "general.alignment" && type === ValueType.UINT32)
            alignment = r.u32();
        else if (key.endsWith(".attention.head_count") && type === ValueType.UINT32)
            nHead = r.u32();
        else if (key.endsWith(".attention.head_count_kv") && type === ValueType.UINT32) {
            headCountKvValuePos = valuePos;
            nHeadKv = r.u32();
        } else
            r.skipValue(type);
    }
    if (arch !== "llama" || nHead === 0 || nHeadKv === 0 || headCountKvValuePos < 0)
        throw new Error(`${src}: expected a llama model with head_count and head_count_kv (got ${arch})`);
    if (nHead % nHeadKv !== 0)
        throw new Error(`${src}: head_count ${nHead} is not a multiple of head_count_kv ${nHeadKv}`);
    const rep = nHead / nHeadKv;

    const tensors: TensorInfo[] = [];
    for (let i = 0; i < nTensors; i++) {
        const infoStart = r.pos;
        const name = r.str();
        const nDims = r.u32();
        const dims: number[] = [];
        for (let d = 0; d < nDims; d++)
            dims.push(r.u64());
        const type = r.u32();
        const offset = r.u64();
        tensors.push({ name, dims, type, offset, infoStart, infoEnd: r.pos });
    }
    const headerEnd = r.pos;
    const dataStart = Math.ceil(headerEnd / alignment) * alignment;

    const sizes = tensors.map((t, i) => {
        const end = i + 1 < tensors.length ? tensors[i + 1]!.offset : buf.length - dataStart;
        return end - t.offset;
    });
    // tensors are stored in offset order by every writer we know; check instead of assuming
    for (let i = 1; i < tensors.length; i++)
        if (tensors[i]!.offset < tensors[i - 1]!.offset)
            throw new Error("GGUF: tensors are not stored in offset order");

    const pad = (n: number) => Math.ceil(n / alignment) * alignment;

    const newData: Buffer[] = [];
    const newDims: number[][] = [];
    let offset = 0;
    const newOffsets: number[] = [];
    tensors.forEach((t, i) => {
        let data = buf.subarray(dataStart + t.offset, dataStart + t.offset + sizes[i]!);
        let dims = t.dims;
        if (/attn_[kv]\.weight$/.test(t.name)) {
            // rows (dims[1]) are the output features: n_head_kv heads of head_dim rows each
            const rows = dims[1]!;
            const rowBytes = (data.length - (data.length % rows)) / rows;
            const headRows = rows / nHeadKv;
            const parts: Buffer[] = [];
            for (let g = 0; g < nHeadKv; g++)
                for (let j = 0; j < rep; j++)
                    parts.push(data.subarray(g * headRows * rowBytes, (g + 1) * headRows * rowBytes));
            data = Buffer.concat(parts);
            dims = [dims[0]!, rows * rep, ...dims.slice(2)];
        }
        newOffsets.push(offset);
        newData.push(data);
        newDims.push(dims);
        offset = pad(offset + data.length);
    });

    // header: copy the KV section with head_count_kv changed, then rewrite the tensor infos
    const kvSection = Buffer.from(buf.subarray(0, tensors[0]!.infoStart));
    kvSection.writeUInt32LE(nHead, headCountKvValuePos);

    const infos: Buffer[] = tensors.map((t, i) => {
        const name = Buffer.from(t.name, "utf8");
        const b = Buffer.alloc(8 + name.length + 4 + 8 * newDims[i]!.length + 4 + 8);
        let p = 0;
        b.writeBigUInt64LE(BigInt(name.length), p); p += 8;
        name.copy(b, p); p += name.length;
        b.writeUInt32LE(newDims[i]!.length, p); p += 4;
        for (const d of newDims[i]!) {
            b.writeBigUInt64LE(BigInt(d), p); p += 8;
        }
        b.writeUInt32LE(t.type, p); p += 4;
        b.writeBigUInt64LE(BigInt(newOffsets[i]!), p);
        return b;
    });

    const header = Buffer.concat([kvSection, ...infos]);
    const out: Buffer[] = [header, Buffer.alloc(pad(header.length) - header.length)];
    newData.forEach((d, i) => {
        out.push(d);
        const next = i + 1 < newData.length ? newOffsets[i + 1]! : pad(newOffsets[i]! + d.length);
        out.push(Buffer.alloc(next - newOffsets[i]! - d.length));
    });
    fs.writeFileSync(dst, Buffer.concat(out));
    return { nHead, nHeadKv };
}
