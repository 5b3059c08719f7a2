// Reads the import graph of the TypeScript sources: every static import and export-from specifier, and
// every dynamic import() of a literal path, with its line. A scanner rather than the compiler, because the
// rules are about specifiers only and the scanner needs nothing but the text: comments are blanked, and
// template literals too (tests build probe programs in them whose imports are not the file's own).
import * as fs from "node:fs";
import * as path from "node:path";

export type ImportRef = {
    /** as written */
    specifier: string,
    /** 1-based line of the specifier */
    line: number,
    /** `import type` / `export type`: erased at compile time */
    typeOnly: boolean
};

/** The text with comments and template literals replaced by spaces (newlines kept, so lines still count). */
export function blankCommentsAndTemplates(text: string): string {
    const out = text.split("");
    const blank = (from: number, to: number) => {
        for (let k = from; k < to; k++)
            if (out[k] !== "\n")
                out[k] = " ";
    };
    let i = 0;
    while (i < text.length) {
        const c = text[i]!;
        const next = text[i + 1];
        if (c === "/" && next === "/") {
            const end = text.indexOf("\n", i);
            const stop = end < 0 ? text.length : end;
            blank(i, stop);
            i = stop;
        } else if (c === "/" && next === "*") {
            const end = text.indexOf("*/", i + 2);
            const stop = end < 0 ? text.length : end + 2;
            blank(i, stop);
            i = stop;
        } else if (c === "\"" || c === "'") {
            // a plain string stays: specifiers are plain strings
            let j = i + 1;
            while (j < text.length && text[j] !== c && text[j] !== "\n")
                j += text[j] === "\\" ? 2 : 1;
            i = j + 1;
        } else if (c === "`") {
            // nested ${...} with templates inside are rare enough in this tree to be blanked with their template
            let j = i + 1;
            let depth = 0;
            while (j < text.length) {
                if (text[j] === "\\") {
                    j += 2;
                    continue;
                }
                if (depth === 0 && text[j] === "`")
                    break;
                if (text[j] === "$" && text[j + 1] === "{") {
                    depth++;
                    j += 2;
                    continue;
                }
                if (depth > 0 && text[j] === "}")
                    depth--;
                j++;
            }
            blank(i, j + 1);
            i = j + 1;
        } else {
            i++;
        }
    }
    return out.join("");
}

const patterns = [
    // import x from "m", import { a, b } from "m" (across lines), export { a } from "m", export * from "m"
    /\b(import|export)\b(\s+type\b)?[^;"'`]*?\bfrom\s*(["'])([^"'\n]+)\3/g,
    // import "m" (for its side effects)
    /\b(import)()\s*(["'])([^"'\n]+)\3/g,
    // import("m") with a literal
    /(?<![.\w])(import)()\s*\(\s*(["'])([^"'\n]+)\3\s*\)/g
];

/** The import and export-from specifiers of a TypeScript source, in order of appearance. */
export function importsOf(text: string): ImportRef[] {
    const code = blankCommentsAndTemplates(text);
    const found = new Map<number, ImportRef>();
    for (const pattern of patterns)
        for (const m of code.matchAll(pattern)) {
            const at = m.index + m[0].lastIndexOf(m[3]! + m[4]!);
            if (found.has(at))
                continue;
            found.set(at, {
                specifier: m[4]!,
                line: code.slice(0, at).split("\n").length,
                typeOnly: m[2] != null && m[2] !== ""
            });
        }
    return [...found.entries()].sort((a, b) => a[0] - b[0]).map(([, ref]) => ref);
}

/** Every .ts file under the given folders of the repository, as repository-relative paths with "/". */
export function sourceFiles(repoRoot: string, folders: readonly string[]): string[] {
    const files: string[] = [];
    const walk = (dir: string) => {
        for (const entry of fs.readdirSync(path.join(repoRoot, dir), { withFileTypes: true })) {
            const rel = `${dir}/${entry.name}`;
            if (entry.isDirectory())
                walk(rel);
            else if (entry.isFile() && entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts"))
                files.push(rel);
        }
    };
    for (const folder of folders)
        if (fs.existsSync(path.join(repoRoot, folder)))
            walk(folder);
    return files.sort();
}

/**
 * The repository file a relative specifier names (`./x.js` -> `dir/x.ts`), or null when it names no source
 * file; a package or `node:` specifier is not resolved here.
 */
export function resolveSpecifier(repoRoot: string, fromFile: string, specifier: string): string | null {
    const target = path.posix.normalize(path.posix.join(path.posix.dirname(fromFile), specifier));
    for (const candidate of [target.replace(/\.js$/, ".ts"), target, `${target}.ts`, `${target}/index.ts`])
        if (fs.existsSync(path.join(repoRoot, candidate)) && fs.statSync(path.join(repoRoot, candidate)).isFile())
            return candidate;
    return null;
}
