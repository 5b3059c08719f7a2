// One configuration (a policy, selection and budget) run over long-context cases in one context: greedy
// replies scored exactly. Used by bench/longctx.ts and the fast needle test.
import type { LlamaContext, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import {
    compressSequence, createKeepKvContext, keepKvSequenceStats, keepKvSettingsOf, setKeepKvCompression, type KeepKvOptions,
    type KeepKvCompressionChange, type KeepKvPolicy, type KeepKvSelection, type KeepKvVariant
} from "../../server/engine/keepkv.js";
import { keepKvDefaults, resolveKeepKvSettings } from "../../lib/keepkv-options.js";
import { needleAnswered, type NeedleCase, needleTasks } from "./longctx-tasks.js";
import { continueGreedy, evaluatePrompt } from "./scoring.js";
import { claimSequence, copyCellsRaw, decodeRaw, nativeSequenceIdOf, removeCellsRaw } from "../../server/engine/native-context.js";
import { rawDecode } from "./raw-decode.js";
import { flagOf } from "../../lib/option-names.js";

/**
 * streaming: the budget holds from the first token, the cache compresses as the prompt is evaluated (what the
 * server does: memory never exceeds the budget). prompt-end: the whole prompt is evaluated into a full cache,
 * then compressed once down to the budget with scores from the prompt's last queries only (the question:
 * SnapKV's setting, and the one the field's published figures use); memory peaks at the prompt. probe: the
 * budget holds from the first token as in streaming, but before each compression the prompt's last tokens
 * (the question, known before the prompt is evaluated) are evaluated after the text so far, score the cells,
 * and leave again (see evaluateWithProbe).
 */
export const longctxSettings = ["streaming", "prompt-end", "probe"] as const;
export type LongctxSetting = typeof longctxSettings[number];

export type LongctxConfig = {
    label: string, policy: KeepKvPolicy, variant: KeepKvVariant | null, selection: KeepKvSelection, budget: number | null,
    setting: LongctxSetting,
    /** options of this configuration's compression, over the run's --keepkv (what a live context can change) */
    compress?: Pick<KeepKvOptions, "threshold" | "protect" | "valueThreshold">
};

/** A configuration named on the command line (bench:longctx --extra): compared at the prompt's end. */
export type ExtraConfig = {
    label: string, policy: Exclude<KeepKvPolicy, "off">, variant?: KeepKvVariant, selection?: KeepKvSelection,
    threshold?: number, protect?: number, valueThreshold?: number
};

/** The prompt-end configurations of --extra, one per budget. */
export function extraConfigs(extras: readonly ExtraConfig[], budgets: number[]): LongctxConfig[] {
    return budgets.flatMap((budget) => extras.map((e) => ({
        label: e.label, policy: e.policy, variant: e.variant ?? null, selection: e.selection ?? "policy", budget, setting: "prompt-end" as const,
        compress: {
            ...e.threshold != null ? { threshold: e.threshold } : {},
            ...e.protect != null ? { protect: e.protect } : {},
            ...e.valueThreshold != null ? { valueThreshold: e.valueThreshold } : {}
        }
    })));
}

export const longctxTasks = [...needleTasks, "multiturn"] as const;
export type LongctxTask = typeof longctxTasks[number];

export type LongctxRow = {
    task: LongctxTask, length: number, depth: number, seed: number, config: string, policy: KeepKvPolicy,
    variant: KeepKvVariant | null, selection: KeepKvSelection, budget: number | null, budgetCells: number | null,
    setting: LongctxSetting, correct: boolean, reply: string
};

type Choice = [KeepKvPolicy, KeepKvVariant | null, KeepKvSelection];
const choices: Record<"compact" | "all", Choice[]> = {
    compact: [["window", null, "policy"], ["evict", null, "policy"], ["merge-naive", null, "policy"],
        ["keepkv", "key", "policy"], ["keepkv", "key", "recency"]],
    all: [["window", null, "policy"], ["evict", null, "policy"], ["merge-naive", null, "policy"], ["merge-naive", null, "recency"],
        ["keepkv", "paper", "policy"], ["keepkv", "votes", "policy"], ["keepkv", "key", "policy"], ["keepkv", "key", "recency"]]
};

export function longctxConfigs(set: "compact" | "all", budgets: number[], settings: readonly LongctxSetting[] = ["streaming"]): LongctxConfig[] {
    const configs: LongctxConfig[] = [{ label: "full cache", policy: "off", variant: null, selection: "policy", budget: null, setting: "streaming" }];
    for (const setting of settings)
        for (const budget of budgets)
            for (const [policy, variant, selection] of choices[set])
                configs.push({
                    label: configName(policy, variant, selection) + (setting === "streaming" ? "" : ` ${setting}`),
                    policy, variant, selection, budget, setting
                });
    return configs;
}

function configName(policy: KeepKvPolicy, variant: KeepKvVariant | null, selection: KeepKvSelection): string {
    return `${policy}${variant != null && variant !== "key" ? "/" + variant : ""}${selection === "policy" ? "" : ` (${selection})`}`;
}

/** A result row: what was asked and answered, and the configuration that answered it. */
export function longctxRow(config: LongctxConfig, budgetCells: number | null,
    result: Pick<LongctxRow, "task" | "length" | "depth" | "seed" | "correct" | "reply">): LongctxRow {
    return {
        ...result, config: config.label, policy: config.policy, variant: config.variant, selection: config.selection,
        budget: config.budget, budgetCells, setting: config.setting
    };
}

/** The KeepKV options of a compressing configuration, as its own context would be created with them. */
function keepKvOptionsOf(config: LongctxConfig, budgetCells: number | null, keepKv: KeepKvOptions | undefined, probe: number | undefined): KeepKvOptions {
    const streaming = config.setting === "streaming";
    return {
        policy: config.policy, budget: streaming ? budgetCells : null, selection: config.selection,
        ...config.variant != null ? { variant: config.variant } : {},
        // at the prompt's end (and in a probe) the scores are those of the last batch's last queries alone
        ...streaming ? {} : { scoreDecay: 0 },
        ...keepKv,
        ...config.compress,
        // a probe is the last cells of the sequence while it scores: the text's own recent window stays
        // behind it (and with it the text's last position, where the next chunk continues)
        ...config.setting === "probe" ? { recent: (keepKv?.recent ?? keepKvDefaults.recent) + (probe ?? defaultProbeTokens) } : {}
    };
}

/**
 * Every setting a live context can change, as a context created for `config` would have it: a field left out
 * of setKeepKvCompression keeps the live value, which is the previous configuration's (a threshold or protect of
 * an --extra configuration carried into every configuration after it, case after case).
 */
export function compressionOf(config: LongctxConfig, keepKv: KeepKvOptions | undefined, contextSize: number): Required<KeepKvCompressionChange> {
    const { policy, variant, selection, threshold, protect, valueThreshold } = resolveKeepKvSettings(keepKvOptionsOf(config, null, keepKv, undefined), contextSize);
    return { policy, variant, selection, threshold, protect, valueThreshold };
}

/** Compresses sequence `seq` down to `budgetCells` and evaluates the prompt's last token again on what is left. */
async function compressAtPromptEnd(context: LlamaContext, sequence: LlamaContextSequence, prompt: Token[], budgetCells: number): Promise<Float32Array> {
    const seq = nativeSequenceIdOf(sequence);
    await compressSequence(sequence, prompt.length - budgetCells);
    // the logits of the prompt's last token were computed before the compression: compute them again on the
    // compressed cache, as a question asked after it would be
    const last = prompt.length - 1;
    await removeCellsRaw(context, seq, last, last + 1);
    return await rawDecode(context, seq, last, [prompt[last]!]);
}

/** Runs the cases of one length under one configuration in one context; returns a row per case. */
export async function runLongctx(model: LlamaModel, config: LongctxConfig, cases: NeedleCase[],
    opts: { threads: number, generate: number, keepKv?: KeepKvOptions, probe?: number }): Promise<LongctxRow[]> {
    const length = cases[0]!.length;
    const budgetCells = config.budget == null ? null : Math.round(config.budget * length);
    const streaming = config.setting === "streaming";
    const context = await createKeepKvContext(model, {
        contextSize: length + opts.generate, threads: opts.threads,
        // under a budget createKeepKvContext sizes the batch to what llama.cpp puts in one ubatch
        ...streaming && budgetCells != null ? {} : { batchSize: 512 },
        keepKv: config.policy === "off" ? { policy: "off" } : keepKvOptionsOf(config, budgetCells, opts.keepKv, opts.probe)
    });
    const batch = context.batchSize;
    const sequence = claimSequence(context);
    try {
        const rows: LongctxRow[] = [];
        for (const c of cases) {
            let logits: Float32Array;
            if (config.setting === "probe" && budgetCells != null)
                logits = await evaluateWithProbe(context, sequence, c.prompt, budgetCells, opts.probe ?? defaultProbeTokens);
            else
                logits = await evaluatePrompt(context, 0, c.prompt, batch);
            if (config.setting === "prompt-end" && budgetCells != null)
                logits = await compressAtPromptEnd(context, sequence, c.prompt, budgetCells);
            const reply = model.detokenize(await continueGreedy(context, 0, c.prompt.length, logits, opts.generate));
            rows.push(longctxRow(config, budgetCells,
                { task: c.task, length: c.length, depth: c.depth, seed: c.seed, correct: needleAnswered(reply, c.answer), reply }));
        }
        return rows;
    } finally {
        await context.dispose();
    }
}

/**
 * The prompt-end setting for several configurations at once (and the full cache): each case's prompt is
 * evaluated once, into a full cache in sequence 0 of a context that tracks scores; each configuration then
 * compresses a copy of it in sequence 1 (a stream copy carries the cells, votes, scores and representative
 * query) with its policy, variant and selection set on the live context, and answers from there. The cells
 * and logits are those of a context of its own per configuration (tested), without evaluating the prompt
 * again for each. The configurations must share every other KeepKV setting. Returns a row per case and
 * configuration, case by case.
 */
export async function runPromptEnd(model: LlamaModel, configs: LongctxConfig[], cases: NeedleCase[],
    opts: { threads: number, generate: number, keepKv?: KeepKvOptions }): Promise<LongctxRow[]> {
    if (configs.some((c) => c.policy !== "off" && (c.setting !== "prompt-end" || c.budget == null)))
        throw new Error("runPromptEnd runs the full cache and prompt-end configurations with a budget only");
    const length = cases[0]!.length;
    // a policy that tracks scores (every compressing one but window with its own selection), with the options
    // every configuration shares
    const base = keepKvOptionsOf({ label: "", policy: "evict", variant: null, selection: "score", budget: null, setting: "prompt-end" },
        null, opts.keepKv, undefined);
    const rows: LongctxRow[] = [];
    for (const c of cases) {
        // a context per case, and the check at its end: no case can change what another answers (the fault
        // once seen here, with one context for all cases, was sequence 0 collected and cleared by node-llama-cpp;
        // claimSequence keeps both alive now)
        const context = await createKeepKvContext(model, {
            contextSize: length + opts.generate, sequences: 2, batchSize: 512, threads: opts.threads, keepKv: base
        });
        const prompt = claimSequence(context);
        const copy = claimSequence(context);
        const [from, to] = [nativeSequenceIdOf(prompt), nativeSequenceIdOf(copy)];
        // a copy of the prompt's cells answers, compressed to budgetCells by config's settings when given
        const answerFromCopy = async (logits: Float32Array, config?: LongctxConfig, budgetCells?: number): Promise<string> => {
            await removeCellsRaw(context, to, 0, -1);
            await copyCellsRaw(context, from, to);
            let last = logits;
            if (config != null && budgetCells != null) {
                await setKeepKvCompression(context, compressionOf(config, opts.keepKv, context.contextSize));
                last = await compressAtPromptEnd(context, copy, c.prompt, budgetCells);
            }
            return model.detokenize(await continueGreedy(context, to, c.prompt.length, last, opts.generate));
        };
        try {
            const logits = await evaluatePrompt(context, from, c.prompt, context.batchSize);
            const before = await answerFromCopy(logits);
            for (const config of configs) {
                const budgetCells = config.budget == null ? null : Math.round(config.budget * length);
                const reply = budgetCells == null ? before : await answerFromCopy(logits, config, budgetCells);
                rows.push(longctxRow(config, budgetCells,
                    { task: c.task, length: c.length, depth: c.depth, seed: c.seed, correct: needleAnswered(reply, c.answer), reply }));
            }
            // the prompt's cells must be what they were: the full cache answers as it did before the configurations
            const after = await answerFromCopy(logits);
            if (after !== before)
                throw new Error(`${c.task} ${c.length} depth ${c.depth} seed ${c.seed}: the full cache answered ${JSON.stringify(before)} ` +
                    `before the configurations and ${JSON.stringify(after)} after them: a compression of the copy changed the prompt's cells`);
        } finally {
            await context.dispose();
        }
    }
    return rows;
}

export const defaultProbeTokens = 32;

/**
 * Evaluates a prompt in sequence 0 of `context` so that it never holds more than `budget` cells, compressing
 * with the scores of the prompt's last `probe` tokens: the text before them is evaluated chunk by chunk into at
 * most budget - probe cells; before a chunk would take it over, the probe is evaluated at the positions it
 * will have at the end, the policy removes what the chunk needs with the probe's scores (and, for keepkv, its
 * last query as the one the merges keep exact), and the probe's cells are removed again, with any cell merged
 * into them. The probe is evaluated for good at the end. Returns the last token's logits.
 */
export async function evaluateWithProbe(context: LlamaContext, sequence: LlamaContextSequence, prompt: Token[], budget: number,
    probe: number): Promise<Float32Array> {
    const { sinks, recent } = keepKvSettingsOf(context);
    const probeAt = Math.max(0, prompt.length - probe);
    const limit = budget - (prompt.length - probeAt);
    // a compression needs room for a chunk after the sinks, the text's recent window and the probe (the
    // context's recent window holds both)
    const chunk = Math.floor((limit - sinks - Math.max(0, recent - probe)) / 4);
    if (chunk < 1)
        throw new Error(`a budget of ${budget} cells leaves no room for a probe of ${probe} tokens (sinks ${sinks}, recent ${recent})`);
    await removeCellsRaw(context, 0, 0, -1);
    let cells = 0;
    for (let pos = 0; pos < probeAt; ) {
        const n = Math.min(chunk, probeAt - pos);
        if (cells + n > limit) {
            // right after the text so far: llama.cpp takes a sequence's tokens only at consecutive positions
            await decodeRaw(context, [{ seq: 0, pos, tokens: prompt.slice(probeAt) }]);
            await compressSequence(sequence, cells + n - limit);
            await removeCellsRaw(context, 0, pos, -1);
            cells = (await keepKvSequenceStats(sequence)).cellsUsed;
        }
        await decodeRaw(context, [{ seq: 0, pos, tokens: prompt.slice(pos, pos + n) }]);
        cells += n;
        pos += n;
    }
    return await rawDecode(context, 0, probeAt, prompt.slice(probeAt));
}

/**
 * The server's command-line arguments for a configuration (the budget in cells), with the --keepkv options of
 * the run for a compressing one (its flag is the option's name in kebab case: scoreDecay, --score-decay).
 */
export function serverArgsOf(config: LongctxConfig, budgetCells: number | null, keepKv: KeepKvOptions = {}): string[] {
    if (config.policy === "off")
        return ["--policy", "off"];
    const extra = Object.entries(keepKv).filter(([name]) => !["policy", "variant", "selection", "budget"].includes(name))
        .flatMap(([name, value]) => [flagOf(name), String(value)]);
    return ["--policy", config.policy, "--selection", config.selection, "--budget", String(budgetCells),
        ...config.variant != null ? ["--variant", config.variant] : [], ...extra];
}
