// Switches the serving model without a gap in safety: the new model is inspected (no native code), then
// loaded beside the old one in the engine; only when it loaded are running requests drained and the
// models swapped. Any failure leaves the previous model serving.
import type { ServerConfig } from "../config/options.js";
import { resolveKeepKvSettings } from "../../lib/keepkv-options.js";
import { checkMemory } from "../supervisor/memory-estimate.js";
import type { EngineModelInfo, EngineModelSettings } from "../protocol/engine-ipc.js";
import type { EngineSupervisor } from "../supervisor/supervisor.js";
import type { Logger } from "../logger.js";
import type { ServerMetrics } from "../metrics/metrics.js";
import { ApiError } from "../protocol/errors.js";
import type { Scheduler } from "../scheduler/scheduler.js";
import { engineSettingsFor } from "./engine-settings.js";
import type { ModelInspection } from "./gguf-inspect.js";
import type { ModelCatalog } from "./model-catalog.js";

const loadTimeoutMs = 10 * 60_000;
const drainTimeoutMs = 60_000;

export class ModelSwitcher {
    private busy = false;

    constructor(
        private readonly config: ServerConfig,
        private readonly catalog: ModelCatalog,
        private readonly engine: EngineSupervisor,
        private readonly scheduler: Scheduler,
        private readonly metrics: ServerMetrics,
        private readonly log: Logger
    ) {}

    async switchTo(id: string): Promise<{ model: EngineModelInfo, previous: string | null }> {
        const file = this.catalog.resolve(id);
        if (file == null)
            throw new ApiError("model_not_found", `"${id}" is not a file name in the models directory ${this.catalog.dir}`);
        const inspection = await this.catalog.inspect(file);
        if (inspection.errorCode === "unreadable")
            throw new ApiError("model_not_found", `no model "${id}" in ${this.catalog.dir}`);
        if (!inspection.valid)
            throw this.refused(inspection, inspection.error ?? "invalid model");
        const settings = this.settingsFor(inspection);
        // the new model loads beside the serving one: with a memory limit, what the engine holds counts
        const memory = await checkMemory(settings, this.config.memoryLimit, this.config.memoryLimit > 0 ? this.engine.rssBytes : 0);
        if (!memory.fits) {
            this.metrics.modelLoadFailed();
            const serving = this.scheduler.model?.name;
            throw new ApiError("insufficient_memory",
                `cannot load model "${inspection.id}": it ${memory.message}${serving != null ? `; still serving "${serving}"` : ""}`);
        }

        if (this.busy)
            throw new ApiError("model_switching", "another model switch is in progress");
        this.busy = true;
        const previous = this.scheduler.model?.name ?? null;
        try {
            try {
                await this.engine.stageModel(settings, loadTimeoutMs);
            } catch (err) {
                throw this.refused(inspection, `llama.cpp could not load it: ${(err as Error).message}`);
            }
            await this.scheduler.pauseAndDrain(drainTimeoutMs);
            try {
                const model = await this.engine.activateStaged(settings);
                this.log.info("model switched", { model: model.name, previous });
                return { model, previous };
            } finally {
                this.scheduler.resume();
            }
        } finally {
            this.busy = false;
        }
    }

    private settingsFor(inspection: ModelInspection): EngineModelSettings {
        const settings = engineSettingsFor(this.config, inspection.path, inspection.contextLength);
        try {
            resolveKeepKvSettings(settings.keepKv, settings.contextSize);
        } catch (err) {
            throw this.refused(inspection, (err as Error).message);
        }
        if (!inspection.keepKvSupported && this.config.policy !== "off")
            throw this.refused(inspection, `KeepKV policy "${this.config.policy}" cannot run on it: ${inspection.keepKvReason}`);
        return settings;
    }

    private refused(inspection: ModelInspection, why: string): ApiError {
        this.metrics.modelLoadFailed();
        const serving = this.scheduler.model?.name;
        return new ApiError("invalid_model",
            `cannot use model "${inspection.id}": ${why}${serving != null ? `; still serving "${serving}"` : ""}`);
    }
}
