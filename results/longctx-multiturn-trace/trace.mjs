// Traces bench:longctx's multi-turn recall (named form) on the engine directly: the same messages, chat
// template and budget as the server, each turn's new tokens evaluated in the server's batches and the reply
// decoded token by token; after every turn, which of the fact's token positions the sequence still holds.
// node results/longctx-multiturn-trace/trace.mjs POLICY SEED [KEEPKV_OPTIONS_JSON] [BUDGET_CELLS]
import fs from "node:fs";
import { loadPatchedLlama } from "../../dist/server/engine/llama-loader.js";
import { createKeepKvContext, cellPositions, keepKvSequenceStats } from "../../dist/server/engine/keepkv.js";
import { claimSequence, nativeSequenceIdOf, removeCellsRaw } from "../../dist/server/engine/native-context.js";
import { rawDecode } from "../../dist/bench/lib/raw-decode.js";
import { PromptBuilder } from "../../dist/server/engine/prompt-builder.js";
import { resolveModel, resolveCorpus } from "../../dist/bench/lib/inputs.js";
import { seededRandom } from "../../dist/lib/seeded-random.js";
import { randomName, needleAnswered } from "../../dist/bench/lib/longctx-tasks.js";

const [policy = "evict", seedArg = "0", optsArg = "{}", budgetArg = "700"] = process.argv.slice(2);
const seed = 7000 + Number(seedArg);
const budget = policy === "off" ? undefined : Number(budgetArg);
const haystack = fs.readFileSync(resolveCorpus("kjv"), "utf8");
const llama = await loadPatchedLlama();
const model = await llama.loadModel({ modelPath: resolveModel("smollm2") });
const context = await createKeepKvContext(model, {
    contextSize: 8192, threads: 2, keepKv: policy === "off" ? { policy: "off" } : { policy, budget, ...JSON.parse(optsArg) }
});
const sequence = claimSequence(context);
const seq = nativeSequenceIdOf(sequence);
const builder = new PromptBuilder(model, "auto");

const random = seededRandom(seed);
const number = String(10000 + Math.floor(random() * 90000));
random(); // the conversation id's draw
const name = randomName(random);
const messages = [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: `Please remember this for later: the secret number of ${name} is ${number}.` }
];
let history = [];
const argmax = (a) => { let b = 0; for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i; return b; };
const factPositions = [];
async function turn(maxTokens) {
    const { tokens, stopTokenSequences } = builder.fromMessages(messages);
    let common = 0;
    while (common < history.length && common < tokens.length && history[common] === tokens[common])
        common++;
    // as node-llama-cpp does when the prompt leaves what the sequence holds (a reply tokenized another way):
    // the cells from there on go, and the prompt is evaluated from there
    if (common < history.length)
        await removeCellsRaw(context, seq, common, -1);
    let logits;
    for (let pos = common; pos < tokens.length; pos += context.batchSize)
        logits = await rawDecode(context, seq, pos, tokens.slice(pos, Math.min(tokens.length, pos + context.batchSize)));
    history = tokens.slice();
    const out = [];
    for (let i = 0; i < maxTokens; i++) {
        const t = argmax(logits);
        if (model.isEogToken(t) || stopTokenSequences.some((s) => s.length === 1 && s[0] === t))
            break;
        out.push(t);
        logits = await rawDecode(context, seq, history.length, [t]);
        history.push(t);
    }
    return { text: model.detokenize(out), promptTokens: tokens.length };
}
function factTokens(upTo) {
    // the fact's tokens in the first messages (the user's, and the reply's when it repeats it): each place
    // the number's digits sit, with the 8 tokens before it (the name)
    const { tokens } = builder.fromMessages(messages.slice(0, upTo));
    const digits = model.tokenize(number, false, "trimLeadingSpace");
    const found = [];
    for (let i = 0; i + digits.length <= tokens.length; i++)
        if (digits.every((d, j) => tokens[i + j] === d))
            found.push(...Array.from({ length: digits.length + 8 }, (_, j) => i - 8 + j));
    return found;
}
async function report(label) {
    if (budget == null) return;
    const positions = await cellPositions(sequence);
    const cells = new Set(positions);
    const stats = await keepKvSequenceStats(sequence);
    const kept = factPositions.filter((p) => cells.has(p));
    console.log(`${label}: ${positions.length} cells (${cells.size} positions, stats ${stats.cellsUsed}, ${stats.compressions} compressions), fact positions kept ${kept.length}/${factPositions.length} [${kept.join(",")}]`);
}
const first = await turn(32);
messages.push({ role: "assistant", content: first.text });
factPositions.push(...factTokens(3));
messages.pop();
console.log(`fact: ${name} ${number}; positions ${factPositions.join(",")}\nreply 1: ${JSON.stringify(first.text)}`);
messages.push({ role: "assistant", content: first.text });
await report("after turn 1");
let promptTokens = first.promptTokens;
const passageChars = 5000, target = 7000;
let n = 1;
while (history.length + passageChars / 4 + 100 < target) {
    const start = Math.floor(random() * (haystack.length - passageChars));
    messages.push({ role: "user", content: `Here is a passage:\n\n${haystack.slice(start, start + passageChars)}\n\nSummarise it in one sentence.` });
    const r = await turn(32);
    messages.push({ role: "assistant", content: r.text });
    n++;
    await report(`after turn ${n} (${history.length} tokens)`);
}
if (process.env.TRACE_CUT) {
    // full cache only: keep the first turn and the last TRACE_CUT tokens, as a probe of what the answer needs
    await removeCellsRaw(context, seq, 60, history.length - Number(process.env.TRACE_CUT));
    // TRACE_DROP=a-b,c-d: also remove these position ranges
    for (const r of (process.env.TRACE_DROP ?? "").split(",").filter(Boolean)) {
        const [a, b] = r.split("-").map(Number);
        await removeCellsRaw(context, seq, a, b + 1);
    }
    console.log(`kept positions 0-59 and the last ${process.env.TRACE_CUT}`);
}
messages.push({ role: "user", content: `What is the secret number of ${name}?` }, { role: "assistant", content: `The secret number of ${name} is` });
const last = await turn(8);
await report("at the answer");
if (budget != null && process.env.TRACE_CELLS) {
    const positions = await cellPositions(sequence);
    const bins = new Map();
    for (const p of positions) bins.set(Math.floor(p / 250) * 250, (bins.get(Math.floor(p / 250) * 250) ?? 0) + 1);
    console.log(`cells by 250 positions: ${[...bins].map(([b, n]) => `${b}:${n}`).join(" ")}`);
    console.log(`first 80 positions held: ${positions.filter((p) => p < 80).join(",")}`);
}
console.log(`answer: ${JSON.stringify(last.text)} ${needleAnswered(last.text, number) ? "right" : "wrong"} (${number})`);
await context.dispose();
await model.dispose();
await llama.dispose();
