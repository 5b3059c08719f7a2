import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";

/** A patch series is the sorted list of `NNNN-*.patch` files in one folder. */
export function listPatches(dir: string): string[] {
    if (!fs.existsSync(dir))
        return [];
    return fs.readdirSync(dir)
        .filter((name) => /^\d{4}-.*\.patch$/.test(name))
        .sort()
        .map((name) => path.join(dir, name));
}

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

/**
 * Applies the series to a plain directory (node-llama-cpp's package folder is not a git repository).
 * Every file the series touches is first restored from a pristine copy kept beside the package, so that
 * applying twice gives the same result; on failure the touched files are restored again.
 */
export function applySeriesToPlainTree(tree: string, patches: string[], pristineDir: string): void {
    const touched = new Set<string>();
    for (const patch of patches)
        for (const file of filesTouchedByPatch(fs.readFileSync(patch, "utf8")))
            touched.add(file);

    for (const file of touched) {
        const live = path.join(tree, file);
        const saved = path.join(pristineDir, file);
        if (fs.existsSync(saved)) {
            fs.copyFileSync(saved, live);
        } else if (fs.existsSync(live)) {
            fs.mkdirSync(path.dirname(saved), { recursive: true });
            fs.copyFileSync(live, saved);
        } else {
            // a file the series creates: remember that it did not exist
            fs.mkdirSync(path.dirname(saved), { recursive: true });
            fs.writeFileSync(saved + ".absent", "");
        }
        if (fs.existsSync(saved + ".absent") && fs.existsSync(live))
            fs.rmSync(live);
    }

    const restore = () => {
        for (const file of touched) {
            const live = path.join(tree, file);
            const saved = path.join(pristineDir, file);
            if (fs.existsSync(saved))
                fs.copyFileSync(saved, live);
            else if (fs.existsSync(saved + ".absent") && fs.existsSync(live))
                fs.rmSync(live);
        }
    };

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
