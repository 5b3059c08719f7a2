# A llama GGUF with random weights and chosen attention shapes (head size 128 by default), with the vocabulary
# of an existing model: CUDA's flash attention does not take stories3M's head size of 32, this model it does.
#   python3 make-test-model.py SRC.gguf DST.gguf [--head-dim 128] [--heads 4] [--kv-heads 4] [--layers 2]
import argparse, sys, numpy as np
sys.path.insert(0, sys.argv[-1]) if False else None

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src"); ap.add_argument("dst")
    ap.add_argument("--gguf-py", required=True)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ff", type=int, default=1024)
    a = ap.parse_args()
    sys.path.insert(0, a.gguf_py)
    import gguf
    r = gguf.GGUFReader(a.src)
    arch = "llama"
    n_embd = a.head_dim * a.heads
    n_vocab = int(r.fields[f"{arch}.vocab_size"].parts[-1][0]) if f"{arch}.vocab_size" in r.fields else len(r.fields["tokenizer.ggml.tokens"].data)
    override = {
        f"{arch}.block_count": a.layers, f"{arch}.embedding_length": n_embd, f"{arch}.feed_forward_length": a.ff,
        f"{arch}.attention.head_count": a.heads, f"{arch}.attention.head_count_kv": a.kv_heads,
        f"{arch}.rope.dimension_count": a.head_dim,
    }
    w = gguf.GGUFWriter(a.dst, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name in override:
            w.add_uint32(name, override[name]); continue
        t = field.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            et = field.types[1]
            if et == gguf.GGUFValueType.STRING:
                vals = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
            else:
                vals = [field.parts[i][0].item() for i in field.data]
            w.add_array(name, vals)
        elif t == gguf.GGUFValueType.STRING:
            w.add_string(name, bytes(field.parts[-1]).decode("utf-8"))
        else:
            w.add_key_value(name, field.parts[-1][0].item(), t)
    rng = np.random.default_rng(0)
    def rnd(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float16)
    w.add_tensor("token_embd.weight", rnd(n_vocab, n_embd, scale=1.0))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rnd(n_vocab, n_embd, scale=n_embd ** -0.5))
    for i in range(a.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rnd(n_embd, n_embd, scale=n_embd ** -0.5))
        w.add_tensor(p + "attn_k.weight", rnd(a.kv_heads * a.head_dim, n_embd, scale=n_embd ** -0.5))
        w.add_tensor(p + "attn_v.weight", rnd(a.kv_heads * a.head_dim, n_embd, scale=n_embd ** -0.5))
        w.add_tensor(p + "attn_output.weight", rnd(n_embd, n_embd, scale=n_embd ** -0.5))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rnd(a.ff, n_embd, scale=n_embd ** -0.5))
        w.add_tensor(p + "ffn_up.weight", rnd(a.ff, n_embd, scale=n_embd ** -0.5))
        w.add_tensor(p + "ffn_down.weight", rnd(n_embd, a.ff, scale=a.ff ** -0.5))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    print("wrote", a.dst, "embd", n_embd, "heads", a.heads, "kv heads", a.kv_heads, "head dim", a.head_dim)

main()
