// The folders are the layers (docs/architecture.md): this reads every import of lib/, server/, scripts/,
// bench/ and test/ and checks it against the table of which folder may import which. A failure lists each
// offending import as file:line.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { builtinModules } from "node:module";
import * as os from "node:os";
import * as path from "node:path";
import { repoRoot } from "../../lib/paths.js";
import { importsOf, resolveSpecifier, sourceFiles, type ImportRef } from "../helpers/import-graph.js";

/** The server folders of the parent process (every folder of server/ but the engine child's). */
const parentFolders = ["server/config", "server/http", "server/ws", "server/scheduler", "server/metrics", "server/models",
    "server/security", "server/supervisor", "server/protocol"];

type Rule = {
    /** a folder, or one file, whose imports the rule governs (the longest match wins) */
    from: string,
    /** folders or files of ours it may import */
    may: readonly string[],
    why: string
};

const rules: readonly Rule[] = [
    { from: "lib", may: ["lib"], why: "lib/ imports nothing of ours" },
    { from: "server", may: ["lib", "server/*", ...parentFolders], why: "the parent process (server/*.ts) imports lib/ and the parent folders, never server/engine, scripts, bench or test" },
    ...parentFolders.map((from) => ({ from, may: ["lib", "server/*", ...parentFolders], why: `${from} (parent process) imports lib/ and the parent folders, never server/engine, scripts, bench or test` })),
    { from: "server/protocol", may: ["lib", "server/protocol"], why: "server/protocol (the contracts of both processes) imports lib/ and server/protocol only" },
    { from: "server/engine", may: ["lib", "server/protocol", "server/engine"], why: "server/engine (the engine child) imports lib/, server/protocol and server/engine only" },
    { from: "scripts", may: ["lib", "scripts"], why: "scripts/ imports lib/ and scripts/ only" },
    { from: "scripts/write-options-doc.ts", may: ["lib", "scripts", "server/config"], why: "the docs generator imports lib/, scripts/ and the option table (server/config)" },
    { from: "bench", may: ["lib", "server/engine", "server/protocol", "bench", "scripts/lib"], why: "bench/ imports lib/, server/engine (it drives the engine directly), server/protocol (the wire contracts), scripts/lib and bench/" },
    { from: "test", may: ["lib", "server", "scripts", "bench", "test"], why: "test/ may import anything of ours" }
];

/** A place is a folder (everything under it), a file, or `folder/*` (the files directly in the folder). */
function within(file: string, place: string): boolean {
    if (place.endsWith("/*")) {
        const folder = place.slice(0, -1);
        return file.startsWith(folder) && !file.slice(folder.length).includes("/");
    }
    return file === place || file.startsWith(`${place}/`);
}

function ruleOf(file: string): Rule | null {
    let best: Rule | null = null;
    for (const rule of rules)
        if ((file === rule.from || file.startsWith(`${rule.from}/`)) && (best == null || rule.from.length > best.from.length))
            best = rule;
    return best;
}

const builtins = new Set(builtinModules);

type Violation = { file: string, ref: ImportRef, message: string };

/** Every import of the given files that breaks the table, with a message that says why. */
export function layerViolations(root: string, files: readonly string[]): Violation[] {
    const violations: Violation[] = [];
    for (const file of files) {
        const rule = ruleOf(file);
        if (rule == null)
            continue;
        const text = fs.readFileSync(path.join(root, file), "utf8");
        for (const ref of importsOf(text)) {
            const fail = (message: string) => violations.push({ file, ref, message });
            if (!ref.specifier.startsWith(".")) {
                // lib: node's own modules only at run time (types of a package are erased)
                if (rule.from === "lib" && !ref.typeOnly && !ref.specifier.startsWith("node:") && !builtins.has(ref.specifier))
                    fail(`lib/ imports the package "${ref.specifier}" at run time: lib/ loads node's own modules only (type imports aside)`);
                continue;
            }
            const target = resolveSpecifier(root, file, ref.specifier);
            if (target == null) {
                fail(`"${ref.specifier}" names no source file`);
                continue;
            }
            if (!rule.may.some((place) => within(target, place)))
                fail(`imports ${target}: ${rule.why}`);
        }
    }
    return violations;
}

describe("layers", function () {
    const files = sourceFiles(repoRoot, ["lib", "server", "scripts", "bench", "test"]);

    it("finds the sources and their imports", function () {
        for (const folder of ["lib/", "server/engine/", "server/supervisor/", "server/protocol/", "scripts/", "bench/", "test/e2e/", "test/unit/"])
            assert.ok(files.some((f) => f.startsWith(folder)), `a source under ${folder}`);
        const own = importsOf(fs.readFileSync(path.join(repoRoot, "test", "unit", "layers.test.ts"), "utf8"));
        assert.ok(own.some((r) => r.specifier === "../helpers/import-graph.js" && r.line > 1), "this file's own multi-name import");
    });

    it("every import follows the table of which folder may import which", function () {
        for (const file of files)
            assert.ok(ruleOf(file) != null, `${file} is in a layer of the table`);
        const violations = layerViolations(repoRoot, files);
        assert.equal(violations.length, 0, `imports against the layers (docs/architecture.md):\n${
            violations.map((v) => `  ${v.file}:${v.ref.line}: ${v.message}`).join("\n")}`);
    });

    it("reads multi-line, type-only, export-from and dynamic imports, and skips comments and templates", function () {
        const text = [
            "import {",
            "    a,",
            "    b",
            "} from \"./multi.js\";",
            "import type { T } from \"./types.js\";",
            "export { c } from \"./reexport.js\";",
            "export * from \"./star.js\";",
            "import \"./side-effect.js\";",
            "const m = await import(\"./dynamic.js\");",
            "// import { gone } from \"./comment.js\";",
            "/* import \"./block.js\"; */",
            "const probe = `import { x } from \"./template.js\";`;",
            "const s = Array.from(\"abc\");"
        ].join("\n");
        assert.deepEqual(importsOf(text).map((r) => [r.specifier, r.line, r.typeOnly]), [
            ["./multi.js", 4, false], ["./types.js", 5, true], ["./reexport.js", 6, false], ["./star.js", 7, false],
            ["./side-effect.js", 8, false], ["./dynamic.js", 9, false]
        ]);
    });

    it("reports a wrong import with its file and line", function () {
        const root = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-layers-"));
        try {
            fs.mkdirSync(path.join(root, "server", "http"), { recursive: true });
            fs.mkdirSync(path.join(root, "server", "engine"), { recursive: true });
            fs.mkdirSync(path.join(root, "lib"), { recursive: true });
            fs.writeFileSync(path.join(root, "server", "engine", "keepkv.ts"), "export const x = 1;\n");
            fs.writeFileSync(path.join(root, "lib", "paths.ts"), "import \"node-llama-cpp\";\nexport const y = 2;\n");
            fs.writeFileSync(path.join(root, "server", "http", "app.ts"), "import * as fs from \"node:fs\";\nimport { x } from \"../engine/keepkv.js\";\n");
            const found = layerViolations(root, ["lib/paths.ts", "server/engine/keepkv.ts", "server/http/app.ts"]);
            assert.deepEqual(found.map((v) => `${v.file}:${v.ref.line}`), ["lib/paths.ts:1", "server/http/app.ts:2"]);
            assert.match(found[1]!.message, /imports server\/engine\/keepkv\.ts: .*never server\/engine/);
        } finally {
            fs.rmSync(root, { recursive: true, force: true });
        }
    });
});
