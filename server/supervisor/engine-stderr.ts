// What the engine writes to stderr, kept for two readers: the last lines go with the report of an
// exit (a native assert lands there), and the lines since a mark explain a failed model load
// (llama.cpp says why on stderr, not in the exception node-llama-cpp raises).

const tailLength = 20;
const sinceMarkLength = 50;

/** Splits one process's stderr chunks into lines (a line may span chunks). */
export class LineSplitter {
    private buffer = "";

    /** The complete, non-blank lines that `chunk` ends. */
    push(chunk: string): string[] {
        this.buffer += chunk;
        const lines = this.buffer.split("\n");
        this.buffer = lines.pop()!;
        return lines.filter((line) => line.trim() !== "");
    }
}

export class StderrLog {
    private tailValue: string[] = [];
    private sinceMarkValue: string[] = [];

    /** the last lines, oldest first */
    get tail(): readonly string[] { return this.tailValue; }
    /** the first lines since mark() */
    get sinceMark(): readonly string[] { return this.sinceMarkValue; }

    add(line: string): void {
        this.tailValue.push(line);
        if (this.tailValue.length > tailLength)
            this.tailValue.shift();
        if (this.sinceMarkValue.length < sinceMarkLength)
            this.sinceMarkValue.push(line);
    }

    /** A new process: its tail starts empty. */
    clearTail(): void {
        this.tailValue = [];
    }

    mark(): void {
        this.sinceMarkValue = [];
    }
}

/** `message` with the last two distinct things node-llama-cpp and llama.cpp wrote to stderr about it. */
export function withStderrReason(message: string, lines: readonly string[]): string {
    const why = [...new Set(lines.map((l) => l.replace(/^\[node-llama-cpp\]\s*/, "")))].slice(-2);
    return why.length > 0 ? `${message} (${why.join("; ")})` : message;
}
