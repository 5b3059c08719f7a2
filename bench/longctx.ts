// npm run bench:longctx -- [--json] [--model PATH|smollm2] [--corpus PATH|kjv] [--tasks needle,multikey,before,hop,multiturn]
//                           [--lengths 1024,2048,4096,8192] [--budgets 0.05,0.1,0.2,0.5] [--depths 0,0.25,0.5,0.75,1]
//                           [--seeds 1] [--configs compact|all] [--only LABEL,...] [--settings streaming,prompt-end,probe]
//                           [--keepkv JSON] [--extra JSON] [--generate 8] [--threads 2]
//                           [--multiturn-tokens 7000] [--multiturn-seeds 3] [--multiturn-form mine|named] [--out longctx]
//
// Long-context retrieval, where eviction is known to fail: a fact hidden at a depth of a long text, asked for
// after it (needle), among three distractor facts (multikey), or asked for before the text (before; what
// will be asked is known to the model but not at the end, where a scorer looks), reached by two hops (hop:
// the asked person's number is "the same as" another's, among distractors), and a fact given in the
// first turn of a chat through the real server and asked for after thousands of tokens of later turns
// (multiturn: bench/lib/longctx-multiturn.ts; the budget there is a fraction of the conversation). Generated from seeds,
// scored exactly (the first number of the greedy reply is the fact's number). The budget is a fraction of
// the prompt's length, in cells. In the streaming setting the cache compresses as the prompt is evaluated,
// batch by batch, as the server does; in the prompt-end setting (SnapKV's, where the field's figures come
// from) the whole prompt is evaluated, then compressed once with the scores of its last queries; in the probe
// setting the budget holds as in streaming, and each compression is scored by the prompt's last 32 tokens (the
// question), evaluated after the text so far and removed again (bench/lib/longctx-run.ts). The full cache is
// the ceiling; every policy and selection runs on the same cases in one run. The prompt-end configurations and
// the full cache share one evaluation of each prompt: each compresses a copy of it with its own policy set on the
// live context (runPromptEnd; the same replies as a context per configuration, about 5x faster). --keepkv
// applies to every compressing configuration, the multi-turn servers' included (as their flags: scoreMode is
// --score-mode).
// Writes results/<out>/longctx.json, longctx.md, accuracy-<task>.png and needle-heatmap-<budget>.png.
import * as fs from "node:fs";
import * as path from "node:path";
import { loadPatchedLlama } from "../server/engine/llama-loader.js";
import { parseArgs } from "./lib/args.js";
import { resolveCorpus, resolveModel } from "./lib/inputs.js";
import type { KeepKvOptions } from "../server/engine/keepkv.js";
import { needleCase, needleSeed, type NeedleCase, type NeedleTask, needleTaskDocs, needleTasks } from "./lib/longctx-tasks.js";
import { heatMapsSvg, lineChartSvg, machineInfo, markdownTable, progress, resultsDir, svgToPng, textTable } from "./lib/report.js";
import { type LongctxConfig, longctxConfigs, type LongctxRow, type LongctxSetting, longctxSettings, type LongctxTask, longctxRow, longctxTasks, runLongctx, runPromptEnd, serverArgsOf, type ExtraConfig, extraConfigs } from "./lib/longctx-run.js";
import { multiturnForms, multiturnRecall, type MultiturnForm } from "./lib/longctx-multiturn.js";
import { startServer } from "./lib/server-process.js";
import { errorMessage } from "../lib/error-message.js";

const taskDocs: Record<LongctxTask, string> = {
    ...needleTaskDocs,
    multiturn: "a fact in the first turn of a chat through the server, asked for after later turns fill the conversation"
};

/** One server per configuration (SmolLM2 at an 8k context), each conversation from its seed. */
async function runMultiturn(configs: LongctxConfig[], text: string, modelPath: string, target: number, seeds: number, threads: number,
    form: MultiturnForm, keepKv: KeepKvOptions): Promise<LongctxRow[]> {
    const rows: LongctxRow[] = [];
    for (const config of configs) {
        const budgetCells = config.budget == null ? null : Math.round(config.budget * target);
        const server = await startServer({
            args: ["--model", modelPath, "--context-size", "8192", "--sequences", "1", "--threads", String(threads), "--log-level", "warn",
                ...serverArgsOf(config, budgetCells, keepKv)],
            timeoutMs: 300_000
        });
        try {
            const got: LongctxRow[] = [];
            for (let seed = 0; seed < seeds; seed++) {
                const r = await multiturnRecall(server.url, text, 7000 + seed, target, form);
                got.push(longctxRow(config, budgetCells, { task: "multiturn", length: r.promptTokens, depth: 0, seed, correct: r.correct, reply: r.reply }));
            }
            rows.push(...got);
            progress(`multiturn ${target} ${config.label}${config.budget == null ? "" : " " + config.budget}: ${pct(accuracy(got))}`);
        } finally {
            await server.stop();
        }
    }
    return rows;
}

/** An argument as a shell reads it back: quoted when it holds anything but plain characters. */
const shellWord = (arg: string) => /^[\w.,:=/+-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, "'\\''")}'`;
const accuracy = (rows: LongctxRow[]) => rows.length === 0 ? null : rows.filter((r) => r.correct).length / rows.length;
const pct = (v: number | null) => v == null ? "" : `${Math.round(v * 100)}%`;

async function main(): Promise<void> {
    const args = parseArgs(process.argv.slice(2), {
        json: { type: "boolean", default: false },
        model: { type: "string", default: "smollm2" },
        corpus: { type: "string", default: "kjv" },
        tasks: { type: "list", default: "needle,multikey,before" },
        lengths: { type: "list", default: "1024,2048,4096,8192" },
        budgets: { type: "list", default: "0.05,0.1,0.2,0.5" },
        depths: { type: "list", default: "0,0.25,0.5,0.75,1" },
        seeds: { type: "number", default: 1 },
        configs: { type: "enum", values: ["compact", "all"], default: "compact" },
        only: { type: "string", default: "" },
        settings: { type: "list", default: "streaming" },
        keepkv: { type: "string", default: "{}" },
        extra: { type: "string", default: "[]" },
        generate: { type: "number", default: 8 },
        threads: { type: "number", default: 2 },
        "multiturn-tokens": { type: "number", default: 7000 },
        "multiturn-seeds": { type: "number", default: 3 },
        "multiturn-form": { type: "enum", values: [...multiturnForms], default: "mine" },
        out: { type: "string", default: "longctx" }
    });
    const list = (v: string) => v.split(",").map(Number);
    const tasks = String(args.tasks).split(",") as LongctxTask[];
    for (const t of tasks)
        if (!longctxTasks.includes(t))
            throw new Error(`--tasks: unknown task ${t}; tasks: ${longctxTasks.join(", ")}`);
    const lengths = list(String(args.lengths));
    const budgets = list(String(args.budgets));
    const depths = list(String(args.depths));
    if (lengths.some((l) => !(Number.isInteger(l) && l >= 256)))
        throw new Error(`--lengths must be integers of at least 256, got ${args.lengths}`);
    if (budgets.some((b) => !(b > 0 && b < 1)))
        throw new Error(`--budgets must be fractions in (0, 1), got ${args.budgets}`);
    if (depths.some((d) => !(d >= 0 && d <= 1)))
        throw new Error(`--depths must be in [0, 1], got ${args.depths}`);

    const text = fs.readFileSync(resolveCorpus(String(args.corpus)), "utf8");
    const llama = await loadPatchedLlama();
    const modelPath = resolveModel(String(args.model));
    const model = await llama.loadModel({ modelPath });
    // --only window,keepkv: the full cache and the configurations of those labels
    const only = String(args.only) === "" ? null : String(args.only).split(",");
    const settings = String(args.settings).split(",") as LongctxSetting[];
    for (const s of settings)
        if (!longctxSettings.includes(s))
            throw new Error(`--settings: unknown setting ${s}; settings: ${longctxSettings.join(", ")}`);
    // --extra '[{"label":"keepkv T0.95","policy":"keepkv","threshold":0.95}]': more configurations at the prompt's end,
    // each at every budget (experiments: options a live context can change, compared in the same run)
    const extras = JSON.parse(String(args.extra)) as ExtraConfig[];
    if (!Array.isArray(extras) || extras.some((e) => typeof e?.label !== "string" || e.policy == null || (e.policy as string) === "off"))
        throw new Error("--extra must be a JSON array of {label, policy (not off), variant?, selection?, threshold?, protect?, valueThreshold?}");
    const configs = [
        ...longctxConfigs(args.configs as "compact" | "all", budgets, settings).filter((c) => only == null || c.policy === "off" || only.includes(c.label)),
        ...extraConfigs(extras, budgets)
    ];
    if (new Set(configs.map((c) => `${c.label} ${c.budget}`)).size !== configs.length)
        throw new Error("two configurations have the same label: give each --extra a label of its own");
    // --keepkv '{"threshold":0.9}': KeepKV options for every compressing configuration (experiments)
    const opts = { threads: Number(args.threads), generate: Number(args.generate), keepKv: JSON.parse(String(args.keepkv)) as KeepKvOptions };
    const started = Date.now();

    const rows: LongctxRow[] = [];
    try {
        for (const task of tasks.filter((t): t is NeedleTask => t !== "multiturn"))
            for (const length of lengths) {
                const cases: NeedleCase[] = [];
                for (const depth of depths)
                    for (let s = 0; s < Number(args.seeds); s++)
                        cases.push(needleCase(model, text, task, length, depth, needleSeed(length, depth, s)));
                // the prompt-end configurations (and the full cache) share one evaluation of each prompt
                const atEnd = configs.filter((c) => c.setting === "prompt-end" && c.budget != null);
                const shared = atEnd.length > 0 ? [...configs.filter((c) => c.policy === "off"), ...atEnd] : [];
                const got = shared.length > 0 ? await runPromptEnd(model, shared, cases, opts) : [];
                for (const config of configs) {
                    const own = shared.includes(config) ? got.filter((r) => r.config === config.label && r.budget === config.budget)
                        : await runLongctx(model, config, cases, opts);
                    rows.push(...own);
                    progress(`${task} ${length} ${config.label}${config.budget == null ? "" : " " + config.budget}: ${pct(accuracy(own))}`);
                }
            }
    } finally {
        await model.dispose();
        await llama.dispose();
    }
    if (tasks.includes("multiturn"))
        rows.push(...await runMultiturn(configs.filter((c) => c.setting === "streaming"), text, modelPath, Number(args["multiturn-tokens"]), Number(args["multiturn-seeds"]), opts.threads,
            args["multiturn-form"] as MultiturnForm, opts.keepKv));

    // accuracy per task, configuration and budget, over every length and depth
    const labels = [...new Set(configs.filter((c) => c.budget != null).map((c) => c.label))];
    type Summary = { task: LongctxTask, config: string, full: number | null, byBudget: (number | null)[] };
    const summaries: Summary[] = [];
    for (const task of tasks) {
        const full = accuracy(rows.filter((r) => r.task === task && r.policy === "off"));
        summaries.push({ task, config: "full cache", full, byBudget: budgets.map(() => full) });
        for (const label of labels)
            summaries.push({ task, config: label, full, byBudget: budgets.map((b) => accuracy(rows.filter((r) => r.task === task && r.config === label && r.budget === b))) });
    }
    const byLength = (task: LongctxTask, label: string, budget: number | null, length: number) =>
        accuracy(rows.filter((r) => r.task === task && r.config === label && r.budget === budget && r.length === length));

    const report = {
        benchmark: "longctx", machine: machineInfo(), model: path.basename(modelPath),
        args, seconds: Math.round((Date.now() - started) / 1000), taskDocs, summaries, rows
    };
    const dir = resultsDir(String(args.out));
    fs.writeFileSync(path.join(dir, "longctx.json"), JSON.stringify(report, null, 2) + "\n");

    const columns = [
        { title: "task", value: (s: Summary) => s.task },
        { title: "policy", value: (s: Summary) => s.config },
        ...budgets.map((b, i) => ({ title: `${b * 100}% budget`, value: (s: Summary) => pct(s.byBudget[i]!) }))
    ];
    const textTasks = tasks.filter((t) => t !== "multiturn");
    let md = `# Long-context retrieval, ${report.model}\n\n`
        + `\`npm run bench:longctx -- ${process.argv.slice(2).map(shellWord).join(" ")}\` (${report.seconds} s, ${report.machine.cpu}, ${report.machine.date.slice(0, 10)}).\n`
        + (textTasks.length > 0
            ? `Accuracy over lengths ${lengths.join(", ")} and depths ${depths.join(", ")} (${Number(args.seeds)} seed(s) each); the budget is a fraction of the prompt.\n`
            : "")
        + (tasks.includes("multiturn")
            ? `Multi-turn: ${Number(args["multiturn-seeds"])} conversation(s) of about ${Number(args["multiturn-tokens"])} tokens (form ${args["multiturn-form"]}); the budget is a fraction of ${Number(args["multiturn-tokens"])} tokens.\n`
            : "")
        + "\n" + tasks.map((t) => `- **${t}**: ${taskDocs[t]}`).join("\n") + "\n\n"
        + markdownTable(summaries, columns) + "\n";
    if (textTasks.length > 0)
        md += "## By length\n\n";
    for (const task of textTasks) {
        const byLen: { config: string, budget: number | null }[] = [{ config: "full cache", budget: null },
            ...budgets.flatMap((b) => labels.map((config) => ({ config, budget: b })))];
        md += `### ${task}\n\n` + markdownTable(byLen, [
            { title: "policy", value: (r) => r.config },
            { title: "budget", value: (r) => r.budget == null ? "" : `${r.budget * 100}%` },
            ...lengths.map((l) => ({ title: String(l), value: (r: { config: string, budget: number | null }) => pct(byLength(task, r.config, r.budget, l)) }))
        ]) + "\n";
    }
    fs.writeFileSync(path.join(dir, "longctx.md"), md);

    for (const task of tasks) {
        const series = summaries.map((s) => ({ name: s.config, points: budgets.map((b, i) => ({ x: b * 100, y: (s.byBudget[i] ?? 0) * 100 })) }));
        await svgToPng(lineChartSvg({ title: `${task}: accuracy against budget (${report.model})`, xLabel: "budget, % of the prompt", yLabel: "accuracy, %", series }),
            path.join(dir, `accuracy-${task}.png`));
    }
    if (tasks.includes("needle"))
        for (const budget of budgets.filter((b) => b === 0.1 || b === 0.2)) {
            const panels = [{ label: "full cache", budget: null as number | null }, ...labels.map((label) => ({ label, budget }))].map((p) => ({
                name: p.label,
                values: depths.map((d) => lengths.map((l) => accuracy(rows.filter((r) => r.task === "needle" && r.config === p.label && r.budget === p.budget && r.length === l && r.depth === d))))
            }));
            await svgToPng(heatMapsSvg({
                title: `needle at ${budget * 100}% budget: accuracy (%) by depth and length (${report.model})`,
                rowLabel: "depth", columnLabel: "prompt tokens", rows: depths.map((d) => `${d * 100}%`), columns: lengths.map(String), panels
            }), path.join(dir, `needle-heatmap-${budget}.png`));
        }

    if (args.json)
        process.stdout.write(JSON.stringify(report, null, 2) + "\n");
    else
        process.stdout.write(textTable(summaries, columns));
}

main().catch((err: unknown) => {
    process.stderr.write(`bench:longctx: ${errorMessage(err)}\n`);
    process.exit(1);
});
