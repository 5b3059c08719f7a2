import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

export class PatchApplyError extends Error {
    readonly code = "PATCH_DOES_NOT_APPLY";
    constructor(
        readonly patch: string,
        readonly file: string | null,
        readonly hunk: string | null,
        readonly detail: string
    ) {
        super(
            `patch ${path.basename(patch)} does not apply` +
            (file != null ? ` (file ${file}${hunk != null ? `, hunk at line ${hunk}` : ""})` : "") +
            `; the tree was left unpatched.\n${detail.trim()}`
        );
    }
}

function run(cmd: string, args: string[], cwd: string, env?: NodeJS.ProcessEnv) {
    const res = spawnSync(cmd, args, { cwd, encoding: "utf8", env: env ?? process.env, maxBuffer: 64 * 1024 * 1024 });
    if (res.error != null)
        throw res.error;
    return res;
}

export function git(cwd: string, ...args: string[]): string {
    const res = run("git", args, cwd);
    if (res.status !== 0)
        throw new Error(`git ${args.join(" ")} failed in ${cwd}:\n${res.stderr}`);
    return res.stdout;
}

/** Reads `error: patch failed: FILE:LINE` (git apply) or `FILE:LINE` style messages into a file and hunk. */
export function parseApplyFailure(stderr: string): { file: string | null, hunk: string | null } {
    const failed = /patch failed: ([^:\n]+):(\d+)/.exec(stderr);
    if (failed != null)
        return { file: failed[1]!, hunk: failed[2]! };
    const missing = /error: ([^:\n]+): (?:No such file or directory|does not exist in index)/.exec(stderr);
    if (missing != null)
        return { file: missing[1]!, hunk: null };
    return { file: null, hunk: null };
}

/**
 * Applies the series to a git work tree, in order. Each patch is checked before it is applied; when one
 * does not apply, the tree is reset to the commit it started from (tracked and untracked files) and a
 * PatchApplyError names the patch, the file and the hunk.
 */
export function applySeriesToGitTree(tree: string, patches: string[], opts: { commit?: boolean } = {}): void {
    const start = git(tree, "rev-parse", "HEAD").trim();
    const rollback = () => {
        run("git", ["am", "--abort"], tree);
        git(tree, "reset", "--hard", "-q", start);
        git(tree, "clean", "-fdq");
    };
    for (const patch of patches) {
        const check = run("git", ["apply", "--check", "--whitespace=nowarn", patch], tree);
        if (check.status !== 0) {
            rollback();
            const { file, hunk } = parseApplyFailure(check.stderr);
            throw new PatchApplyError(patch, file, hunk, check.stderr);
        }
        const res = opts.commit === true
            ? run("git", ["-c", "user.name=keepkv", "-c", "user.email=keepkv@localhost", "am", "-q", "--keep-cr", "--whitespace=nowarn", patch], tree)
            : run("git", ["apply", "--whitespace=nowarn", patch], tree);
        if (res.status !== 0) {
            rollback();
            const { file, hunk } = parseApplyFailure(res.stderr);
            throw new PatchApplyError(patch, file, hunk, res.stderr);
        }
    }
}

/** The parts of the node-llama-cpp package that the series may change. */
export const nlcTrackedPaths = ["llama/addon", "llama/CMakeLists.txt", "dist"];

function* walkFiles(dir: string): Generator<string> {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory())
            yield* walkFiles(full);
        else
            yield full;
    }
}

function listTracked(root: string, tracked: string[]): string[] {
    const files: string[] = [];
    for (const rel of tracked) {
        const full = path.join(root, rel);
        if (!fs.existsSync(full))
            continue;
        if (fs.statSync(full).isDirectory())
            for (const f of walkFiles(full))
                files.push(path.relative(root, f));
        else
            files.push(rel);
    }
    return files;
}

/**
 * Keeps a copy of the tracked paths of a plain tree as they were before any patch, and puts it back.
 * The copy is taken once, the first time, when the tree is still as npm installed it.
 */
export function ensurePristineSnapshot(tree: string, pristineDir: string, tracked: string[]): void {
    const complete = path.join(pristineDir, ".complete");
    if (fs.existsSync(complete))
        return;
    fs.rmSync(pristineDir, { recursive: true, force: true });
    for (const rel of listTracked(tree, tracked)) {
        fs.mkdirSync(path.dirname(path.join(pristineDir, rel)), { recursive: true });
        fs.copyFileSync(path.join(tree, rel), path.join(pristineDir, rel));
    }
    fs.writeFileSync(complete, "");
}

export function restorePristineSnapshot(tree: string, pristineDir: string, tracked: string[]): void {
    const saved = new Set(listTracked(pristineDir, tracked));
    for (const rel of listTracked(tree, tracked))
        if (!saved.has(rel))
            fs.rmSync(path.join(tree, rel));
    for (const rel of saved) {
        const live = path.join(tree, rel);
        const copy = path.join(pristineDir, rel);
        if (!fs.existsSync(live) || !fs.readFileSync(live).equals(fs.readFileSync(copy))) {
            fs.mkdirSync(path.dirname(live), { recursive: true });
            fs.copyFileSync(copy, live);
        }
    }
}

/**
 * Applies the series to a plain directory (node-llama-cpp's package folder is not a git repository).
 * The tracked paths are first put back as npm installed them (from a snapshot kept beside the package),
 * so that applying twice gives the same result; on failure they are put back again.
 */
export function applySeriesToPlainTree(tree: string, patches: string[], pristineDir: string, tracked: string[] = nlcTrackedPaths): void {
    ensurePristineSnapshot(tree, pristineDir, tracked);
    restorePristineSnapshot(tree, pristineDir, tracked);

    const restore = () => restorePristineSnapshot(tree, pristineDir, tracked);

    // the package folder sits inside the project's own repository: stop git from finding it, or git apply
    // would read the patch paths relative to the project root and silently skip them
    const env = { ...process.env, GIT_CEILING_DIRECTORIES: path.dirname(path.resolve(tree)) };
    for (const patch of patches) {
        const check = run("git", ["apply", "--check", "--whitespace=nowarn", patch], tree, env);
        if (check.status !== 0) {
            restore();
            const { file, hunk } = parseApplyFailure(check.stderr);
            throw new PatchApplyError(patch, file, hunk, check.stderr);
        }
        const res = run("git", ["apply", "--whitespace=nowarn", patch], tree, env);
        if (res.status !== 0) {
            restore();
            const { file, hunk } = parseApplyFailure(res.stderr);
            throw new PatchApplyError(patch, file, hunk, res.stderr);
        }
    }
}

export function filesTouchedByPatch(text: string): string[] {
    const files = new Set<string>();
    for (const line of text.split("\n")) {
        const m = /^diff --git a\/(\S+) b\/(\S+)$/.exec(line);
        if (m != null) {
            files.add(m[1]!);
            files.add(m[2]!);
        }
    }
    return [...files];
}
