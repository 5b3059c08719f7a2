// One configuration (a policy, selection and budget) run over long-context cases in one context: greedy
// replies scored exactly. Used by bench/longctx.ts and the fast needle test.
import type { LlamaModel } from "node-llama-cpp";
import { compressSequence, createKeepKvContext, type KeepKvOptions, type KeepKvPolicy, type KeepKvSelection, type KeepKvVariant } from "../../server/engine/keepkv.js";
import { needleAnswered, type NeedleCase, needleTasks } from "./longctx-tasks.js";
import { continueGreedy, evaluatePrompt } from "./scoring.js";
import { removeCellsRaw } from "../../server/engine/native-context.js";
import { rawDecode } from "./raw-decode.js";

/**
 * streaming: the budget holds from the first token, the cache compresses as the prompt is evaluated (what the
 * server does: memory never exceeds the budget). prompt-end: the whole prompt is evaluated into a full cache,
 * then compressed once down to the budget with scores from the prompt's last queries only (the question:
 * SnapKV's setting, and the one the field's published figures use); memory peaks at the prompt.
 */
export const longctxSettings = ["streaming", "prompt-end"] as const;
export type LongctxSetting = typeof longctxSettings[number];

export type LongctxConfig = {
    label: string, policy: KeepKvPolicy, variant: KeepKvVariant | null, selection: KeepKvSelection, budget: number | null,
    setting: LongctxSetting
};

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

/** Runs the cases of one length under one configuration in one context; returns a row per case. */
export async function runLongctx(model: LlamaModel, config: LongctxConfig, cases: NeedleCase[],
    opts: { threads: number, generate: number, keepKv?: KeepKvOptions }): Promise<LongctxRow[]> {
    const length = cases[0]!.length;
    const budgetCells = config.budget == null ? null : Math.round(config.budget * length);
    const streaming = config.setting === "streaming";
    const context = await createKeepKvContext(model, {
        contextSize: length + opts.generate, threads: opts.threads,
        // under a budget createKeepKvContext sizes the batch to what llama.cpp puts in one ubatch
        ...streaming && budgetCells != null ? {} : { batchSize: 512 },
        keepKv: config.policy === "off" ? { policy: "off" } : {
            policy: config.policy, budget: streaming ? budgetCells : null, selection: config.selection,
            ...config.variant != null ? { variant: config.variant } : {},
            // at the prompt's end the scores are those of its last batch's last queries alone
            ...streaming ? {} : { scoreDecay: 0 },
            ...opts.keepKv
        }
    });
    const batch = context.batchSize;
    const sequence = context.getSequence();
    try {
        const rows: LongctxRow[] = [];
        for (const c of cases) {
            let logits = await evaluatePrompt(context, 0, c.prompt, batch);
            if (!streaming && budgetCells != null) {
                await compressSequence(sequence, c.prompt.length - budgetCells);
                // the logits of the prompt's last token were computed before the compression: compute them
                // again on the compressed cache, as a question asked after it would be
                const last = c.prompt.length - 1;
                await removeCellsRaw(context, 0, last, last + 1);
                logits = await rawDecode(context, 0, last, [c.prompt[last]!]);
            }
            const reply = model.detokenize(await continueGreedy(context, 0, c.prompt.length, logits, opts.generate));
            rows.push(longctxRow(config, budgetCells,
                { task: c.task, length: c.length, depth: c.depth, seed: c.seed, correct: needleAnswered(reply, c.answer), reply }));
        }
        return rows;
    } finally {
        await context.dispose();
    }
}

/** The server's command-line arguments for a configuration (the budget in cells). */
export function serverArgsOf(config: LongctxConfig, budgetCells: number | null): string[] {
    if (config.policy === "off")
        return ["--policy", "off"];
    return ["--policy", config.policy, "--selection", config.selection, "--budget", String(budgetCells),
        ...config.variant != null ? ["--variant", config.variant] : []];
}
