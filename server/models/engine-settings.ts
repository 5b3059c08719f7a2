// The engine settings of a model under the server configuration.
import type { ServerConfig } from "../config/options.js";
import type { EngineModelSettings } from "../protocol/engine-ipc.js";

/** contextSize 0 means the model's training context, capped here to keep memory modest */
export const autoContextCap = 8192;

export function effectiveContextSize(config: Pick<ServerConfig, "contextSize">, trainContext: number | null): number {
    if (config.contextSize > 0)
        return config.contextSize;
    return Math.min(trainContext ?? autoContextCap, autoContextCap);
}

export function engineSettingsFor(config: ServerConfig, modelPath: string, trainContext: number | null): EngineModelSettings {
    return {
        modelPath,
        contextSize: effectiveContextSize(config, trainContext),
        sequences: config.sequences,
        batchSize: config.batchSize,
        threads: config.threads,
        gpuLayers: config.gpuLayers,
        flashAttention: config.flashAttention,
        cacheTypeK: config.cacheTypeK,
        cacheTypeV: config.cacheTypeV,
        chatTemplate: config.chatTemplate,
        keepKv: {
            policy: config.policy,
            variant: config.variant,
            selection: config.selection,
            budget: config.budget,
            sinks: config.sinks,
            recent: config.recent,
            threshold: config.threshold,
            protect: config.protect,
            valueThreshold: config.valueThreshold,
            chunk: config.chunk,
            observed: config.observed,
            scoreMode: config.scoreMode,
            scoreDecay: config.scoreDecay,
            queryDecay: config.queryDecay
        }
    };
}
