// The README documents what the code does: the KeepKV options table matches their declarations, and the
// two commands it gives a new user are the ones CI runs.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { buildLogPath } from "../../scripts/build-llama.js";
import { failureTailLines } from "../../scripts/lib/logged-run.js";
import { repoRoot } from "../../lib/paths.js";
import { keepKvOptionDocs } from "../../lib/keepkv-options.js";

const readme = fs.readFileSync(path.join(repoRoot, "README.md"), "utf8");

describe("README", function () {
    it("lists every KeepKV option with its declared default and description", function () {
        const section = /<!-- keepkv-options:begin -->\n([\s\S]*?)<!-- keepkv-options:end -->/.exec(readme)?.[1];
        assert.ok(section != null, "the options table is in the README");
        const rows = new Map(section.trim().split("\n").map((line) => {
            const cells = line.split("|").slice(1, -1).map((c) => c.trim());
            return [cells[0]!.replace(/`/g, ""), cells] as const;
        }));
        for (const [name, doc] of Object.entries(keepKvOptionDocs)) {
            const row = rows.get(name);
            assert.ok(row != null, `README row for ${name}`);
            assert.ok(row[1]!.includes(`\`${doc.default}\``), `${name}: default ${doc.default} in "${row[1]}"`);
            assert.equal(row[2], doc.doc, `${name}: the description is the declared one`);
        }
        assert.equal(rows.size, Object.keys(keepKvOptionDocs).length, "no undeclared options in the README");
    });

    it("gives a new user the setup and test commands that CI runs", function () {
        const quick = /## Quick start[\s\S]*?```sh\n(.*)\n```[\s\S]*?```sh\n(.*)\n```/.exec(readme);
        assert.ok(quick != null);
        assert.equal(quick[1], "./scripts/setup.sh");
        assert.equal(quick[2], "npm test");
        const ci = fs.readFileSync(path.join(repoRoot, ".ci", "run"), "utf8");
        assert.ok(ci.includes("./scripts/setup.sh >"), "CI runs the setup command");
        assert.ok(/\nnpm test\n/.test(ci), "CI runs the test command");
    });

    it("says what the setup and the build print, and where their full output goes", function () {
        for (const flavor of ["keepkv", "vanilla"] as const) {
            const log = path.relative(repoRoot, buildLogPath(flavor));
            assert.ok(readme.includes(`\`${log}\``) || (flavor === "vanilla" && readme.includes("`-vanilla.log`")), `the README names ${log}`);
        }
        assert.ok(readme.replace(/\s+/g, " ").includes(`last ${failureTailLines} lines of its log`), "what a failed step prints");
        const setup = fs.readFileSync(path.join(repoRoot, "scripts", "setup.sh"), "utf8");
        assert.ok(setup.includes(`tail -n ${failureTailLines}`), "the setup script shows as many lines of a failed step's log");
    });
});
