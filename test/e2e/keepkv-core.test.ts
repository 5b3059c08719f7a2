// KeepKV in llama.cpp, against the real build and the real stories3M: equivalence with vanilla llama.cpp,
// zero perturbation of ZIP merging, the GQA head mapping of the votes, votes as copies, and bad input.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Llama, LlamaCompletion, LlamaContextOptions, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { allCases, measurePerturbation, PerturbationResult, promptTokens } from "../../bench/lib/perturbation.js";
import { makeMhaCopy } from "../../scripts/lib/gguf-mha.js";
import {
    cellPositions, compressSequence, createKeepKvContext, KeepKvError, keepKvSequenceStats, keepKvSettingsOf, resolveKeepKvSettings,
    setKeepKvCompression, setVote, type KeepKvOptions
} from "../../server/engine/keepkv.js";
import { loadPatchedLlama, loadVanillaLlama, loadVanillaLocalLlama } from "../../server/engine/llama-loader.js";
import { corpusPath, testModelPath, requireFile, sharedDir } from "../../lib/model-paths.js";
import { repoRoot } from "../../lib/paths.js";
import { maxAbsDiff, rawDecode } from "../../bench/lib/raw-decode.js";
import { claimSequence, copyCellsRaw, nativeKeepKvOf, nativeSequenceIdOf, removeCellsRaw } from "../../server/engine/native-context.js";

const f16ModelPath = () => requireFile(path.join(sharedDir, "models", "stories3M-f16.gguf"), "model", "KEEPKV_SHARED_DIR");

describe("KeepKV core", function () {
    let llama: Llama;
    let model: LlamaModel;
    let text: string;
    let tmp: string;

    before(async function () {
        llama = await loadPatchedLlama();
        model = await llama.loadModel({ modelPath: requireFile(testModelPath(), "model", "KEEPKV_TEST_MODEL") });
        text = fs.readFileSync(requireFile(corpusPath(), "corpus", "KEEPKV_CORPUS"), "utf8");
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-core-"));
    });

    after(async function () {
        await model?.dispose();
        await llama?.dispose();
        if (tmp != null)
            fs.rmSync(tmp, { recursive: true, force: true });
    });

    describe("with all votes 1 it is vanilla llama.cpp", function () {
        let vanilla: Llama;
        let vanillaModel: LlamaModel;
        let local: Llama;
        let localModel: LlamaModel;

        before(async function () {
            vanilla = await loadVanillaLlama();
            vanillaModel = await vanilla.loadModel({ modelPath: testModelPath() });
            local = await loadVanillaLocalLlama();
            localModel = await local.loadModel({ modelPath: testModelPath() });
        });
        after(async function () {
            await vanillaModel?.dispose();
            await vanilla?.dispose();
            await localModel?.dispose();
            await local?.dispose();
        });

        async function run(m: LlamaModel, policy: "off" | "keepkv" | null, flashAttention: boolean) {
            // one thread: on a busy 2-core machine two spinning ggml threads are many times slower
            const options = { contextSize: 512, batchSize: 512, flashAttention, threads: 1 };
            const context = policy == null
                ? await m.createContext(options)
                : await createKeepKvContext(m, { ...options, keepKv: { policy } });
            try {
                const sequence = context.getSequence();
                const tokens = promptTokens(m, text, 200);
                const out = await sequence.controlledEvaluate(tokens.map((t, i) =>
                    i === tokens.length - 1 ? [t, { generateNext: { probabilities: true, options: { temperature: 1 } } }] : t));
                const probabilities = out[out.length - 1]!.next.probabilities!;
                await sequence.clearHistory();
                const completion = new LlamaCompletion({ contextSequence: sequence });
                const generated = await completion.generateCompletion(m.detokenize(tokens.slice(0, 50)), { maxTokens: 200, temperature: 0 });
                return { probabilities, generated };
            } finally {
                await context.dispose();
            }
        }

        function maxLogProbDiff(a: Map<Token, number>, b: Map<Token, number>): number {
            let max = 0;
            for (const [token, p] of a) {
                const q = b.get(token) ?? 0;
                if (p > 1e-30 && q > 1e-30)
                    max = Math.max(max, Math.abs(Math.log(p) - Math.log(q)));
                else
                    assert.ok(p <= 1e-30 && q <= 1e-30, `token ${token}: ${p} vs ${q}`);
            }
            return max;
        }

        it("off and keepkv before any compression generate what the vanilla binary does (flash attention off)", async function () {
            const reference = await run(vanillaModel, null, false);
            for (const policy of ["off", "keepkv"] as const) {
                const ours = await run(model, policy, false);
                assert.equal(ours.generated, reference.generated, `${policy}: the same 200 greedy tokens`);
                // the vanilla binary only exposes probabilities: log-probabilities are the logits up to a constant
                // (measured here: 0)
                const diff = maxLogProbDiff(ours.probabilities, reference.probabilities);
                assert.ok(diff <= 1e-3, `${policy}: last-token log-probabilities within 1e-3 of vanilla, got ${diff}`);
            }
        });

        it("off and keepkv before any compression generate what vanilla llama.cpp does (flash attention on)", async function () {
            // against the same sources built here without our patches: the same 200 greedy tokens and logits
            const reference = await run(localModel, null, true);
            for (const policy of ["off", "keepkv"] as const) {
                const ours = await run(model, policy, true);
                assert.equal(ours.generated, reference.generated, `${policy}: the same 200 greedy tokens as the unpatched build`);
                const diff = maxLogProbDiff(ours.probabilities, reference.probabilities);
                assert.equal(diff, 0, `${policy}: the last-token log-probabilities of the unpatched build`);
            }
            // against node-llama-cpp's prebuilt binary, the prompt's logits (measured: 0). Its greedy text is not
            // compared token by token: CPU flash attention accumulates V in F16 when it decodes one token, and the
            // prebuilt binary picks a CPU variant at run time (e.g. zen4) whose F16 arithmetic rounds differently
            // from this machine's -march=native build, so on some CPUs the prebuilt text parts from any local
            // build's after a dozen tokens (measured on an AVX-512 EPYC: token 13, the unpatched build too)
            const prebuilt = await run(vanillaModel, null, true);
            const diff = maxLogProbDiff(reference.probabilities, prebuilt.probabilities);
            assert.ok(diff <= 1e-3, `last-token log-probabilities within 1e-3 of the prebuilt binary, got ${diff}`);
        });
    });

    describe("zero perturbation", function () {
        const byCase = (results: PerturbationResult[], policy: string, variant: string | null = null) =>
            results.find((r) => r.policy === policy && r.variant === variant)!;

        it("ZIP merging leaves the output unchanged where it can: one query head per KV head (f16 cache)", async function () {
            // the same model with every KV head repeated for each query head of its group: the same function,
            // but each KV head now serves one query, for which ZIP merging is exact
            const mhaPath = path.join(tmp, "stories3M-q8_0-mha.gguf");
            makeMhaCopy(testModelPath(), mhaPath);
            const mha = await llama.loadModel({ modelPath: mhaPath });
            try {
                const tokens = promptTokens(mha, text, 300);
                // threshold 1e-6: every leaving cell merges, so the comparison is of merging against eviction
                const { results } = await measurePerturbation({
                    model: mha, tokens, removeFraction: 0.25, flashAttention: false, cacheType: "f16", threshold: 1e-6, threads: 1
                });
                const evict = byCase(results, "evict");
                const naive = byCase(results, "merge-naive");
                assert.equal(evict.cellsRemoved, 75);
                for (const variant of ["paper", "votes", "key"]) {
                    const k = byCase(results, "keepkv", variant);
                    assert.equal(k.cellsRemoved, 75);
                    assert.equal(k.evictions, 0, "every leaving cell merged");
                    assert.ok(k.maxAbsLogitDiff <= 1e-2, `keepkv/${variant}: ${k.maxAbsLogitDiff} <= 1e-2`);
                    assert.ok(k.maxAbsLogitDiff * 100 <= evict.maxAbsLogitDiff, `keepkv/${variant} ${k.maxAbsLogitDiff} vs evict ${evict.maxAbsLogitDiff}`);
                    assert.ok(k.maxAbsLogitDiff * 10 <= naive.maxAbsLogitDiff, `keepkv/${variant} ${k.maxAbsLogitDiff} vs merge-naive ${naive.maxAbsLogitDiff}`);
                }
            } finally {
                await mha.dispose();
            }
        });

        // grouped-query attention: the query heads of a group share one merged value, so no merge is exact for
        // all of them; keepkv keeps the attention mass of every head exact and picks the value that moves the
        // outputs least. The floor is the recomputation of the last token with nothing removed (other kernels than
        // the prompt's batch: F16 weights round differently). Bounds are the measured values with margin
        // (results/perturbation/perturbation.md, npm run bench:perturbation -- --suite).
        const gqaCases = [
            // measured: keepkv 1.3e-2 (floor 8.8e-3), KL 8.5e-7 (floor 6.7e-7); evict 0.18, KL 7.5e-5 (a CPU
            // without AVX2: keepkv 1.3e-2 (floor 1.2e-2), KL 3.9e-6 (floor 3.3e-6); evict 0.17, KL 7.6e-5)
            { flashAttention: false, cacheType: "f16", maxAbs: 0.03, ratioEvict: 5, ratioNaive: 5, klRatioEvict: 20, klOverFloor: 3 },
            // measured: keepkv 2.4e-2 (floor 1.6e-2), KL 5.1e-6 (floor 3.6e-6); evict 0.17, KL 5.6e-5 (without
            // AVX2: keepkv 2.7e-2 (floor 1.4e-2), KL 2.2e-6 (floor 1.1e-6); evict 0.16, KL 6.7e-5)
            { flashAttention: true, cacheType: "f16", maxAbs: 0.04, ratioEvict: 4, ratioNaive: 4, klRatioEvict: 5, klOverFloor: 3 }
        ] as const;
        async function measureGqa(flashAttention: boolean, cacheType: "f16" | "q8_0") {
            const f16 = await llama.loadModel({ modelPath: f16ModelPath() });
            try {
                const tokens = promptTokens(f16, text, 300);
                const m = await measurePerturbation({
                    model: f16, tokens, removeFraction: 0.25, flashAttention, cacheType, threshold: 1e-6, threads: 1,
                    cases: allCases.filter((x) => x.policy !== "window")
                });
                return { floor: m.floor, evict: byCase(m.results, "evict"), naive: byCase(m.results, "merge-naive"), k: byCase(m.results, "keepkv", "key") };
            } finally {
                await f16.dispose();
            }
        }
        for (const c of gqaCases) {
            it(`keepkv moves stories3M's logits far less than evict and merge-naive, close to the recomputation floor (GQA, ${c.cacheType} cache, flash attention ${c.flashAttention ? "on" : "off"})`, async function () {
                const { floor, evict, naive, k } = await measureGqa(c.flashAttention, c.cacheType);
                assert.ok(k.maxAbsLogitDiff <= c.maxAbs, `keepkv ${k.maxAbsLogitDiff} <= ${c.maxAbs}`);
                assert.ok(k.maxAbsLogitDiff * c.ratioEvict <= evict.maxAbsLogitDiff, `keepkv ${k.maxAbsLogitDiff} vs evict ${evict.maxAbsLogitDiff}`);
                assert.ok(k.maxAbsLogitDiff * c.ratioNaive <= naive.maxAbsLogitDiff, `keepkv ${k.maxAbsLogitDiff} vs merge-naive ${naive.maxAbsLogitDiff}`);
                // against the recomputation with nothing removed, so that the floor (rounding, which differs by CPU:
                // without AVX2, flash attention off, 3.3e-6 of keepkv's 3.9e-6) is not counted as the method's; there keepkv 3.0e-6,
                // evict 6.5e-5
                assert.ok(k.klVsRecomputed * c.klRatioEvict <= evict.klVsRecomputed,
                    `KL keepkv ${k.klVsRecomputed} vs evict ${evict.klVsRecomputed}, each against the recomputation`);
                assert.ok(k.klDivergence <= c.klOverFloor * floor.klDivergence, `KL keepkv ${k.klDivergence} vs the floor ${floor.klDivergence}`);
            });
        }

        it("with a q8_0 cache, keepkv stays within the bound measured and below merge-naive (GQA, flash attention on)", async function () {
            // the merged keys and values are stored in q8_0 again: measured keepkv 0.11, KL 7.2e-5 (floor 0.02,
            // 2.5e-6), evict 0.16, KL 4.4e-5, merge-naive 0.20, KL 4.2e-4. So with both K and V in q8_0 a single
            // compression step moves this model's next-token distribution more than eviction does. It follows the
            // 8-bit keys (only V in q8_0: KL 1.4e-6 against eviction's 7.5e-5) and shows on the MHA copy too, so
            // it is not GQA (bench:perturbation --cache-type-k/--cache-type-v, README); streaming perplexity does
            // not show it (bench:quality: keepkv with q8_0 as good as with f16)
            const { evict, naive, k } = await measureGqa(true, "q8_0");
            assert.ok(k.maxAbsLogitDiff <= 0.2, `keepkv ${k.maxAbsLogitDiff} <= 0.2`);
            assert.ok(k.maxAbsLogitDiff <= evict.maxAbsLogitDiff, `keepkv ${k.maxAbsLogitDiff} vs evict ${evict.maxAbsLogitDiff}`);
            assert.ok(k.klDivergence * 3 <= naive.klDivergence, `KL keepkv ${k.klDivergence} vs merge-naive ${naive.klDivergence}`);
        });

        it("the scatter-add and the one-hot product (for devices without get_rows_back) merge alike", async function () {
            const { execFileSync } = await import("node:child_process");
            const bench = path.join(path.dirname(new URL(import.meta.url).pathname), "..", "..", "bench", "perturbation.js");
            const run = (noScatter: boolean) => JSON.parse(execFileSync(process.execPath,
                [bench, "--json", "--model", f16ModelPath(), "--threshold", "1e-6", "--tokens", "200"], {
                    env: { ...process.env, LLAMA_KEEPKV_NO_SCATTER: noScatter ? "1" : "0" },
                    encoding: "utf8", stdio: ["ignore", "pipe", "ignore"]
                })) as { rows: PerturbationResult[] };
            const scatter = run(false).rows;
            const onehot = run(true).rows;
            for (const [i, r] of scatter.entries()) {
                assert.equal(r.merges, onehot[i]!.merges);
                assert.ok(Math.abs(r.maxAbsLogitDiff - onehot[i]!.maxAbsLogitDiff) <= 1e-4,
                    `${r.policy}/${r.variant}: ${r.maxAbsLogitDiff} vs ${onehot[i]!.maxAbsLogitDiff}`);
            }
        });
    });

    describe("votes", function () {
        const promptLength = 120;
        const voted = [10, 11, 12, 40, 41, 77];

        async function logitsWithVotes(m: LlamaModel, votes: { head: number, layers: number[] }[], vote: number) {
            const context = await createKeepKvContext(m, { contextSize: 512, batchSize: 512, flashAttention: false, threads: 1, keepKv: { policy: "keepkv" } });
            try {
                const sequence = context.getSequence();
                const tokens = promptTokens(m, text, promptLength + 1);
                await rawDecode(context, 0, 0, tokens.slice(0, promptLength));
                for (const { head, layers } of votes)
                    for (const layer of layers)
                        for (const pos of voted)
                            await setVote(sequence, pos, layer, head, vote);
                return await rawDecode(context, 0, promptLength, [tokens[promptLength]!]);
            } finally {
                await context.dispose();
            }
        }

        it("a vote on a KV head biases exactly the query heads of its group (GQA mapping)", async function () {
            // stories3M: 6 query heads, 2 KV heads. Its MHA copy repeats KV head g as heads 3g, 3g+1, 3g+2.
            const mhaPath = path.join(tmp, "stories3M-q8_0-mha-votes.gguf");
            makeMhaCopy(testModelPath(), mhaPath);
            const mha = await llama.loadModel({ modelPath: mhaPath });
            try {
                const layers = [0, 1, 2, 3, 4, 5];
                const gqa = await logitsWithVotes(model, [{ head: 1, layers }], 5);
                const right = await logitsWithVotes(mha, [3, 4, 5].map((head) => ({ head, layers })), 5);
                const wrong = await logitsWithVotes(mha, [1, 3, 5].map((head) => ({ head, layers })), 5); // h % n_head_kv == 1
                const none = await logitsWithVotes(model, [], 5);
                assert.ok(maxAbsDiff(gqa, none) > 1e-2, "the votes change the output");
                assert.ok(maxAbsDiff(gqa, right) <= 1e-4, `KV head 1 biases query heads 3-5: ${maxAbsDiff(gqa, right)}`);
                assert.ok(maxAbsDiff(gqa, wrong) > 1e-2, "a modulo mapping (heads 1, 3, 5) gives something else");
            } finally {
                await mha.dispose();
            }
        });

        it("a cell with p votes attends like p identical copies of it", async function () {
            // copies: a unified cache where sequences 1 and 2 hold the same prefix and sequence 0 owns both
            const tokens = promptTokens(model, text, promptLength + 1);
            const m = 40; // the first m positions exist twice
            const copies = await model.createContext({
                contextSize: 512, batchSize: 512, sequences: 3, flashAttention: false, threads: 1,
                keepKv: { policy: 0, unifiedKvCache: true }
            } as LlamaContextOptions);
            let withCopies: Float32Array;
            try {
                await rawDecode(copies, 1, 0, tokens.slice(0, promptLength));
                await rawDecode(copies, 2, 0, tokens.slice(0, m));
                await copyCellsRaw(copies, 1, 0);
                await copyCellsRaw(copies, 2, 0);
                withCopies = await rawDecode(copies, 0, promptLength, [tokens[promptLength]!]);
            } finally {
                await copies.dispose();
            }

            // votes: one copy, with 2 votes in every layer and head
            const context = await createKeepKvContext(model, { contextSize: 512, batchSize: 512, flashAttention: false, threads: 1, keepKv: { policy: "keepkv" } });
            let plain: Float32Array;
            let withVotes: Float32Array;
            try {
                const sequence = context.getSequence();
                await rawDecode(context, 0, 0, tokens.slice(0, promptLength));
                plain = await rawDecode(context, 0, promptLength, [tokens[promptLength]!]);
                await removeCellsRaw(context, 0, promptLength, promptLength + 1);
                for (let pos = 0; pos < m; pos++)
                    for (let layer = 0; layer < 6; layer++)
                        for (let head = 0; head < 2; head++)
                            await setVote(sequence, pos, layer, head, 2);
                withVotes = await rawDecode(context, 0, promptLength, [tokens[promptLength]!]);
            } finally {
                await context.dispose();
            }

            assert.ok(maxAbsDiff(withCopies, plain) > 1e-2, "the copies change the output");
            assert.ok(maxAbsDiff(withVotes, withCopies) <= 1e-3, `2 votes = 2 copies: ${maxAbsDiff(withVotes, withCopies)}`);
        });
    });

    describe("layouts", function () {
        it("the per-stream flash attention layout (what CUDA needs for several sequences) computes what the one-call layout does", async function () {
            const { execFileSync } = await import("node:child_process");
            const probe = path.join(path.dirname(new URL(import.meta.url).pathname), "..", "helpers", "fa-streams-probe.js");
            // the F16-weight stories3M: the q8_0 one quantizes activations, which turns fp noise into jumps
            const run = (perStream: boolean, flashAttention = true) => JSON.parse(execFileSync(process.execPath, [probe], {
                env: {
                    ...process.env, KKV_PROBE_MODEL: f16ModelPath(), KKV_PROBE_FA: flashAttention ? "1" : "0",
                    LLAMA_KEEPKV_FA_PER_STREAM: perStream ? "1" : "0"
                },
                encoding: "utf8", stdio: ["ignore", "pipe", "ignore"]
            })) as number[][];
            const one = run(false);
            const per = run(true);
            const exact = run(false, false); // without flash attention: F32 accumulation
            assert.equal(per.length, 4);
            for (let s = 0; s < 4; s++) {
                // the CPU flash attention kernel accumulates V in F16, differently for different shapes: the two
                // layouts are as far from each other as each is from attention without flash attention (measured:
                // 0.013 to 0.027, with votes that differ per sequence and KV head); a mapping error moves logits by
                // far more
                const toF32 = (x: number[]) => Float32Array.from(x);
                assert.ok(maxAbsDiff(toF32(one[s]!), toF32(per[s]!)) <= 0.05, `sequence ${s}: layouts differ by ${maxAbsDiff(toF32(one[s]!), toF32(per[s]!))}`);
                assert.ok(maxAbsDiff(toF32(per[s]!), toF32(exact[s]!)) <= 0.05, `sequence ${s}: per-stream vs no flash attention ${maxAbsDiff(toF32(per[s]!), toF32(exact[s]!))}`);
                assert.ok(maxAbsDiff(toF32(one[s]!), toF32(exact[s]!)) <= 0.05, `sequence ${s}: one call vs no flash attention`);
            }
        });
    });

    describe("bad input", function () {
        it("invalid parameters are refused with an error that names the option", async function () {
            const cases: [object, string][] = [
                [{ policy: "squash" }, "policy"],
                [{ variant: "magic" }, "variant"],
                [{ threshold: 0 }, "threshold"],
                [{ threshold: 1.5 }, "threshold"],
                [{ sinks: -1 }, "sinks"],
                [{ budget: 30, sinks: 4, recent: 32 }, "budget"],
                [{ budget: 4096 }, "budget"],
                [{ budget: 2.5 }, "budget"],
                [{ policy: "off", budget: 64 }, "budget"],
                [{ scoreDecay: 1 }, "scoreDecay"],
                [{ scoreMode: "max" }, "scoreMode"],
                [{ protect: 1 }, "protect"],
                [{ protect: -0.1 }, "protect"],
                [{ valueThreshold: -1.5 }, "valueThreshold"],
                [{ valueThreshold: 1.01 }, "valueThreshold"]
            ];
            for (const [options, option] of cases) {
                assert.throws(() => resolveKeepKvSettings(options, 512), (err: unknown) =>
                    err instanceof KeepKvError && err.code === "KEEPKV_INVALID_OPTION" && err.option === option,
                `${JSON.stringify(options)} is refused naming ${option}`);
                await assert.rejects(createKeepKvContext(model, { contextSize: 512, keepKv: options }), KeepKvError);
            }
        });

        it("llama.cpp itself refuses invalid parameters that bypass the TypeScript checks", async function () {
            const raw = (keepKv: object) => model.createContext({ contextSize: 512, batchSize: 64, keepKv } as LlamaContextOptions);
            await assert.rejects(raw({ policy: 9 }), /KeepKV: unknown policy/);
            await assert.rejects(raw({ policy: 4, threshold: 2 }), /KeepKV: the similarity threshold/);
            await assert.rejects(raw({ policy: 4, budget: 20, sinks: 4, recent: 32 }), /KeepKV: a budget of 20 cells/);
            await assert.rejects(raw({ policy: 0, budget: 64 }), /KeepKV: a KV budget needs a compression policy/);
            await assert.rejects(raw({ policy: 4, protect: 1 }), /KeepKV: the protected fraction must be in \[0, 1\)/);
            await assert.rejects(raw({ policy: 2, score: 2 }), /KeepKV: unknown score 2/);
            await assert.rejects(raw({ policy: 4, valueThreshold: -2 }), /KeepKV: the value similarity threshold must be in \[-1, 1\]/);
        });

        it("a refused context does not keep its model from being disposed, even once it is garbage collected", function () {
            // node-llama-cpp 3.21.1 dropped a context whose native init failed without releasing the handle it
            // holds on the model's dispose guard; after a GC, model.dispose() waited forever (patches/node-llama-cpp
            // 0003). A process of its own, for --expose-gc and a hang that cannot take this suite with it
            const script = [
                `import { loadPatchedLlama } from ${JSON.stringify(path.join(repoRoot, "dist", "server", "engine", "llama-loader.js"))};`,
                "const llama = await loadPatchedLlama();",
                `const model = await llama.loadModel({ modelPath: ${JSON.stringify(testModelPath())} });`,
                "for (let i = 0; i < 4; i++)",
                "    await model.createContext({ contextSize: 512, keepKv: { policy: 9 } }).then(() => process.exit(3), () => {});",
                "globalThis.gc();",
                "await new Promise((resolve) => setTimeout(resolve, 100));",
                "globalThis.gc();",
                "await model.dispose();",
                "await llama.dispose();",
                "console.log('disposed');"
            ].join("\n");
            const file = path.join(repoRoot, "dist", "test", "refused-context-gc.probe.mjs");
            fs.writeFileSync(file, script);
            try {
                const out = spawnSync(process.execPath, ["--expose-gc", file], { encoding: "utf8", timeout: 60_000 });
                assert.equal(out.status, 0, out.stderr);
                // a dispose that waits forever leaves nothing to keep the event loop alive: the probe then exits
                // without getting to its last line
                assert.match(out.stdout, /disposed/, `model.dispose() never resolved after the refused contexts were collected:\n${out.stderr}`);
            } finally {
                fs.rmSync(file, { force: true });
            }
        });

        it("compression is refused on a context without KeepKV, and for cells that may not leave", async function () {
            const off = await createKeepKvContext(model, { contextSize: 512, keepKv: { policy: "off" } });
            try {
                await assert.rejects(compressSequence(off.getSequence(), 10), (err: unknown) => err instanceof KeepKvError && err.code === "KEEPKV_NOT_ENABLED");
            } finally {
                await off.dispose();
            }

            const context = await createKeepKvContext(model, { contextSize: 512, keepKv: { policy: "keepkv" } });
            try {
                const sequence = context.getSequence();
                await sequence.evaluateWithoutGeneratingNewTokens(promptTokens(model, text, 100));
                await assert.rejects(compressSequence(sequence, [0]), /KeepKV compression failed/, "a sink may not leave");
                await assert.rejects(compressSequence(sequence, [99]), /KeepKV compression failed/, "a recent cell may not leave");
                await assert.rejects(compressSequence(sequence, -1), KeepKvError);
                assert.equal((await keepKvSequenceStats(sequence)).cellsUsed, 100, "nothing was removed");
                assert.equal(await compressSequence(sequence, 10), 10);
                assert.equal((await keepKvSequenceStats(sequence)).cellsUsed, 90);
            } finally {
                await context.dispose();
            }
        });
    });

    describe("protect", function () {
        // 150 of 300 cells leave, merged wherever the keys are not opposed (threshold near 0), with score selection: the merges go
        // into the retained cells outside the best attended fraction `protect`, so the fewer the targets, the
        // more mass a target's vote holds
        const largestVote = async (protect: number) => {
            const context = await createKeepKvContext(model, {
                contextSize: 512, batchSize: 64, keepKv: { policy: "keepkv", selection: "score", threshold: 1e-6, valueThreshold: -1, protect }
            });
            try {
                const sequence = context.getSequence();
                await sequence.evaluateWithoutGeneratingNewTokens(promptTokens(model, text, 300));
                assert.equal(await compressSequence(sequence, 150), 150);
                const stats = await keepKvSequenceStats(sequence);
                assert.equal(stats.cellsUsed, 150);
                assert.ok(stats.merges > 75, `most leaving cells merged (${stats.merges})`);
                return stats.voteMax;
            } finally {
                await context.dispose();
            }
        };

        it("the best attended fraction of the retained cells receives no merges", async function () {
            const [none, half, most] = [await largestVote(0), await largestVote(0.5), await largestVote(0.95)];
            assert.ok(half > none, `largest vote with protect 0.5 (${half}) above protect 0 (${none})`);
            assert.ok(most > 2 * half, `largest vote with protect 0.95 (${most}) well above protect 0.5 (${half})`);
        });
    });

    describe("value threshold", function () {
        // 150 of 300 cells leave and every key may merge (threshold near 0): how many merge is up to how alike
        // the values of a leaving cell and of the target its key chose are. `merges` counts cells (merged
        // slots over the slots of a cell)
        const mergesWith = async (valueThreshold: number, flashAttention: boolean, selection: "score" | "recency" = "score") => {
            const context = await createKeepKvContext(model, {
                contextSize: 512, batchSize: 64, flashAttention, threads: 1,
                keepKv: { policy: "keepkv", selection, threshold: 1e-6, protect: 0, valueThreshold }
            });
            try {
                const sequence = context.getSequence();
                await sequence.evaluateWithoutGeneratingNewTokens(promptTokens(model, text, 300));
                assert.equal(await compressSequence(sequence, 150), 150);
                const stats = await keepKvSequenceStats(sequence);
                assert.ok(Math.abs(stats.merges + stats.evictions - 150) < 1e-9, `every leaving slot merged or evicted (${stats.merges} + ${stats.evictions})`);
                return stats.merges;
            } finally {
                await context.dispose();
            }
        };

        it("a leaving cell merges only where its value is alike its target's, read alike from a transposed V cache", async function () {
            const all = await mergesWith(-1, false);
            const half = await mergesWith(0.5, false);
            const most = await mergesWith(0.9, false);
            assert.ok(all > 100, `with -1 the keys alone decide: most merge (${all})`);
            assert.ok(half < all && most < half, `fewer merges the stricter the values: ${all}, ${half}, ${most}`);
            assert.ok(most > 0, "some values are alike");
            // flash attention off keeps V transposed (the gate gathers it element by element), on keeps it by
            // rows: the same cells merge, up to the rounding by which the two attentions differ
            const halfRows = await mergesWith(0.5, true);
            assert.ok(Math.abs(halfRows - half) <= 0.02 * half, `flash attention on ${halfRows} vs off ${half}`);
        });

        it("does not apply with recency selection, where the merges it would stop keep perplexity down", async function () {
            assert.equal(await mergesWith(0.9, false, "recency"), await mergesWith(-1, false, "recency"));
        });
    });

    describe("accumulated scores (scoreMode sum)", function () {
        // The scores as a saved state carries them (keepkv_state_write in the patch series): after K and V the
        // magic "KKV1", the state version (4), the parameters (14 fields of 32 bits), n_layer, then per layer
        // n_head_kv, the log votes of every saved cell and then their scores (n_head_kv floats per cell).
        async function savedScores(sequence: LlamaContextSequence, name: string): Promise<Float32Array[][]> {
            const file = path.join(tmp, `${name}.state`);
            await sequence.saveStateToFile(file);
            const cells = (await cellPositions(sequence)).length;
            const buf = fs.readFileSync(file);
            let at = -1;
            for (let i = 0; i + 8 <= buf.length && at < 0; i++)
                if (buf.readUInt32LE(i) === 0x31564b4b && buf.readUInt32LE(i + 4) === 4)
                    at = i;
            assert.ok(at >= 0, "the state has a KeepKV section of version 4");
            let o = at + 8 + 14 * 4;
            const layers: Float32Array[][] = [];
            const nLayer = buf.readUInt32LE(o);
            o += 4;
            for (let l = 0; l < nLayer; l++) {
                const nHead = buf.readUInt32LE(o);
                o += 4 + cells * nHead * 4;
                const heads = Array.from({ length: nHead }, () => new Float32Array(cells));
                for (let c = 0; c < cells; c++)
                    for (let h = 0; h < nHead; h++, o += 4)
                        heads[h]![c] = buf.readFloatLE(o);
                layers.push(heads);
            }
            return layers;
        }
        const total = (scores: Float32Array) => scores.reduce((a, b) => a + b, 0);

        /** The scores after a 64-token prompt in one batch, and after 5 more tokens, one batch each. */
        async function scoresOverBatches(keepKv: KeepKvOptions) {
            const context = await createKeepKvContext(model, {
                contextSize: 512, batchSize: 512, threads: 1, keepKv: { policy: "evict", selection: "score", ...keepKv }
            });
            try {
                const sequence = context.getSequence();
                const tokens = promptTokens(model, text, 69);
                await sequence.evaluateWithoutGeneratingNewTokens(tokens.slice(0, 64));
                const first = await savedScores(sequence, `first-${JSON.stringify(keepKv)}`);
                for (const token of tokens.slice(64))
                    await sequence.evaluateWithoutGeneratingNewTokens([token]);
                return { first, later: await savedScores(sequence, `later-${JSON.stringify(keepKv)}`) };
            } finally {
                await context.dispose();
            }
        }

        it("a cell's score is the attention it got in every batch: each KV head hands out the same total per batch", async function () {
            const sum = await scoresOverBatches({ scoreMode: "sum", scoreDecay: 0.9 });
            const ema = await scoresOverBatches({ scoreMode: "ema", scoreDecay: 0.9 });
            const unit = total(sum.first[0]![0]!);
            assert.ok(unit > 0.5, `the first batch gave its attention (${unit})`);
            sum.first.forEach((heads, l) => heads.forEach((first, h) => {
                const later = sum.later[l]![h]!;
                assert.ok(Math.abs(total(first) - unit) < 1e-3 * unit, `layer ${l} head ${h}: one batch, one unit (${total(first)})`);
                assert.ok(Math.abs(total(later) - 6 * unit) < 1e-3 * unit, `layer ${l} head ${h}: six batches, six units (${total(later)})`);
                first.forEach((score, c) => assert.ok(later[c]! >= score - 1e-6, `layer ${l} head ${h} cell ${c}: a sum never falls`));
                // the moving average starts from the same first observation and then stays near one unit
                assert.deepEqual(ema.first[l]![h], first, `layer ${l} head ${h}: the same first observation`);
                assert.ok(total(ema.later[l]![h]!) < 2 * unit, `layer ${l} head ${h}: the moving average does not accumulate`);
            }));
            // the decay does not apply to a sum
            assert.deepEqual((await scoresOverBatches({ scoreMode: "sum", scoreDecay: 0.2 })).later, sum.later);
        });

        it("a cell that merges go into keeps its own score (the moving average adds the leaving cells' scores to it)", async function () {
            const retainedScores = async (scoreMode: "ema" | "sum") => {
                const context = await createKeepKvContext(model, {
                    contextSize: 512, batchSize: 512, threads: 1, keepKv: { policy: "keepkv", selection: "score", threshold: 1e-6, valueThreshold: -1, scoreMode }
                });
                try {
                    const sequence = context.getSequence();
                    await sequence.evaluateWithoutGeneratingNewTokens(promptTokens(model, text, 300));
                    const before = await savedScores(sequence, `merge-before-${scoreMode}`);
                    assert.equal(await compressSequence(sequence, 100), 100);
                    assert.ok((await keepKvSequenceStats(sequence)).merges > 50, "most leaving cells merged");
                    return { before, after: await savedScores(sequence, `merge-after-${scoreMode}`) };
                } finally {
                    await context.dispose();
                }
            };
            // the scores after the compression that are none of the scores before it (in any layer and head)
            const changed = ({ before, after }: { before: Float32Array[][], after: Float32Array[][] }) =>
                after.reduce((n, heads, l) => n + heads.reduce((m, scores, h) => {
                    const old = new Set(before[l]![h]!);
                    return m + scores.filter((s) => !old.has(s)).length;
                }, 0), 0);
            assert.equal(changed(await retainedScores("sum")), 0, "with sums every retained cell keeps its score");
            assert.ok(changed(await retainedScores("ema")) > 100, "with moving averages the cells that merges went into gained their scores");
        });
    });

    describe("changing how a live context compresses", function () {
        // how bench:longctx compresses one prompt by every policy: the prompt once in sequence 0, then for each
        // policy a copy of it in sequence 1 (a stream copy: cells, votes, scores and the representative query),
        // the policy set on the live context, the copy compressed and decoded on
        const n = 300;
        const leave = 100;
        const policies = [
            { policy: "evict", selection: "policy" }, { policy: "merge-naive", selection: "policy" },
            { policy: "keepkv", selection: "policy", variant: "paper" }, { policy: "keepkv", selection: "policy", variant: "key" },
            { policy: "keepkv", selection: "recency", variant: "key" }, { policy: "window", selection: "policy" },
            // and back: attention kept the scores current while the copies were compressed by recency
            { policy: "evict", selection: "score" }
        ] as const;
        const options = { contextSize: 512, batchSize: 512, flashAttention: false, threads: 1 };

        it("a copy compressed after the change gives the cells and logits of a context created with those settings", async function () {
            const tokens = promptTokens(model, text, n + 1);
            const shared = await createKeepKvContext(model, { ...options, sequences: 2, keepKv: { policy: "evict", selection: "score", threshold: 0.5 } });
            try {
                const [prompt, copy] = [claimSequence(shared), claimSequence(shared)];
                await rawDecode(shared, nativeSequenceIdOf(prompt), 0, tokens.slice(0, n));
                for (const p of policies) {
                    const own = await createKeepKvContext(model, { ...options, keepKv: { ...p, threshold: 0.5 } });
                    let expected: { cells: number[], logits: Float32Array };
                    try {
                        const sequence = own.getSequence();
                        await rawDecode(own, 0, 0, tokens.slice(0, n));
                        assert.equal(await compressSequence(sequence, leave), leave);
                        expected = { cells: await cellPositions(sequence), logits: await rawDecode(own, 0, n, [tokens[n]!]) };
                    } finally {
                        await own.dispose();
                    }

                    await removeCellsRaw(shared, nativeSequenceIdOf(copy), 0, -1);
                    await copyCellsRaw(shared, nativeSequenceIdOf(prompt), nativeSequenceIdOf(copy));
                    const settings = await setKeepKvCompression(shared, p);
                    assert.equal(settings.policy, p.policy);
                    assert.equal(await compressSequence(copy, leave), leave);
                    const label = `${p.policy}/${"variant" in p ? p.variant : ""} ${p.selection}`;
                    assert.deepEqual(await cellPositions(copy), expected.cells, `${label}: the same cells`);
                    const logits = await rawDecode(shared, nativeSequenceIdOf(copy), n, [tokens[n]!]);
                    assert.equal(maxAbsDiff(logits, expected.logits), 0, `${label}: the same logits`);
                    // the prompt itself is untouched
                    assert.equal((await cellPositions(prompt)).length, n, `${label}: the prompt keeps its cells`);
                }
            } finally {
                await shared.dispose();
            }
        });

        it("refuses what it cannot change, with the reason, and keeps compressing as before", async function () {
            const context = await createKeepKvContext(model, { ...options, keepKv: { policy: "window" } });
            try {
                const sequence = context.getSequence();
                await rawDecode(context, 0, 0, promptTokens(model, text, 200));
                const refused = async (change: Parameters<typeof setKeepKvCompression>[1], code: string, message: RegExp) =>
                    await assert.rejects(setKeepKvCompression(context, change), (err: unknown) =>
                        err instanceof KeepKvError && err.code === code && message.test(err.message));
                await refused({ policy: "evict" }, "KEEPKV_INVALID_OPTION", /keeps no attention scores/);
                await refused({ policy: "keepkv", selection: "score" }, "KEEPKV_INVALID_OPTION", /keeps no attention scores/);
                await refused({ policy: "off" }, "KEEPKV_INVALID_OPTION", /cannot be turned off/);
                await refused({ threshold: 2 }, "KEEPKV_INVALID_OPTION", /threshold/);
                // what the TypeScript type leaves out is refused by llama.cpp itself
                assert.throws(() => nativeKeepKvOf(context).keepKvSetParams({ sinks: 8 }), /only the policy, variant, selection/);
                assert.throws(() => nativeKeepKvOf(context).keepKvSetParams({ observed: 4 }), /only the policy, variant, selection/);
                assert.throws(() => nativeKeepKvOf(context).keepKvSetParams({ score: 1 }), /only the policy, variant, selection/);
                assert.equal(keepKvSettingsOf(context).policy, "window");
                // still the window: the oldest movable cells leave
                assert.equal(await compressSequence(sequence, 10), 10);
                const cells = await cellPositions(sequence);
                assert.deepEqual(cells.slice(0, 5), [0, 1, 2, 3, 14]);
                // and a change it can make takes effect: merge-naive by recency keeps the window's selection
                await setKeepKvCompression(context, { policy: "merge-naive", selection: "recency" });
                assert.equal(await compressSequence(sequence, 10), 10);
                assert.deepEqual((await cellPositions(sequence)).slice(0, 5), [0, 1, 2, 3, 24]);
                assert.ok((await keepKvSequenceStats(sequence)).merges > 0, "merge-naive merged");
            } finally {
                await context.dispose();
            }
        });
    });
});
