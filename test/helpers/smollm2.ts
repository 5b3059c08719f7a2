// Server arguments for the SmolLM2 tests and checks: the cached default chat model at its 8k context.
import { defaultModelPath, requireFile } from "../../server/engine/model-paths.js";

export const smolArgs = (...extra: string[]) => ["--model", requireFile(defaultModelPath(), "SmolLM2-135M-Instruct", "KEEPKV_MODEL (or run npm run model:pull)"),
    "--context-size", "8192", "--batch-size", "512", "--threads", "1", "--log-level", "warn", ...extra];
