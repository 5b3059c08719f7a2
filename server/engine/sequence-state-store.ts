// Conversation states on disk: a sequence's KV cache (llama.cpp's sequence state file, which the patch
// series extends with the KeepKV votes, scores and queries) beside a JSON manifest that says what the
// state is valid for. A state is restored only when every check passes; a file that fails one is deleted
// and the conversation is evaluated again. Runs in the engine process (it holds the sequences).
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { LlamaContextSequence, Token } from "node-llama-cpp";
import type { EngineModelSettings, StateEvent, StateRefusal, StateStoreOptions } from "../protocol/engine-ipc.js";
import { resolveKeepKvSettings } from "./keepkv.js";

/** Bump when the manifest or the meaning of the state file changes: older files are then refused. */
export const stateFormatVersion = 1;

export type ModelIdentity = { path: string, size: number, mtimeMs: number };

/** The exact text and tokens a sequence holds after a plain-text request (EngineRuntime's memo). */
export type TextMemo = { text: string, tokens: Token[] };

type Manifest = {
    format: "keepkv-sequence-state",
    version: number,
    model: ModelIdentity,
    /** the engine and KeepKV settings that change what the cells mean */
    settings: string,
    tokens: Token[],
    memo: TextMemo | null,
    stateBytes: number,
    sha256: string
};

export type StoredState = { manifest: Manifest, statePath: string };

export function modelIdentity(modelPath: string): ModelIdentity {
    const stat = fs.statSync(modelPath);
    return { path: path.resolve(modelPath), size: stat.size, mtimeMs: stat.mtimeMs };
}

/**
 * The settings a state depends on, as one string. Threads, the chat template and the number of
 * sequences do not change a sequence's cells (the template changes tokens, which are checked apart),
 * except that one unified KV stream shares cells between sequences.
 */
export function stateSettingsFingerprint(settings: EngineModelSettings, keepKvVersion: string | null): string {
    const keepKv = resolveKeepKvSettings(settings.keepKv, settings.contextSize);
    return JSON.stringify({
        keepKvVersion,
        contextSize: settings.contextSize,
        batchSize: settings.batchSize,
        gpuLayers: settings.gpuLayers,
        flashAttention: settings.flashAttention,
        cacheTypeK: settings.cacheTypeK,
        cacheTypeV: settings.cacheTypeV,
        keepKv,
        ...(keepKv.unifiedKvCache ? { sequences: settings.sequences } : {})
    });
}

function sha256Hex(data: string | Buffer): string {
    return createHash("sha256").update(data).digest("hex");
}

async function fileSha256(file: string): Promise<string> {
    const hash = createHash("sha256");
    for await (const chunk of fs.createReadStream(file))
        hash.update(chunk as Buffer);
    return hash.digest("hex");
}

function sameTokens(a: readonly number[], b: readonly number[]): boolean {
    return a.length === b.length && a.every((t, i) => t === b[i]);
}

export class StateRefusedError extends Error {
    constructor(readonly reason: StateRefusal, message: string) {
        super(message);
    }
}

export class SequenceStateStore {
    /** every saved state in the folder: its bytes and when it was last saved or restored (the LRU order) */
    private readonly index = new Map<string, { bytes: number, used: number }>();
    private totalBytes = 0;

    /** `emit` reports every save, restore, miss, refusal and removal (the engine sends them to the server) */
    constructor(readonly options: StateStoreOptions, readonly emit: (event: StateEvent) => void) {
        fs.mkdirSync(options.dir, { recursive: true });
        for (const name of fs.readdirSync(options.dir)) {
            const file = path.join(options.dir, name);
            // a write cut short by a crash leaves a temporary file that nothing will rename
            if (name.endsWith(".tmp"))
                fs.rmSync(file, { force: true });
            else if (name.endsWith(".json")) {
                const base = file.slice(0, -".json".length);
                const manifest = fs.statSync(file);
                const state = fs.statSync(base + ".state", { throwIfNoEntry: false });
                this.track(base, manifest.size + (state?.size ?? 0), manifest.mtimeMs);
            }
        }
    }

    private track(base: string, bytes: number, used: number): void {
        this.totalBytes += bytes - (this.index.get(base)?.bytes ?? 0);
        this.index.set(base, { bytes, used });
    }

    /**
     * One pair of files per conversation and model file: a conversation that moves to another model and
     * back finds its state for the first one still there. File names are hashes: no id reaches the disk.
     */
    private base(key: string, model: ModelIdentity): string {
        return path.join(this.options.dir, `${sha256Hex(key).slice(0, 32)}-${sha256Hex(model.path).slice(0, 8)}`);
    }

    private remove(base: string): void {
        fs.rmSync(base + ".json", { force: true });
        fs.rmSync(base + ".state", { force: true });
        this.totalBytes -= this.index.get(base)?.bytes ?? 0;
        this.index.delete(base);
    }

    /** Writes the sequence's state for `key`: state file, then manifest, each through a renamed temporary file. */
    async save(sequence: LlamaContextSequence, key: string, model: ModelIdentity, settings: string, memo: TextMemo | null): Promise<void> {
        const base = this.base(key, model);
        const tmp = `${base}.${process.pid}.${randomBytes(4).toString("hex")}`;
        const tokens = sequence.contextTokens.slice();
        try {
            await sequence.saveStateToFile(tmp + ".state.tmp");
            const stateBytes = fs.statSync(tmp + ".state.tmp").size;
            const manifest: Manifest = {
                format: "keepkv-sequence-state", version: stateFormatVersion, model, settings, tokens,
                // the memo ends with the last sampled token, which the sequence has not evaluated yet
                memo: memo != null && memo.tokens.length >= tokens.length && tokens.every((t, i) => memo.tokens[i] === t) ? memo : null,
                stateBytes, sha256: await fileSha256(tmp + ".state.tmp")
            };
            const manifestText = JSON.stringify(manifest);
            fs.writeFileSync(tmp + ".json.tmp", manifestText);
            // the manifest last: a crash between the two renames leaves a manifest whose checksum fails
            fs.renameSync(tmp + ".state.tmp", base + ".state");
            fs.renameSync(tmp + ".json.tmp", base + ".json");
            this.track(base, stateBytes + Buffer.byteLength(manifestText), Date.now());
            this.emit({ event: "saved", bytes: stateBytes });
        } finally {
            fs.rmSync(tmp + ".state.tmp", { force: true });
            fs.rmSync(tmp + ".json.tmp", { force: true });
        }
        this.enforceLimit(base);
    }

    /**
     * The saved state of `key` for this model, checked against the model and settings, or null when
     * there is none. A file that fails a check is deleted and StateRefusedError says why.
     */
    find(key: string, model: ModelIdentity, settings: string): StoredState | null {
        const base = this.base(key, model);
        let text: string;
        try {
            text = fs.readFileSync(base + ".json", "utf8");
        } catch {
            return null;
        }
        const refuse = (reason: StateRefusal, message: string): never => {
            this.remove(base);
            throw new StateRefusedError(reason, message);
        };
        let manifest: Manifest;
        try {
            manifest = JSON.parse(text) as Manifest;
        } catch {
            return refuse("unreadable", "the manifest is not JSON");
        }
        if (manifest?.format !== "keepkv-sequence-state" || !Array.isArray(manifest.tokens) || typeof manifest.sha256 !== "string")
            return refuse("unreadable", "the manifest is not a sequence state manifest");
        if (manifest.version !== stateFormatVersion)
            return refuse("version", `format version ${String(manifest.version)}, this server reads ${stateFormatVersion}`);
        const m = manifest.model;
        if (m?.path !== model.path || m.size !== model.size || m.mtimeMs !== model.mtimeMs)
            return refuse("model", `saved for ${JSON.stringify(m)}, the engine serves ${JSON.stringify(model)}`);
        if (manifest.settings !== settings)
            return refuse("settings", `saved with settings ${manifest.settings}, the engine runs ${settings}`);
        return { manifest, statePath: base + ".state" };
    }

    /** Loads a found state into the sequence after checking its bytes; the sequence is empty if it fails. */
    async load(sequence: LlamaContextSequence, stored: StoredState): Promise<void> {
        const base = stored.statePath.slice(0, -".state".length);
        const fail = async (reason: StateRefusal, message: string): Promise<never> => {
            this.remove(base);
            if (sequence.nextTokenIndex > 0)
                await sequence.clearHistory();
            throw new StateRefusedError(reason, message);
        };
        let sha: string;
        try {
            sha = await fileSha256(stored.statePath);
        } catch (err) {
            return await fail("checksum", `the state file cannot be read: ${(err as Error).message}`);
        }
        if (sha !== stored.manifest.sha256)
            return await fail("checksum", `the state file's sha256 is ${sha}, the manifest says ${stored.manifest.sha256}`);
        try {
            await sequence.loadStateFromFile(stored.statePath, { acceptRisk: true });
        } catch (err) {
            return await fail("load_failed", `llama.cpp refused the state: ${(err as Error).message}`);
        }
        if (!sameTokens(sequence.contextTokens, stored.manifest.tokens))
            return await fail("tokens", `the state holds ${sequence.contextTokens.length} tokens that differ from the manifest's ${stored.manifest.tokens.length}`);
        // recently used: the last to go when the folder is over its limit
        const now = new Date();
        fs.utimesSync(base + ".json", now, now);
        this.track(base, this.index.get(base)?.bytes ?? 0, now.getTime());
        this.emit({ event: "restored" });
    }

    /** Removes the least recently used states until the folder fits its limit (`keep`, just written, last). */
    private enforceLimit(keep: string): void {
        if (this.totalBytes <= this.options.maxBytes)
            return;
        const entries = [...this.index.entries()]
            .sort(([a, x], [b, y]) => (a === keep ? 1 : 0) - (b === keep ? 1 : 0) || x.used - y.used);
        for (const [base, entry] of entries) {
            if (this.totalBytes <= this.options.maxBytes)
                break;
            this.remove(base);
            this.emit({ event: "removed", bytes: entry.bytes });
        }
    }

    /** Bytes the folder's states take. */
    diskBytes(): number {
        return this.totalBytes;
    }
}
