// Server-sent events as the WHATWG spec reads them, for the clients of the load test and the tests: an event
// is a block of lines ended by a blank line; lines that start with ":" are comments (the server sends
// ": prompt N/M" while it evaluates a long prompt), and the "data:" lines make the event's data.

/** The data of one event block (its "data:" lines joined by newlines), or null for a block without data (comments only). */
export function sseData(block: string): string | null {
    const data: string[] = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
        if (line === "data" || line.startsWith("data:"))
            data.push(line.slice(5).replace(/^ /, ""));
    }
    return data.length > 0 ? data.join("\n") : null;
}
