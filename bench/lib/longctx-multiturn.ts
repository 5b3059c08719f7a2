// Multi-turn recall through the real server: a user gives a fact in the first turn, then thousands of tokens
// of later turns (passages to summarise) pass through the conversation's cache, reused turn after turn and
// compressed under the budget, and the last turn asks for the fact. The chat template, the conversation
// cache and the budget are the server's own; the reply's start is given ("Your secret number is"), so the
// score is exact: the first number of the reply.
import { seededRandom } from "../../lib/seeded-random.js";
import { needleAnswered, randomName } from "./longctx-tasks.js";

/**
 * How the fact is given and asked for. mine: "my secret number is N" ... "What is my secret number?" (the reply
 * starts "Your secret number is"); named: "the secret number of <name> is N" ... "What is the secret number of
 * <name>?" (the reply starts "The secret number of <name> is"), the form of the needle tasks, which SmolLM2
 * answers from its whole context.
 */
export const multiturnForms = ["mine", "named"] as const;
export type MultiturnForm = typeof multiturnForms[number];

type Message = { role: "system" | "user" | "assistant", content: string };

export type MultiturnResult = {
    seed: number, correct: boolean, reply: string, turns: number, promptTokens: number, cachedTokens: number,
    /** prompt tokens evaluated over the whole conversation (a reused cache evaluates only each turn's new ones) */
    evaluatedTokens: number
};

type Completion = {
    choices: { message: { content: string | null } }[],
    usage: { prompt_tokens: number, completion_tokens: number, prompt_tokens_details?: { cached_tokens?: number } }
};

async function complete(url: string, body: unknown): Promise<Completion> {
    const res = await fetch(`${url}/v1/chat/completions`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    });
    const json = await res.json() as Completion & { error?: { message: string } };
    if (res.status !== 200)
        throw new Error(`the server answered ${res.status}: ${json.error?.message ?? JSON.stringify(json)}`);
    return json;
}

/**
 * One conversation on the server at `url`: the fact, then passages of `passageChars` characters from
 * `haystack` until the conversation holds `targetTokens`, then the question.
 */
export async function multiturnRecall(url: string, haystack: string, seed: number, targetTokens: number, form: MultiturnForm = "mine",
    passageChars = 5000): Promise<MultiturnResult> {
    const random = seededRandom(seed);
    const number = String(10000 + Math.floor(random() * 90000));
    const conversation = `recall-${seed}-${Math.floor(random() * 1e9)}`;
    // drawn only for the named form, so that the mine form's passages stay those of its seed
    const name = form === "named" ? randomName(random) : "";
    const [fact, question, answerStart] = form === "mine"
        ? [`my secret number is ${number}`, "What is my secret number?", "Your secret number is"]
        : [`the secret number of ${name} is ${number}`, `What is the secret number of ${name}?`, `The secret number of ${name} is`];
    const messages: Message[] = [
        { role: "system", content: "You are a helpful assistant." },
        { role: "user", content: `Please remember this for later: ${fact}.` }
    ];
    let promptTokens = 0;
    let evaluated = 0;
    let turns = 0;
    const say = async (maxTokens: number) => {
        const c = await complete(url, { messages, max_tokens: maxTokens, temperature: 0, conversation_id: conversation });
        turns++;
        promptTokens = c.usage.prompt_tokens + c.usage.completion_tokens;
        evaluated += c.usage.prompt_tokens - (c.usage.prompt_tokens_details?.cached_tokens ?? 0);
        return { text: c.choices[0]!.message.content ?? "", cached: c.usage.prompt_tokens_details?.cached_tokens ?? 0 };
    };
    messages.push({ role: "assistant", content: (await say(32)).text });
    // each passage turn adds about passageChars/4 tokens; stop one passage short of the target
    while (promptTokens + passageChars / 4 + 100 < targetTokens) {
        const start = Math.floor(random() * (haystack.length - passageChars));
        messages.push({ role: "user", content: `Here is a passage:\n\n${haystack.slice(start, start + passageChars)}\n\nSummarise it in one sentence.` });
        messages.push({ role: "assistant", content: (await say(32)).text });
    }
    messages.push({ role: "user", content: question }, { role: "assistant", content: answerStart });
    const last = await say(8);
    return {
        seed, correct: needleAnswered(last.text, number), reply: last.text, turns, promptTokens,
        cachedTokens: last.cached, evaluatedTokens: evaluated
    };
}
