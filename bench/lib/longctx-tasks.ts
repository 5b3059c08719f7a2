// Seeded long-context retrieval tasks for a chat model, scored exactly: a fact (a person's secret number) is
// hidden at a chosen depth of a long public-domain text, and the model is asked for it. Shared by
// bench/longctx.ts and the fast test, so both ask the same questions.
//
// The fact is named ("the secret number of Clara Montague is 48213"), not an anonymous pass key: SmolLM2-135M
// answers the named form from its whole 8k context with the full cache, and fails the classic pass-key
// prompt even at 60 tokens (measured), so a pass key would measure the model, not the cache.
import type { LlamaModel, Token } from "node-llama-cpp";
import { seededRandom } from "../../lib/seeded-random.js";

export const needleTasks = ["needle", "multikey", "before", "hop"] as const;
export type NeedleTask = typeof needleTasks[number];

export const needleTaskDocs: Record<NeedleTask, string> = {
    needle: "one fact at the depth, the question after the text",
    multikey: "four facts about four people (three distractors spread over the text), the question about the one at the depth",
    before: "one fact at the depth, the question before the text (unknown when the cache compresses) and only the answer's start after it",
    hop: "two hops: the fact at the depth, elsewhere a second person whose number is the same as the first's and two distractor facts; the question about the second"
};

export type NeedleCase = {
    task: NeedleTask,
    length: number,
    depth: number,
    seed: number,
    /** the whole prompt: the chat template, the text with the facts, the question and the answer's first words */
    prompt: Token[],
    /** the digits the model must produce */
    answer: string,
    /** the position of the asked fact's first token in the prompt */
    needleAt: number
};

const firstNames = ["Elizabeth", "Thomas", "Margaret", "Henry", "Alice", "George", "Clara", "Walter", "Edith", "Arthur",
    "Harriet", "Samuel", "Beatrice", "Oliver", "Florence", "Edmund"];
const lastNames = ["Barnaby", "Whitfield", "Osborne", "Castellan", "Pemberton", "Lindqvist", "Montague", "Ashdown",
    "Marlowe", "Fenwick", "Thornbury", "Galloway", "Kingsley", "Radcliffe", "Winslow", "Hartigan"];

/** A first and a last name of the tasks' people, drawn from `random` (two draws, in that order). */
export function randomName(random: () => number): string {
    const pick = (items: readonly string[]) => items[Math.floor(random() * items.length)]!;
    return `${pick(firstNames)} ${pick(lastNames)}`;
}

/**
 * Builds one case of `length` prompt tokens. The text is taken from a seeded place in `haystack` and cut at
 * token boundaries; the asked fact sits at `depth` (0: the text's start, 1: its end) of the text.
 */
export function needleCase(model: LlamaModel, haystack: string, task: NeedleTask, length: number, depth: number, seed: number): NeedleCase {
    if (!(depth >= 0 && depth <= 1))
        throw new Error(`depth must be in [0, 1], got ${depth}`);
    const random = seededRandom(seed);
    const people: { name: string, number: string }[] = [];
    while (people.length < (task === "multikey" || task === "hop" ? 4 : 1)) {
        const name = randomName(random);
        if (people.every((p) => p.name !== name && p.name.split(" ")[0] !== name.split(" ")[0]))
            people.push({ name, number: String(10000 + Math.floor(random() * 90000)) });
    }
    // hop: people[0] holds the number, people[1] is asked for it by way of people[0], the others distract
    const asked = task === "hop" ? people[1]! : people[0]!;
    const tokenize = (s: string) => model.tokenize(s, true) as Token[];
    const fact = (p: { name: string, number: string }, i: number) => task === "hop" && i === 1
        ? tokenize(` The secret number of ${p.name} is the same as the secret number of ${people[0]!.name}. `)
        : tokenize(` The secret number of ${p.name} is ${p.number}. `);

    const head = tokenize("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        + (task === "before" ? `Find the secret number of ${asked.name} in this text.\n\n` : ""));
    const tail = task === "before"
        ? tokenize("<|im_end|>\n<|im_start|>assistant\nThe secret number is")
        : tokenize(`\n\nWhat is the secret number of ${asked.name}?<|im_end|>\n<|im_start|>assistant\nThe secret number of ${asked.name} is`);
    const facts = people.map(fact);
    const textTokens = length - head.length - tail.length - facts.reduce((n, f) => n + f.length, 0);
    if (textTokens < 16)
        throw new Error(`a ${length}-token prompt leaves no room for the text`);

    // a stretch of the haystack from a seeded place, long enough in characters for the tokens wanted
    const chars = textTokens * 8;
    if (haystack.length < chars * 2)
        throw new Error(`the text is too short for a ${length}-token case`);
    const start = Math.floor(random() * (haystack.length - chars));
    const text = model.tokenize(haystack.slice(start, start + chars)).slice(0, textTokens) as Token[];
    if (text.length < textTokens)
        throw new Error(`the text gave ${text.length} tokens, ${textTokens} wanted`);

    // the asked fact (hop: the number its question leads to) at the depth; the others at seeded depths at least a tenth of the text away from it
    const places = [{ at: Math.round(depth * text.length), tokens: facts[0]! }];
    for (const f of facts.slice(1)) {
        let d: number;
        do d = random(); while (Math.abs(d - depth) < 0.1);
        places.push({ at: Math.round(d * text.length), tokens: f });
    }
    places.sort((a, b) => a.at - b.at || (a.tokens === facts[0] ? 1 : -1));
    const prompt: Token[] = [...head];
    let needleAt = -1;
    let from = 0;
    for (const p of places) {
        prompt.push(...text.slice(from, p.at));
        if (p.tokens === facts[0])
            needleAt = prompt.length;
        prompt.push(...p.tokens);
        from = p.at;
    }
    prompt.push(...text.slice(from), ...tail);
    return { task, length, depth, seed, prompt, answer: people[0]!.number, needleAt };
}

/** The seed of the case at a length and depth (and a repeat index), as bench:longctx numbers them. */
export function needleSeed(length: number, depth: number, repeat = 0): number {
    return 1000 * length + Math.round(depth * 100) * 10 + repeat;
}

/** Exact scoring: the first number in the reply is the answer. */
export function needleAnswered(reply: string, answer: string): boolean {
    return /\d+/.exec(reply)?.[0] === answer;
}
