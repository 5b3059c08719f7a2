import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { LlamaCompletion } from "node-llama-cpp";
import { buildLogPath, buildPatchedLlama, cloneBundledLlamaCpp } from "../../scripts/build-llama.js";
import { computeBuildInputs, computeBuildKey, listPatches, readBuildManifest } from "../../lib/build-key.js";
import { failureTailLines, logTail, progressPrinter } from "../../scripts/lib/logged-run.js";
import { buildCacheDir, llamaPatchesDir, nlcLocalBuildsDir, nlcPatchesDir, repoRoot } from "../../lib/paths.js";
import { applySeriesToGitTree, git, PatchApplyError } from "../../scripts/lib/patch-series.js";
import { declaredKeepKvFunctions, definedKeepKvFunctions, undefinedKeepKvFunctions } from "../../scripts/check-patch-series.js";
import { keepKvVersionOf, LlamaBuildError, loadPatchedLlama, loadVanillaLlama, loadVanillaLocalLlama } from "../../server/engine/llama-loader.js";
import { testModelPath, ModelPathError, requireFile } from "../../lib/model-paths.js";

describe("offline patched build", function () {
    it("loads the patched build, and generation with stories3M works through node-llama-cpp", async function () {
        const llama = await loadPatchedLlama();
        try {
            assert.equal(llama.buildType, "localBuild");
            assert.match(keepKvVersionOf(llama) ?? "", /^keepkv \d+$/);
            const model = await llama.loadModel({ modelPath: requireFile(testModelPath(), "model", "KEEPKV_TEST_MODEL") });
            const context = await model.createContext({ contextSize: 512 });
            const completion = new LlamaCompletion({ contextSequence: context.getSequence() });
            const text = await completion.generateCompletion("Once upon a time", { maxTokens: 24, temperature: 0 });
            assert.ok(text.trim().split(/\s+/).length >= 5, `expected a few words, got ${JSON.stringify(text)}`);
            await context.dispose();
            await model.dispose();
        } finally {
            await llama.dispose();
        }
    });

    it("can load node-llama-cpp's vanilla prebuilt binary on purpose, and it has no KeepKV", async function () {
        const llama = await loadVanillaLlama();
        try {
            assert.equal(llama.buildType, "prebuilt");
            assert.equal(keepKvVersionOf(llama), null);
        } finally {
            await llama.dispose();
        }
    });

    it("can load the unpatched local build (the same sources without the series), and it has no KeepKV", async function () {
        const llama = await loadVanillaLocalLlama();
        try {
            assert.equal(llama.buildType, "localBuild");
            assert.equal(keepKvVersionOf(llama), null);
        } finally {
            await llama.dispose();
        }
    });

    it("a missing model file gives an error that names the path and the variable", function () {
        assert.throws(() => requireFile("/nonexistent/model.gguf", "model", "KEEPKV_MODEL"),
            (err: unknown) => err instanceof ModelPathError && /\/nonexistent\/model\.gguf/.test(err.message) && /KEEPKV_MODEL/.test(err.message));
    });
});

describe("patch series", function () {
    let tmp: string;
    beforeEach(() => {
        tmp = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-patch-"));
    });
    afterEach(() => {
        fs.rmSync(tmp, { recursive: true, force: true });
    });

    it("every patch applies, in order, to the bundled llama.cpp", function () {
        const tree = path.join(tmp, "llama.cpp");
        cloneBundledLlamaCpp(tree);
        const patches = listPatches(llamaPatchesDir);
        assert.ok(patches.length >= 1);
        applySeriesToGitTree(tree, patches, { commit: true });
        assert.equal(git(tree, "rev-list", "--count", "keepkv-base..HEAD").trim(), String(patches.length));
    });

    it("every prefix of the series defines each llama_keepkv_* function its llama.h declares", function () {
        // the static half of npm run patches:check (which also compiles and links every prefix)
        const tree = path.join(tmp, "llama.cpp");
        cloneBundledLlamaCpp(tree);
        assert.deepEqual(declaredKeepKvFunctions(fs.readFileSync(path.join(tree, "include", "llama.h"), "utf8")), [], "the base declares none");
        for (const patch of listPatches(llamaPatchesDir)) {
            applySeriesToGitTree(tree, [patch], { commit: true });
            const declared = declaredKeepKvFunctions(fs.readFileSync(path.join(tree, "include", "llama.h"), "utf8"));
            assert.ok(declared.includes("llama_keepkv_version"), `${path.basename(patch)}: llama.h declares llama_keepkv_version`);
            assert.deepEqual(undefinedKeepKvFunctions(tree), [], `${path.basename(patch)}: declared and not defined`);
        }
    });

    it("a declared KeepKV function without a definition is found", function () {
        const header = "LLAMA_API const char * llama_keepkv_version(void);\nLLAMA_API int32_t llama_keepkv_compress(\n        struct llama_context * ctx);\n";
        assert.deepEqual(declaredKeepKvFunctions(header), ["llama_keepkv_compress", "llama_keepkv_version"]);
        const source = [
            "// llama_keepkv_compress(ctx) is defined elsewhere",
            "int32_t llama_keepkv_compress(llama_context * ctx);",
            "const char * llama_keepkv_version(void) {",
            "    return \"keepkv 1\";",
            "}",
            "bool llama_keepkv_params_check(",
            "        const llama_model * model) {",
            "    return llama_keepkv_version() != nullptr;",
            "}"
        ].join("\n");
        assert.deepEqual(definedKeepKvFunctions([source]), ["llama_keepkv_params_check", "llama_keepkv_version"]);
    });

    it("a patch that does not apply stops with its name, file and hunk, and leaves no half-patched tree", function () {
        const tree = path.join(tmp, "llama.cpp");
        cloneBundledLlamaCpp(tree);
        const base = git(tree, "rev-parse", "HEAD").trim();

        // a copy of the series whose last patch has a context line that the tree does not have
        const broken = path.join(tmp, "patches");
        fs.mkdirSync(broken);
        const patches = listPatches(llamaPatchesDir);
        for (const p of patches)
            fs.copyFileSync(p, path.join(broken, path.basename(p)));
        const last = path.join(broken, path.basename(patches[patches.length - 1]!));
        const text = fs.readFileSync(last, "utf8");
        const lines = text.split("\n");
        const hunkAt = lines.findIndex((l) => l.startsWith("@@"));
        const contextAt = lines.findIndex((l, i) => i > hunkAt && l.startsWith(" ") && l.trim() !== "");
        assert.ok(contextAt > hunkAt && hunkAt > 0, "the patch has a context line to break");
        lines[contextAt] = " this line is not in llama.cpp";
        fs.writeFileSync(last, lines.join("\n"));
        const diffLine = lines.slice(0, hunkAt).reverse().find((l) => l.startsWith("diff --git a/"));
        const file = diffLine != null ? /^diff --git a\/(\S+)/.exec(diffLine)?.[1] : undefined;

        assert.throws(() => applySeriesToGitTree(tree, listPatches(broken), { commit: true }), (err: unknown) => {
            assert.ok(err instanceof PatchApplyError);
            assert.equal(err.code, "PATCH_DOES_NOT_APPLY");
            assert.equal(path.basename(err.patch), path.basename(last));
            assert.ok(err.message.includes(path.basename(last)));
            assert.ok(err.file != null && err.hunk != null, `file and hunk named: ${err.message}`);
            if (file != null)
                assert.equal(err.file, file);
            return true;
        });
        assert.equal(git(tree, "rev-parse", "HEAD").trim(), base, "HEAD is back at the base");
        assert.equal(git(tree, "status", "--porcelain").trim(), "", "no modified or untracked files");
    });
});

describe("build cache", function () {
    it("the same inputs give the same key, and a changed patch gives another", function () {
        const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-key-"));
        try {
            const dirs = { llama: path.join(tmp, "llama.cpp"), nodeLlamaCpp: path.join(tmp, "node-llama-cpp") };
            fs.cpSync(llamaPatchesDir, dirs.llama, { recursive: true });
            fs.cpSync(nlcPatchesDir, dirs.nodeLlamaCpp, { recursive: true });
            const key = computeBuildKey(computeBuildInputs(false));
            assert.equal(computeBuildKey(computeBuildInputs(false, dirs)), key, "a copy of the series has the same key");
            assert.equal(computeBuildKey(computeBuildInputs(false)), key, "stable across calls");

            const first = listPatches(dirs.llama)[0]!;
            fs.appendFileSync(first, "\n");
            assert.notEqual(computeBuildKey(computeBuildInputs(false, dirs)), key, "a changed patch changes the key");
            assert.notEqual(computeBuildKey(computeBuildInputs("cuda")), key, "build options are part of the key");
        } finally {
            fs.rmSync(tmp, { recursive: true, force: true });
        }
    });

    it("a build with the same inputs is restored from the cache instead of rebuilt", async function () {
        const manifest = readBuildManifest();
        assert.ok(manifest != null, "the setup command built llama.cpp");
        const entry = path.join(buildCacheDir(), manifest.key);
        assert.ok(fs.existsSync(path.join(entry, "manifest.json")), `the build is cached at ${entry}`);

        // what a fresh clone sees: no build in node_modules
        fs.rmSync(path.join(nlcLocalBuildsDir, manifest.folderName), { recursive: true, force: true });
        const result = await buildPatchedLlama({ gpu: manifest.gpu });
        assert.equal(result.source, "cache");
        assert.equal(result.manifest.key, manifest.key);
        assert.ok(fs.existsSync(path.join(nlcLocalBuildsDir, manifest.folderName, "Release", "llama-addon.node")));

        const again = await buildPatchedLlama({ gpu: manifest.gpu });
        assert.equal(again.source, "up-to-date");
    });

    it("a build rebuilt in place (scripts/dev-rebuild.sh) is refused by the loader and replaced by the build script", async function () {
        const manifest = readBuildManifest();
        assert.ok(manifest != null, "the setup command built llama.cpp");
        const release = path.join(nlcLocalBuildsDir, manifest.folderName, "Release");
        const lib = fs.readdirSync(release).find((f) => f.startsWith("libllama.") && f.includes(".so"));
        assert.ok(lib != null, `a libllama in ${release}`);
        // what a rebuild in place leaves: other bytes under the same key (a trailing byte keeps the library loadable)
        fs.appendFileSync(path.join(release, lib), Buffer.from([0]));
        try {
            await assert.rejects(loadPatchedLlama(), (err: unknown) => err instanceof LlamaBuildError && err.code === "BUILD_MODIFIED" &&
                /KEEPKV_ALLOW_DEV_BUILD=1/.test(err.message) && /npm run build:llama/.test(err.message));
        } finally {
            const result = await buildPatchedLlama({ gpu: manifest.gpu });
            assert.equal(result.source, "cache", "the recorded build is put back from the cache");
        }
        assert.equal((await buildPatchedLlama({ gpu: manifest.gpu })).source, "up-to-date");
    });
});

/** Runs `node dist/scripts/build-llama.js` and returns its exit code and everything it printed. */
function runBuildScript(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null, printed: string }> {
    return new Promise((resolve) => {
        const proc = spawn(process.execPath, [path.join(repoRoot, "dist", "scripts", "build-llama.js"), ...args],
            { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
        let printed = "";
        proc.stdout.setEncoding("utf8").on("data", (d: string) => { printed += d; });
        proc.stderr.setEncoding("utf8").on("data", (d: string) => { printed += d; });
        proc.on("close", (code) => resolve({ code, printed }));
    });
}

const lineCount = (text: string) => text.trimEnd().split("\n").length;

describe("build output", function () {
    it("a compile's progress is one line at each tenth, from ninja's [n/total] or make's [ n%] lines", function () {
        const printed: string[] = [];
        const onLine = progressPrinter("compile", (m) => printed.push(m));
        onLine("-- Configuring done");
        for (let i = 1; i <= 278; i++) {
            onLine(`[${i}/278] Building CXX object src/CMakeFiles/llama.dir/llama-${i}.cpp.o`);
            onLine("warning: a compiler warning that goes to the log only");
        }
        assert.deepEqual(printed.map((l) => /: (\d+) %/.exec(l)?.[1]), ["0", "10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]);
        assert.match(printed[4]!, /compile: 40 % \(112\/278 steps\)/);

        const make: string[] = [];
        const onMake = progressPrinter("compile", (m) => make.push(m));
        for (const p of [0, 3, 9, 12, 12, 47, 48, 99, 100])
            onMake(`[${String(p).padStart(3)}%] Building C object ggml.c.o`);
        assert.deepEqual(make.map((l) => /: (\d+) %/.exec(l)?.[1]), ["0", "12", "47", "99", "100"]);
    });

    it("an unknown option is refused with the usage, before anything is built", async function () {
        const { code, printed } = await runBuildScript(["--frce"]);
        assert.equal(code, 1, printed);
        assert.match(printed, /^\[keepkv build\] unknown option --frce\nusage: npm run build:llama/);
    });

    it("a build that is up to date prints a few lines", async function () {
        const { code, printed } = await runBuildScript([]);
        assert.equal(code, 0, printed);
        assert.ok(lineCount(printed) <= 4, `a few lines, got:\n${printed}`);
        assert.match(printed, /up-to-date/);
    });

    it("a failed compile prints where its full output is and the last 100 lines of it, and exits 1", async function () {
        const manifest = readBuildManifest();
        assert.ok(manifest != null, "the setup command built llama.cpp");
        const buildsBefore = new Set(fs.readdirSync(nlcLocalBuildsDir));
        const emptyCache = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-build-cache-"));
        try {
            // an empty cache and --force: a real compile, which cmake stops at once for want of a C compiler
            // (the option also gives the build folder another name, so the installed build stays as it is)
            const { code, printed } = await runBuildScript(["--force"], {
                KEEPKV_BUILD_CACHE: emptyCache,
                NODE_LLAMA_CPP_CMAKE_OPTION_CMAKE_C_COMPILER: "/nonexistent/keepkv-cc"
            });
            const logFile = buildLogPath("keepkv");
            assert.equal(code, 1, printed);
            assert.ok(printed.includes(`the full output is in ${logFile}`), `names the log:\n${printed}`);
            const tail = logTail(logFile, failureTailLines);
            assert.ok(tail.split("\n").length >= 20 && printed.includes(tail), `prints the end of the log:\n${printed}`);
            assert.match(printed, /CMAKE_C_COMPILER/, "cmake's own error is in what was printed");
            assert.ok(lineCount(printed) <= failureTailLines + 20, `not more than the log's tail and a few lines: ${lineCount(printed)}`);
        } finally {
            fs.rmSync(emptyCache, { recursive: true, force: true });
            for (const folder of fs.readdirSync(nlcLocalBuildsDir))
                if (!buildsBefore.has(folder))
                    fs.rmSync(path.join(nlcLocalBuildsDir, folder), { recursive: true, force: true });
        }
        assert.equal((await buildPatchedLlama({ gpu: manifest.gpu })).source, "up-to-date", "the installed build is untouched");
    });
});
