// The cached default chat model (SmolLM2-135M-Instruct) for the SmolLM2 tests and checks, and the server
// arguments that serve it at its 8k context.
import { defaultModelPath, requireFile } from "../../lib/model-paths.js";

export const smolModelPath = () => requireFile(defaultModelPath(), "SmolLM2-135M-Instruct", "KEEPKV_MODEL (or run npm run model:pull)");

export const smolArgs = (...extra: string[]) => ["--model", smolModelPath(),
    "--context-size", "8192", "--batch-size", "512", "--threads", "1", "--log-level", "warn", ...extra];
