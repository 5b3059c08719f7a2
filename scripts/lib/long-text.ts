// A long public-domain text for the 8k-token benchmarks: the King James Bible from Debian's bible-kjv
// package (about 4.3 MB, about a million SmolLM2 tokens). The TinyStories corpus in ../shared is held-out
// text for stories3M but its stories are a few hundred tokens each, too short to fill a long context.
//
// The package stores the text compressed and prints it through its `bible` program, so the text is
// written once, normalised to prose (verse numbers dropped, wrapped lines joined, one paragraph a chapter),
// into the cache beside the models. The same package version gives the same file, byte for byte.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { keepkvCacheDir } from "../../lib/cache-dir.js";

export class LongTextError extends Error {
    readonly code = "LONG_TEXT_UNAVAILABLE";
    constructor(message: string) {
        super(message);
        this.name = "LongTextError";
    }
}

/** Where generated texts are kept: KEEPKV_CORPUS_CACHE, else the keepkv cache folder. */
export function corpusCacheDir(): string {
    return keepkvCacheDir("corpus", "KEEPKV_CORPUS_CACHE");
}

export const kjvFileName = "kjv.txt";

/** `bible` output to prose: "Genesis 1" headings start a paragraph, verse numbers and line wraps go. */
export function normaliseBibleOutput(raw: string): string {
    const paragraphs: string[] = [];
    let current: string[] = [];
    const flush = () => {
        if (current.length > 0)
            paragraphs.push(current.join(" "));
        current = [];
    };
    for (const line of raw.split("\n")) {
        const trimmed = line.trim();
        if (trimmed === "")
            continue;
        if (!line.startsWith(" ") && /^[1-3]? ?[A-Z][A-Za-z ]+ \d+$/.test(trimmed)) {
            flush();
            paragraphs.push(trimmed);
            continue;
        }
        current.push(trimmed.replace(/^\d+ /, ""));
    }
    flush();
    return paragraphs.join("\n\n") + "\n";
}

/**
 * The path of the normalised King James text, writing it first when it is not there. Throws LongTextError
 * naming the Debian package when the `bible` program is missing.
 */
export function ensureKjvText(): string {
    const dir = corpusCacheDir();
    const file = path.join(dir, kjvFileName);
    if (fs.existsSync(file) && fs.statSync(file).size > 1_000_000)
        return file;
    const out = spawnSync("bible", ["gen1:1-rev22:21"], { encoding: "utf8", maxBuffer: 64 * 2 ** 20, stdio: ["ignore", "pipe", "pipe"] });
    if (out.error != null || out.status !== 0)
        throw new LongTextError(
            `cannot write the long benchmark text: the \`bible\` program of the Debian package bible-kjv ${out.error != null ? "is not installed" : `failed (exit ${out.status}: ${out.stderr.trim()})`}. ` +
            "Install it (apt-get install bible-kjv; ./scripts/setup.sh does), or pass another long text with --corpus PATH.");
    const text = normaliseBibleOutput(out.stdout);
    if (text.length < 1_000_000)
        throw new LongTextError(`the \`bible\` program printed only ${text.length} characters; expected the whole King James text (over 4 MB)`);
    fs.mkdirSync(dir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
    return file;
}
