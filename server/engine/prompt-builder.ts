// Turns a request's messages or prompt into the tokens to evaluate.
//
// Chat formatting: models with a chat template in their GGUF (real chat models dropped into the models
// folder) get it through node-llama-cpp's resolveChatWrapper. Models without one, like the TinyStories
// checkpoints, are text-continuation models: wrapping them in an invented template (node-llama-cpp
// guesses Llama2Chat's [INST] for them) only adds tokens they never saw, so "plain" puts the messages
// one after another, a blank line before each system or user message and nothing before an assistant
// message (the model's own continuation), and the model continues the text. A conversation's next turn
// is then its previous text plus more, which lets the engine reuse the cached tokens exactly.
// "general" forces GeneralChatWrapper.
import {
    GeneralChatWrapper, LlamaText, resolveChatWrapper,
    type ChatHistoryItem, type ChatWrapper, type LlamaModel, type Token
} from "node-llama-cpp";
import type { ChatTemplateMode } from "../protocol/engine-ipc.js";
import type { ChatMessage } from "../protocol/ws-messages.js";

export type BuiltPrompt = {
    tokens: Token[],
    /** the prompt as plain text when the format is plain text (null for chat templates) */
    text: string | null,
    /** text stop strings the format needs (besides the model's end-of-generation tokens) */
    stopStrings: string[],
    /** token sequences that end generation (stop triggers with special tokens) */
    stopTokenSequences: Token[][]
};

export class PromptBuilder {
    private readonly wrapper: ChatWrapper | null;
    readonly chatFormat: string;

    constructor(private readonly model: LlamaModel, mode: ChatTemplateMode) {
        const hasTemplate = typeof model.fileInfo.metadata?.tokenizer?.chat_template === "string";
        if (mode === "general")
            this.wrapper = new GeneralChatWrapper();
        else if (mode === "auto" && hasTemplate)
            this.wrapper = resolveChatWrapper(model, { warningLogs: false });
        else
            this.wrapper = null;
        this.chatFormat = this.wrapper == null ? "plain" : mode === "general" ? "general" : this.wrapper.wrapperName;
    }

    /** Plain text: the beginning-of-sequence token when the model wants one, then the text. */
    fromText(text: string): BuiltPrompt {
        const bos = this.model.tokens.bos;
        const prepend = bos != null && this.model.tokens.shouldPrependBosToken;
        const tokens = this.model.tokenize(text, false, prepend ? "trimLeadingSpace" : undefined);
        return { tokens: prepend ? [bos, ...tokens] : tokens, text, stopStrings: [], stopTokenSequences: [] };
    }

    /** Tokens of text that continues text already in a sequence (no BOS, no leading-space marker). */
    continuation(text: string): Token[] {
        return this.model.tokenize(text, false, "trimLeadingSpace");
    }

    fromMessages(messages: readonly ChatMessage[]): BuiltPrompt {
        if (this.wrapper == null) {
            let text = "";
            for (const m of messages)
                text += m.role === "assistant" || text === "" ? m.content : "\n\n" + m.content;
            return this.fromText(text);
        }

        const history: ChatHistoryItem[] = messages.map((m): ChatHistoryItem => {
            if (m.role === "system")
                return { type: "system", text: m.content };
            if (m.role === "user")
                return { type: "user", text: m.content };
            return { type: "model", response: [m.content] };
        });
        if (messages[messages.length - 1]?.role !== "assistant")
            history.push({ type: "model", response: [] });
        const state = this.wrapper.generateContextState({ chatHistory: history });
        const stopStrings: string[] = [];
        const stopTokenSequences: Token[][] = [];
        for (const trigger of state.stopGenerationTriggers) {
            const text = LlamaText(trigger);
            if (text.values.every((v) => typeof v === "string"))
                stopStrings.push(text.toString());
            else
                stopTokenSequences.push(text.tokenize(this.model.tokenizer));
        }
        const tokens = state.contextText.tokenize(this.model.tokenizer);
        // node-llama-cpp's wrappers open the context with BOS whatever the model says. A model whose GGUF asks
        // for no BOS (add_bos_token false) can use the same token in its template: SmolLM2's BOS is
        // <|im_start|>, so the ChatML wrapper's prompt began <|im_start|><|im_start|>system, and greedy
        // decoding answered "What is the capital of France?" in broken French instead of "Paris"
        if (!this.model.tokens.shouldPrependBosToken && tokens.length > 0 && tokens[0] === this.model.tokens.bos)
            tokens.shift();
        return {
            tokens,
            text: null,
            stopStrings: stopStrings.filter((s) => s !== ""),
            stopTokenSequences: stopTokenSequences.filter((s) => s.length > 0)
        };
    }
}
