// KeepKV check against llama.cpp directly (no Node.js), for machines where only a C++ toolchain and a GPU
// backend are available: equivalence with KeepKV off, the perturbation of one compression step for every
// policy, generation under a budget (one and four sequences), and decode speed. Prints one JSON object.
//
//   keepkv-check MODEL CORPUS [--fa on|off|both] [--quick]
#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static std::string g_log;

static void log_cb(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN || strstr(text, "graph splits") || strstr(text, "KeepKV")) {
        g_log += text;
    }
}

struct ctx_opts {
    bool     fa       = false;
    int      policy   = 0;
    int      variant  = 2;
    float    thold    = 0.8f;
    uint32_t budget   = 0;
    uint32_t recent   = 32;
    uint32_t n_ctx    = 512;
    uint32_t n_batch  = 512;
    uint32_t n_seq    = 1;
    ggml_type type_kv = GGML_TYPE_F16;
};

static llama_context * make_ctx(llama_model * model, const ctx_opts & o) {
    auto cp = llama_context_default_params();
    cp.n_ctx           = o.n_ctx*o.n_seq;
    cp.n_batch         = o.n_batch;
    cp.n_ubatch        = o.n_batch;
    cp.n_seq_max       = o.n_seq;
    cp.flash_attn_type = o.fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k          = o.type_kv;
    cp.type_v          = o.type_kv;
    cp.keepkv.policy    = (llama_keepkv_policy) o.policy;
    cp.keepkv.variant   = (llama_keepkv_variant) o.variant;
    cp.keepkv.sim_thold = o.thold;
    cp.keepkv.n_budget  = o.budget;
    cp.keepkv.n_recent  = o.recent;
    return llama_init_from_model(model, cp);
}

static int n_vocab_of(llama_model * model) {
    return llama_vocab_n_tokens(llama_model_get_vocab(model));
}

// decode tokens of one sequence from pos; logits of the last token
static std::vector<float> decode(llama_context * ctx, llama_model * model, llama_seq_id seq, llama_pos pos, const std::vector<llama_token> & toks) {
    llama_batch b = llama_batch_init(toks.size(), 0, 1);
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i] = toks[i]; b.pos[i] = pos + i; b.n_seq_id[i] = 1; b.seq_id[i][0] = seq; b.logits[i] = i + 1 == toks.size();
    }
    b.n_tokens = toks.size();
    const int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    if (rc != 0) {
        fprintf(stderr, "decode failed: %d\n", rc);
        exit(1);
    }
    const float * l = llama_get_logits_ith(ctx, -1);
    return std::vector<float>(l, l + n_vocab_of(model));
}

static void compare(const std::vector<float> & a, const std::vector<float> & b, double & max_abs, double & kl) {
    double ma = -1e30, mb = -1e30;
    for (size_t i = 0; i < a.size(); i++) { ma = std::max(ma, (double) a[i]); mb = std::max(mb, (double) b[i]); }
    double sa = 0, sb = 0;
    for (size_t i = 0; i < a.size(); i++) { sa += std::exp(a[i] - ma); sb += std::exp(b[i] - mb); }
    const double la = ma + std::log(sa), lb = mb + std::log(sb);
    max_abs = 0; kl = 0;
    for (size_t i = 0; i < a.size(); i++) {
        max_abs = std::max(max_abs, (double) std::fabs(a[i] - b[i]));
        const double pa = a[i] - la;
        kl += std::exp(pa)*(pa - (b[i] - lb));
    }
}

static int argmax(const std::vector<float> & l) {
    return (int) (std::max_element(l.begin(), l.end()) - l.begin());
}

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL CORPUS [--fa on|off|both] [--quick]\n", argv[0]);
        return 2;
    }
    std::vector<bool> fas = {false, true};
    bool quick = false;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--fa") && i + 1 < argc) {
            std::string v = argv[++i];
            fas = v == "on" ? std::vector<bool>{true} : v == "off" ? std::vector<bool>{false} : std::vector<bool>{false, true};
        } else if (!strcmp(argv[i], "--quick")) {
            quick = true;
        }
    }

    llama_log_set(log_cb, nullptr);
    llama_backend_init();
    auto mp = llama_model_default_params();
    mp.n_gpu_layers = 999;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    std::ifstream f(argv[2]);
    std::stringstream ss; ss << f.rdbuf();
    const std::string text = ss.str().substr(0, 20000);
    std::vector<llama_token> all(8000);
    const int n_all = llama_tokenize(llama_model_get_vocab(model), text.c_str(), text.size(), all.data(), all.size(), true, false);
    all.resize(std::max(0, n_all));

    printf("{\"model\":\"%s\",\"system\":\"%s\",\"results\":[\n", argv[1], llama_print_system_info());
    bool first = true;
    auto row = [&](const std::string & s) { printf("%s%s", first ? "" : ",\n", s.c_str()); first = false; fflush(stdout); };

    const std::vector<llama_token> prompt(all.begin(), all.begin() + 300);

    for (const bool fa : fas) {
        // 1. with all votes 1, keepkv computes what off computes
        {
            ctx_opts o; o.fa = fa;
            llama_context * c0 = make_ctx(model, o);
            auto l0 = decode(c0, model, 0, 0, prompt);
            llama_free(c0);
            o.policy = 4;
            llama_context * c1 = make_ctx(model, o);
            auto l1 = decode(c1, model, 0, 0, prompt);
            llama_free(c1);
            double ma, kl; compare(l0, l1, ma, kl);
            char buf[256]; snprintf(buf, sizeof buf, "{\"test\":\"equivalence\",\"fa\":%s,\"maxAbsLogitDiff\":%.3e}", fa ? "true" : "false", ma);
            row(buf);
        }

        // 2. one compression step, the same cells for every policy
        for (const ggml_type t : { GGML_TYPE_F16, GGML_TYPE_Q8_0 }) {
            if (t != GGML_TYPE_F16 && !fa) {
                continue;
            }
            std::vector<llama_pos> pos(75);
            {
                ctx_opts o; o.fa = fa; o.policy = 2; o.type_kv = t;
                llama_context * c = make_ctx(model, o);
                decode(c, model, 0, 0, prompt);
                llama_keepkv_select(c, 0, 75, pos.data(), 75);
                llama_free(c);
            }
            const struct { int policy; int variant; const char * name; } cases[] = {
                {2, 2, "evict"}, {3, 2, "merge-naive"}, {4, 0, "keepkv/paper"}, {4, 1, "keepkv/votes"}, {4, 2, "keepkv/key"},
            };
            for (const auto & cs : cases) {
                ctx_opts o; o.fa = fa; o.policy = cs.policy; o.variant = cs.variant; o.thold = 1e-6f; o.type_kv = t;
                llama_context * c = make_ctx(model, o);
                auto before = decode(c, model, 0, 0, prompt);
                const int removed = llama_keepkv_compress_pos(c, 0, pos.data(), pos.size());
                llama_memory_seq_rm(llama_get_memory(c), 0, prompt.size() - 1, -1);
                auto after = decode(c, model, 0, prompt.size() - 1, { prompt.back() });
                llama_free(c);
                double ma, kl; compare(before, after, ma, kl);
                char buf[320];
                snprintf(buf, sizeof buf, "{\"test\":\"perturbation\",\"fa\":%s,\"cache\":\"%s\",\"policy\":\"%s\",\"removed\":%d,\"maxAbsLogitDiff\":%.3e,\"kl\":%.3e}",
                        fa ? "true" : "false", ggml_type_name(t), cs.name, removed, ma, kl);
                row(buf);
            }
        }

        // 3. generation under a budget: one sequence, then four in the same batches
        for (const int n_seq : { 1, 4 }) {
            ctx_opts o; o.fa = fa; o.policy = 4; o.budget = 64; o.recent = 16; o.n_ctx = 2304; o.n_batch = 64; o.n_seq = n_seq;
            llama_context * c = make_ctx(model, o);
            const int n_gen = quick ? 300 : 2000;
            std::vector<std::vector<llama_token>> out(n_seq);
            std::vector<llama_pos> next(n_seq);
            std::vector<std::vector<float>> logits(n_seq);
            for (int s = 0; s < n_seq; s++) {
                std::vector<llama_token> p(all.begin() + s*50, all.begin() + s*50 + 40);
                logits[s] = decode(c, model, s, 0, p);
                next[s] = 40;
            }
            const double t0 = now_s();
            for (int step = 0; step < n_gen; step++) {
                llama_batch b = llama_batch_init(n_seq, 0, 1);
                for (int s = 0; s < n_seq; s++) {
                    const llama_token tok = argmax(logits[s]);
                    out[s].push_back(tok);
                    b.token[s] = tok; b.pos[s] = next[s]++; b.n_seq_id[s] = 1; b.seq_id[s][0] = s; b.logits[s] = 1;
                }
                b.n_tokens = n_seq;
                if (llama_decode(c, b) != 0) {
                    fprintf(stderr, "decode failed at step %d\n", step);
                    return 1;
                }
                for (int s = 0; s < n_seq; s++) {
                    const float * l = llama_get_logits_ith(c, s);
                    logits[s].assign(l, l + n_vocab_of(model));
                }
                llama_batch_free(b);
            }
            const double dt = now_s() - t0;
            llama_keepkv_seq_stats st;
            llama_keepkv_get_seq_stats(c, 0, &st);
            char buf[400];
            snprintf(buf, sizeof buf, "{\"test\":\"budget\",\"fa\":%s,\"sequences\":%d,\"tokens\":%d,\"tokensPerSecond\":%.1f,\"cells\":%d,\"capacity\":%d,\"compressions\":%lld,\"compressMs\":%.1f,\"merged\":%lld,\"evicted\":%lld}",
                    fa ? "true" : "false", n_seq, n_gen*n_seq, n_gen*n_seq/dt, st.n_cells, st.n_capacity, (long long) st.n_compress, st.t_compress_ms,
                    (long long) st.n_merged, (long long) st.n_evicted);
            row(buf);
            llama_free(c);
        }
    }

    printf("\n],\"log\":");
    // the log as a JSON string
    std::string esc = "\"";
    for (char ch : g_log) {
        if (ch == '"' || ch == '\\') { esc += '\\'; esc += ch; }
        else if (ch == '\n') { esc += "\\n"; }
        else if ((unsigned char) ch >= 0x20) { esc += ch; }
    }
    esc += "\"";
    printf("%s}\n", esc.c_str());

    llama_model_free(model);
    llama_backend_free();
    return 0;
}
