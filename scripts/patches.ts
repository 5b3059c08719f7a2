// Work on the patch series as git commits.
//
//   node dist/scripts/patches.js checkout   # .work/llama.cpp and .work/node-llama-cpp, one commit per patch
//   node dist/scripts/patches.js export     # rewrite patches/ from the commits after the keepkv-base tag
//   node dist/scripts/patches.js sync       # copy .work/ sources into node_modules for a quick rebuild
//   node dist/scripts/patches.js apply      # apply patches/node-llama-cpp to node_modules (npm run build does,
//                                           # before it compiles what needs the patched .d.ts)
//
// Each work tree has a `keepkv-base` tag on the pristine source; every commit after it becomes one
// numbered patch (git format-patch), whose commit message is the patch header: what, why, how tested.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { applyNodeLlamaCppSeries, cloneBundledLlamaCpp, pristineDirName } from "./build-llama.js";
import { describeParseArgsError, isParseArgsError } from "./lib/command-line.js";
import { listPatches } from "../lib/build-key.js";
import { llamaPatchesDir, nlcLlamaCppDir, nlcPackageDir, nlcPatchesDir, workDir } from "../lib/paths.js";
import {
    applySeriesToGitTree, ensurePristineSnapshot, git, nlcTrackedPaths, restorePristineSnapshot
} from "./lib/patch-series.js";
import { errorMessage } from "../lib/error-message.js";

const workLlama = path.join(workDir, "llama.cpp");
const workNlc = path.join(workDir, "node-llama-cpp");


function checkout(): void {
    fs.mkdirSync(workDir, { recursive: true });

    if (fs.existsSync(workLlama) && git(workLlama, "status", "--porcelain").trim() !== "")
        throw new Error(`${workLlama} has uncommitted changes: commit or discard them first`);
    cloneBundledLlamaCpp(workLlama);
    applySeriesToGitTree(workLlama, listPatches(llamaPatchesDir), { commit: true });

    if (fs.existsSync(workNlc) && git(workNlc, "status", "--porcelain").trim() !== "")
        throw new Error(`${workNlc} has uncommitted changes: commit or discard them first`);
    fs.rmSync(workNlc, { recursive: true, force: true });
    fs.mkdirSync(workNlc, { recursive: true });
    // the pristine package, as npm installed it
    const pristine = path.join(nlcPackageDir, pristineDirName);
    ensurePristineSnapshot(nlcPackageDir, pristine, nlcTrackedPaths);
    restorePristineSnapshot(workNlc, pristine, nlcTrackedPaths);
    git(workNlc, "init", "-q", "-b", "keepkv");
    git(workNlc, "add", "-A");
    git(workNlc, "-c", "user.name=keepkv", "-c", "user.email=keepkv@localhost", "commit", "-qm", "node-llama-cpp 3.21.1 (pristine)");
    git(workNlc, "tag", "-f", "keepkv-base");
    applySeriesToGitTree(workNlc, listPatches(nlcPatchesDir), { commit: true });

    process.stdout.write(`checked out:\n  ${workLlama}\n  ${workNlc}\ncommit your changes there, then run: npm run patches:export\n`);
}

function exportSeries(tree: string, dest: string): number {
    if (!fs.existsSync(tree))
        throw new Error(`${tree} does not exist: run npm run patches:checkout first`);
    if (git(tree, "status", "--porcelain", "--untracked-files=no").trim() !== "")
        throw new Error(`${tree} has uncommitted changes: commit them first (each commit becomes one patch)`);
    fs.mkdirSync(dest, { recursive: true });
    for (const old of listPatches(dest))
        fs.rmSync(old);
    git(tree, "format-patch", "-q", "--zero-commit", "--no-signature", "--full-index", "-o", dest, "keepkv-base..HEAD");
    return listPatches(dest).length;
}

function exportAll(): void {
    const nLlama = exportSeries(workLlama, llamaPatchesDir);
    const nNlc = exportSeries(workNlc, nlcPatchesDir);
    process.stdout.write(`exported ${nLlama} llama.cpp patch(es) and ${nNlc} node-llama-cpp patch(es) into patches/\n`);
}

/** Copies the work trees into node_modules, so that `source build` compiles them (ccache keeps it fast). */
function sync(): void {
    const changed = [
        ...git(workLlama, "diff", "--name-only", "keepkv-base").split("\n"),
        ...git(workLlama, "ls-files", "--others", "--exclude-standard").split("\n")
    ].filter((l) => l !== "");
    const tracked = git(workLlama, "ls-files").split("\n").filter((l) => l !== "");
    for (const rel of new Set([...changed, ...tracked.filter((f) => f.startsWith("src/") || f.startsWith("include/") || f.startsWith("ggml/"))])) {
        const src = path.join(workLlama, rel);
        const dst = path.join(nlcLlamaCppDir, rel);
        if (!fs.existsSync(src))
            continue;
        if (fs.existsSync(dst) && fs.readFileSync(dst).equals(fs.readFileSync(src)))
            continue;
        fs.mkdirSync(path.dirname(dst), { recursive: true });
        fs.copyFileSync(src, dst);
    }
    // keep the pristine snapshot of the package before overwriting it
    ensurePristineSnapshot(nlcPackageDir, path.join(nlcPackageDir, pristineDirName), nlcTrackedPaths);
    for (const rel of nlcTrackedPaths)
        fs.cpSync(path.join(workNlc, rel), path.join(nlcPackageDir, rel), { recursive: true });
    process.stdout.write("synced .work/ into node_modules/node-llama-cpp\n");
}

const usage = "usage: patches.js checkout|export|sync|apply\n";

let command: string | undefined;
try {
    const { positionals } = parseArgs({ args: process.argv.slice(2), options: {}, strict: true, allowPositionals: true });
    command = positionals.length === 1 ? positionals[0] : undefined;
} catch (err) {
    if (!isParseArgsError(err))
        throw err;
    process.stderr.write(`${describeParseArgsError(err)}\n`);
}
try {
    if (command === "checkout")
        checkout();
    else if (command === "export")
        exportAll();
    else if (command === "sync")
        sync();
    else if (command === "apply")
        applyNodeLlamaCppSeries();
    else {
        process.stderr.write(usage);
        process.exit(2);
    }
} catch (err) {
    process.stderr.write(`error: ${errorMessage(err)}\n`);
    process.exit(1);
}
