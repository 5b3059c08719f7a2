// Turns generated tokens into text deltas: waits out tokens that end inside a multi-byte UTF-8
// character, and holds back text that could be the start of a stop string.
import type { LlamaModel, Token } from "node-llama-cpp";

const replacementChar = "\uFFFD";
/** a UTF-8 character spans at most 4 byte tokens */
const maxPendingTokens = 4;
/** tokens of context given to the detokenizer, for its leading-space rules */
const contextTokens = 8;

export class TokenTextStream {
    private pending: Token[] = [];
    private history: Token[];

    constructor(private readonly model: LlamaModel, previous: readonly Token[]) {
        this.history = previous.slice(-contextTokens);
    }

    /** The text that `token` completes; "" while a character is still incomplete. */
    push(token: Token): string {
        this.pending.push(token);
        const text = this.model.detokenize(this.pending, false, this.history);
        if (text.endsWith(replacementChar) && this.pending.length < maxPendingTokens)
            return "";
        this.history = [...this.history, ...this.pending].slice(-contextTokens);
        this.pending = [];
        return text;
    }

    /** Whatever is still pending (an incomplete character at the very end). */
    flush(): string {
        if (this.pending.length === 0)
            return "";
        const text = this.model.detokenize(this.pending, false, this.history);
        this.pending = [];
        return text;
    }
}

/**
 * Finds stop strings in streamed text. Text is released only when it can no longer be the beginning of
 * a stop string, so a client never sees part of a stop string.
 */
export class StopStringMatcher {
    private held = "";

    constructor(private readonly stops: readonly string[]) {}

    /** `stopped`: a stop string was found; `text` is what comes before it (or what may be released). */
    push(text: string): { text: string, stopped: boolean } {
        if (this.stops.length === 0)
            return { text, stopped: false };
        const buffer = this.held + text;
        let first = -1;
        for (const stop of this.stops) {
            const at = buffer.indexOf(stop);
            if (at >= 0 && (first < 0 || at < first))
                first = at;
        }
        if (first >= 0) {
            this.held = "";
            return { text: buffer.slice(0, first), stopped: true };
        }
        const keep = this.partialSuffixLength(buffer);
        this.held = buffer.slice(buffer.length - keep);
        return { text: buffer.slice(0, buffer.length - keep), stopped: false };
    }

    flush(): string {
        const text = this.held;
        this.held = "";
        return text;
    }

    private partialSuffixLength(buffer: string): number {
        let longest = 0;
        for (const stop of this.stops) {
            for (let len = Math.min(stop.length - 1, buffer.length); len > longest; len--) {
                if (buffer.endsWith(stop.slice(0, len))) {
                    longest = len;
                    break;
                }
            }
        }
        return longest;
    }
}
