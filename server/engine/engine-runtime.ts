// The engine inside the child process: one model, one context with N sequences (slots), and the
// generation loop of each request. Talks to the server only through the `send` callback.
import * as path from "node:path";
import type { GgmlType, Llama, LlamaContext, LlamaContextSequence, LlamaModel, Token } from "node-llama-cpp";
import { createKeepKvContext, keepKvContextStats, keepKvSequenceStats, type KeepKvSequenceStats } from "./keepkv.js";
import { keepKvVersionOf } from "./llama-loader.js";
import {
    monoMs, type EngineFinishReason, type EngineModelInfo, type EngineModelSettings, type EngineStatsSnapshot,
    type FromEngine, type GenerateJob, type KvCacheType
} from "../protocol/engine-ipc.js";
import { PromptBuilder, type BuiltPrompt } from "./prompt-builder.js";
import {
    modelIdentity, StateRefusedError, stateSettingsFingerprint, type ModelIdentity, type SequenceStateStore
} from "./sequence-state-store.js";
import { StopStringMatcher, TokenTextStream } from "./token-stream.js";
import type { ErrorCode } from "../protocol/errors.js";
import { errorMessage } from "../../lib/error-message.js";

function ggmlTypeName(type: KvCacheType): keyof typeof GgmlType {
    return type.toUpperCase() as keyof typeof GgmlType;
}

/** A model with its context and slots: what the engine serves, or what it stages during a switch. */
export class LoadedModel {
    private constructor(
        readonly settings: EngineModelSettings,
        readonly model: LlamaModel,
        readonly context: LlamaContext,
        readonly slots: LlamaContextSequence[],
        readonly prompts: PromptBuilder,
        readonly info: EngineModelInfo,
        /** what a saved conversation state must have been made with to be restored here */
        readonly identity: ModelIdentity,
        readonly stateSettings: string
    ) {}

    static async load(llama: Llama, settings: EngineModelSettings): Promise<LoadedModel> {
        // the file as it is mapped: taken before loading, so that a later change on disk is a mismatch
        const identity = modelIdentity(settings.modelPath);
        const model = await llama.loadModel({
            modelPath: settings.modelPath,
            gpuLayers: settings.gpuLayers < 0 ? "auto" : settings.gpuLayers
        });
        let context: LlamaContext;
        try {
            context = await createKeepKvContext(model, {
                contextSize: settings.contextSize,
                sequences: settings.sequences,
                batchSize: settings.batchSize,
                ...(settings.threads > 0 ? { threads: settings.threads } : {}),
                flashAttention: settings.flashAttention === "auto" ? "auto" : settings.flashAttention === "on",
                ...(settings.cacheTypeK !== "f16" ? { experimentalKvCacheKeyType: ggmlTypeName(settings.cacheTypeK) } : {}),
                ...(settings.cacheTypeV !== "f16" ? { experimentalKvCacheValueType: ggmlTypeName(settings.cacheTypeV) } : {}),
                keepKv: settings.keepKv
            });
        } catch (err) {
            await model.dispose();
            throw err;
        }
        const slots: LlamaContextSequence[] = [];
        for (let i = 0; i < settings.sequences; i++)
            slots.push(context.getSequence());
        const prompts = new PromptBuilder(model, settings.chatTemplate);
        const info: EngineModelInfo = {
            modelPath: settings.modelPath,
            name: path.basename(settings.modelPath),
            architecture: String(model.fileInfo.metadata?.general?.architecture ?? "unknown"),
            trainContextSize: model.trainContextSize,
            contextSize: context.contextSize,
            sequences: settings.sequences,
            chatFormat: prompts.chatFormat,
            keepKvVersion: keepKvVersionOf(llama),
            policy: settings.keepKv.policy ?? "off"
        };
        return new LoadedModel(settings, model, context, slots, prompts, info, identity,
            stateSettingsFingerprint(settings, info.keepKvVersion));
    }

    async stats(): Promise<EngineStatsSnapshot> {
        return { context: await keepKvContextStats(this.context, this.slots), rssBytes: process.memoryUsage.rss() };
    }

    async dispose(): Promise<void> {
        await this.context.dispose();
        await this.model.dispose();
    }
}

type RunningJob = { slot: number, cancelled: boolean };

/** The exact text and tokens a sequence holds after a plain-text request, for the next turn to extend. */
type SlotMemo = { text: string, tokens: Token[] };

function commonPrefixLength(a: readonly Token[], b: readonly Token[]): number {
    const n = Math.min(a.length, b.length);
    let i = 0;
    while (i < n && a[i] === b[i])
        i++;
    return i;
}

function endsWithSequence(tokens: readonly Token[], sequence: readonly Token[]): boolean {
    if (sequence.length > tokens.length)
        return false;
    const offset = tokens.length - sequence.length;
    return sequence.every((t, i) => tokens[offset + i] === t);
}

class JobError extends Error {
    constructor(readonly code: ErrorCode, message: string) {
        super(message);
    }
}

/** Which conversation a sequence holds, and whether its state changed since it was last saved. */
type SlotOwner = { key: string | null, dirty: boolean, idleSince: number };

export class EngineRuntime {
    private readonly jobs = new Map<number, RunningJob>();
    private staged: LoadedModel | null = null;
    private memos: (SlotMemo | null)[] = [];
    private owners: SlotOwner[] = [];
    /** per sequence, the tail of its chain of jobs, saves and releases: they never overlap */
    private readonly slotLocks = new Map<number, Promise<void>>();
    private readonly saveTimer: NodeJS.Timeout | null = null;

    constructor(
        private readonly llama: Llama,
        private current: LoadedModel,
        private readonly send: (message: FromEngine) => void,
        private readonly state: SequenceStateStore | null = null
    ) {
        if (state != null) {
            const every = Math.max(100, Math.min(1000, state.options.saveIdleMs / 2));
            this.saveTimer = setInterval(() => this.saveIdle(), every);
            this.saveTimer.unref();
        }
    }

    private owner(slot: number): SlotOwner {
        return this.owners[slot] ??= { key: null, dirty: false, idleSince: 0 };
    }

    private withSlot<T>(slot: number, fn: () => Promise<T>): Promise<T> {
        const previous = this.slotLocks.get(slot) ?? Promise.resolve();
        const run = previous.then(fn);
        this.slotLocks.set(slot, run.then(() => undefined, () => undefined));
        return run;
    }

    /** Writes the conversation state a sequence holds, if it changed since it was last written. */
    private async saveSlot(loaded: LoadedModel, slot: number): Promise<void> {
        const owner = this.owner(slot);
        const sequence = loaded.slots[slot];
        if (this.state == null || owner.key == null || !owner.dirty || sequence == null)
            return;
        owner.dirty = false;
        if (sequence.nextTokenIndex === 0)
            return;
        try {
            await this.state.save(sequence, owner.key, loaded.identity, loaded.stateSettings, this.memos[slot] ?? null);
        } catch (err) {
            this.state.emit({ event: "save_failed", message: (err as Error).message });
        }
    }

    /** Conversations idle for the configured delay are written, so that an engine crash does not lose them. */
    private saveIdle(): void {
        const delay = this.state?.options.saveIdleMs ?? 0;
        const isDue = (slot: number) => {
            const owner = this.owner(slot);
            return owner.dirty && owner.key != null && monoMs() - owner.idleSince >= delay;
        };
        for (let slot = 0; slot < this.current.slots.length; slot++) {
            if (!isDue(slot) || [...this.jobs.values()].some((j) => j.slot === slot))
                continue;
            const loaded = this.current;
            void this.withSlot(slot, async () => {
                if (isDue(slot) && loaded === this.current)
                    await this.saveSlot(loaded, slot);
            });
        }
    }

    /** Saves every changed conversation of the serving model (shutdown, model switch). */
    private async saveAll(loaded: LoadedModel): Promise<void> {
        await Promise.all(loaded.slots.map((_, slot) => this.withSlot(slot, () => this.saveSlot(loaded, slot))));
    }

    /**
     * A sequence gets a conversation it does not hold: its saved state, when one fits the prompt and
     * passes every check, replaces what the sequence holds. Returns the prompt, tokenized as the saved
     * text was when the state recorded it.
     */
    private async restore(loaded: LoadedModel, sequence: LlamaContextSequence, key: string, prompt: BuiltPrompt): Promise<BuiltPrompt> {
        if (this.state == null)
            return prompt;
        let stored;
        try {
            stored = this.state.find(key, loaded.identity, loaded.stateSettings);
        } catch (err) {
            if (!(err instanceof StateRefusedError))
                throw err;
            this.state.emit({ event: "refused", reason: err.reason, message: err.message });
            return prompt;
        }
        if (stored == null) {
            this.state.emit({ event: "miss" });
            return prompt;
        }
        // tokenized as the saved text was, but only if the state loads: nothing of a refused file is used
        const memo = stored.manifest.memo;
        const restored = prompt.text != null && memo != null && memo.text !== "" && prompt.text.startsWith(memo.text)
            ? { ...prompt, tokens: [...memo.tokens, ...loaded.prompts.continuation(prompt.text.slice(memo.text.length))] }
            : prompt;
        // a state of another history (the client changed it) holds nothing this prompt can use; the
        // conversation's own state wins a tie with what the sequence holds (the same tokens compressed
        // along another path need not hold the same cells)
        const gain = commonPrefixLength(stored.manifest.tokens, restored.tokens);
        if (gain === 0 || gain < commonPrefixLength(sequence.contextTokens, prompt.tokens)) {
            this.state.emit({ event: "miss" });
            return prompt;
        }
        try {
            await this.state.load(sequence, stored);
        } catch (err) {
            if (!(err instanceof StateRefusedError))
                throw err;
            this.state.emit({ event: "refused", reason: err.reason, message: err.message });
            return prompt;
        }
        return restored;
    }

    get info(): EngineModelInfo {
        return this.current.info;
    }

    async stats(): Promise<EngineStatsSnapshot> {
        return await this.current.stats();
    }

    cancel(job: number): void {
        const running = this.jobs.get(job);
        if (running != null)
            running.cancelled = true;
    }

    async release(slot: number): Promise<void> {
        const loaded = this.current;
        await this.withSlot(slot, async () => {
            await this.saveSlot(loaded, slot);
            this.owner(slot).key = null;
            this.memos[slot] = null;
            const sequence = loaded.slots[slot];
            if (sequence != null && sequence.nextTokenIndex > 0)
                await sequence.clearHistory();
        });
    }

    async stageModel(settings: EngineModelSettings): Promise<EngineModelInfo> {
        await this.discardStaged();
        this.staged = await LoadedModel.load(this.llama, settings);
        return this.staged.info;
    }

    async discardStaged(): Promise<void> {
        const staged = this.staged;
        this.staged = null;
        if (staged != null)
            await staged.dispose();
    }

    /** Swaps the staged model in. The server calls it only when no job runs. */
    async activateStaged(): Promise<EngineModelInfo> {
        if (this.staged == null)
            throw new Error("no model is staged");
        const previous = this.current;
        // the conversations of the model that leaves: a switch back restores them
        await this.saveAll(previous);
        this.current = this.staged;
        this.staged = null;
        this.memos = [];
        this.owners = [];
        await previous.dispose();
        return this.current.info;
    }

    async dispose(): Promise<void> {
        for (const job of this.jobs.values())
            job.cancelled = true;
        if (this.saveTimer != null)
            clearInterval(this.saveTimer);
        // after the cancelled jobs end: the states then hold what their clients received
        await this.saveAll(this.current);
        await this.discardStaged();
        await this.current.dispose();
    }

    /**
     * Whether the tokens from `from` on can be erased while the cells before stay valid. Once a sequence
     * was compressed, cells that left were merged into retained ones, possibly ones that would be
     * erased; only the recent window (whose cells never leave) can then be cut safely.
     */
    private async canErase(loaded: LoadedModel, sequence: LlamaContextSequence, from: number): Promise<boolean> {
        if (loaded.settings.keepKv.policy == null || loaded.settings.keepKv.policy === "off")
            return true;
        const stats = await keepKvSequenceStats(sequence);
        return stats.cellsRemoved === 0 || from >= sequence.nextTokenIndex - (loaded.settings.keepKv.recent ?? 0);
    }

    async generate(job: GenerateJob): Promise<void> {
        // registered before the sequence is free (a save may hold it), so that a cancel finds the job
        const running: RunningJob = { slot: job.slot, cancelled: false };
        this.jobs.set(job.job, running);
        await this.withSlot(job.slot, () => this.generateOnSlot(job, running));
    }

    private async generateOnSlot(job: GenerateJob, running: RunningJob): Promise<void> {
        const loaded = this.current;
        const owner = this.owner(job.slot);
        const key = job.conversationKey;
        const sequence = loaded.slots[job.slot];
        let promptTokens = 0;
        let cachedTokens = 0;
        let completionTokens = 0;
        let promptMs = 0;
        /** prompt tokens evaluated (not taken from the cache) */
        let promptEvaluated = 0;
        let finishReason: EngineFinishReason = "stop";
        let error: { code: ErrorCode, message: string } | undefined;
        let before: KeepKvSequenceStats | null = null;
        try {
            if (sequence == null)
                throw new JobError("internal_error", `no sequence ${job.slot}`);
            // a sequence that changes hands (another conversation, or another principal) forgets its memo;
            // the conversation it held is written first, under its own (principal, id) key
            const restoring = owner.key !== key || job.clearCache;
            if (restoring) {
                await this.saveSlot(loaded, job.slot);
                owner.key = null;
                this.memos[job.slot] = null;
            }
            // another principal's tokens: none may be reused, nor measured through cached_tokens; a state
            // restored below is this principal's own
            if (job.clearCache && sequence.nextTokenIndex > 0)
                await sequence.clearHistory();
            let prompt: BuiltPrompt;
            try {
                prompt = "prompt" in job.input ? loaded.prompts.fromText(job.input.prompt) : loaded.prompts.fromMessages(job.input.messages);
            } catch (err) {
                throw new JobError("invalid_message", `the messages cannot be formatted for this model: ${(err as Error).message}`);
            }
            if (restoring && key != null)
                prompt = await this.restore(loaded, sequence, key, prompt);
            // a conversation's next turn extends the text the sequence holds: reuse its tokens exactly,
            // tokenize only what is new
            const memo = this.memos[job.slot];
            this.memos[job.slot] = null;
            if (prompt.text != null && memo != null && memo.text !== "" && prompt.text.startsWith(memo.text))
                prompt = { ...prompt, tokens: [...memo.tokens, ...loaded.prompts.continuation(prompt.text.slice(memo.text.length))] };
            promptTokens = prompt.tokens.length;
            const contextSize = sequence.contextSize;
            const promptLimit = Math.min(job.maxPromptTokens > 0 ? job.maxPromptTokens : contextSize - 1, contextSize - 1);
            if (promptTokens > promptLimit)
                throw new JobError("prompt_too_long", `the prompt has ${promptTokens} tokens; at most ${promptLimit} fit (context size ${contextSize})`);

            // reuse the cached prefix of this slot; at least one token must be evaluated to get the next
            // token's logits
            cachedTokens = Math.min(commonPrefixLength(sequence.contextTokens, prompt.tokens), promptTokens - 1);
            if (cachedTokens < sequence.nextTokenIndex && !(await this.canErase(loaded, sequence, cachedTokens)))
                cachedTokens = 0;
            if (cachedTokens < sequence.nextTokenIndex) {
                if (cachedTokens === 0)
                    await sequence.clearHistory();
                else
                    await sequence.eraseContextTokenRanges([{ start: cachedTokens, end: sequence.nextTokenIndex }]);
            }
            if (sequence.nextTokenIndex !== cachedTokens) {
                // the erase could not keep the prefix (a model that cannot erase part of a state)
                await sequence.clearHistory();
                cachedTokens = 0;
            }
            this.send({ t: "started", job: job.job, promptTokens, cachedTokens, sentAt: monoMs() });
            // the sequence's counters run over its whole life: the request reports what changed during it
            before = await keepKvSequenceStats(sequence);

            const room = contextSize - promptTokens;
            const maxTokens = job.maxTokens == null ? room : Math.min(job.maxTokens, room);
            const text = new TokenTextStream(loaded.model, prompt.tokens);
            const stops = new StopStringMatcher([...job.stop, ...prompt.stopStrings]);
            const generated: Token[] = [];
            const { sampling } = job;
            const evalStart = monoMs();
            // every whole batch of the prompt but the last is evaluated on its own (at the boundaries the
            // context would cut anyway): each reports progress, so that the watchdog tells a long prompt
            // from a hung engine, and a cancel (or a disconnect) stops the prompt at the next batch
            const batch = Math.max(1, loaded.context.batchSize);
            let next = cachedTokens;
            while (promptTokens - next > batch && !running.cancelled) {
                await sequence.evaluateWithoutGeneratingNewTokens(prompt.tokens.slice(next, next + batch));
                next += batch;
                promptEvaluated = next - cachedTokens;
                this.send({ t: "progress", job: job.job, evaluated: next, total: promptTokens, sentAt: monoMs() });
            }
            const iterator = running.cancelled ? null : sequence.evaluate(prompt.tokens.slice(next), {
                temperature: sampling.temperature,
                topK: sampling.topK,
                topP: sampling.topP,
                minP: sampling.minP,
                seed: sampling.seed,
                ...(sampling.repeatPenalty !== 1 ? {
                    repeatPenalty: { punishTokens: () => generated.slice(-64), penalty: sampling.repeatPenalty }
                } : {}),
                yieldEogToken: false
            });
            let unsent = 0;
            let stopped = false;
            let emitted = "";
            finishReason = "stop";
            for await (const token of iterator ?? []) {
                if (completionTokens === 0) {
                    promptMs = monoMs() - evalStart;
                    promptEvaluated = promptTokens - cachedTokens;
                }
                completionTokens++;
                generated.push(token);
                unsent++;
                let piece = text.push(token);
                const tokenStop = prompt.stopTokenSequences.some((s) => endsWithSequence(generated, s));
                if (tokenStop)
                    piece = "";
                const matched = stops.push(piece);
                if (matched.text !== "") {
                    this.send({ t: "tokens", job: job.job, text: matched.text, n: unsent, sentAt: monoMs() });
                    emitted += matched.text;
                    unsent = 0;
                }
                if (matched.stopped || tokenStop) {
                    stopped = true;
                    break;
                }
                if (running.cancelled) {
                    finishReason = "cancel";
                    break;
                }
                if (completionTokens >= maxTokens) {
                    finishReason = "length";
                    break;
                }
            }
            if (completionTokens === 0)
                promptMs = monoMs() - evalStart;
            if (iterator != null)
                promptEvaluated = promptTokens - cachedTokens;
            if (running.cancelled && finishReason === "stop" && !stopped)
                finishReason = "cancel";
            if (!stopped) {
                const rest = stops.push(text.flush()).text + stops.flush();
                if (rest !== "" || unsent > 0)
                    this.send({ t: "tokens", job: job.job, text: rest, n: unsent, sentAt: monoMs() });
                emitted += rest;
                // the sequence now holds the prompt and what the client received: the next turn can extend it
                if (prompt.text != null)
                    this.memos[job.slot] = { text: prompt.text + emitted, tokens: [...prompt.tokens, ...generated] };
            }
        } catch (err) {
            finishReason = "error";
            error = err instanceof JobError
                ? { code: err.code, message: err.message }
                : { code: "internal_error", message: `generation failed: ${errorMessage(err)}` };
        } finally {
            this.jobs.delete(job.job);
        }
        // a failed request loses its conversation's sequence (the scheduler frees it): nothing to save
        if (key != null && finishReason !== "error")
            Object.assign(owner, { key, dirty: true, idleSince: monoMs() });
        else
            Object.assign(owner, { key: null, dirty: false });
        let kv: KeepKvSequenceStats | null = null;
        try {
            if (sequence != null) {
                kv = await keepKvSequenceStats(sequence);
                if (before != null)
                    kv = {
                        ...kv,
                        cellsRemoved: kv.cellsRemoved - before.cellsRemoved,
                        merges: kv.merges - before.merges,
                        evictions: kv.evictions - before.evictions,
                        compressions: kv.compressions - before.compressions,
                        compressionSeconds: kv.compressionSeconds - before.compressionSeconds
                    };
            }
        } catch {
            kv = null;
        }
        this.send({
            t: "done", job: job.job, finishReason, promptTokens, completionTokens, cachedTokens, promptEvaluated, promptMs, kv,
            ...(error != null ? { error } : {}),
            sentAt: monoMs()
        });
    }
}
