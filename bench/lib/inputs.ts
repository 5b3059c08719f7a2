// The models and texts a benchmark can name by a short word, besides a path: the headline chat model and
// its long text, and the fast stories3M fixtures.
import { cachedModelPath, defaultChatModelName, knownModels } from "../../lib/models.js";
import { ensureKjvText } from "../../scripts/lib/long-text.js";
import { corpusPath, requireFile, testModelPath } from "../../lib/model-paths.js";

/** `smollm2` (the default chat model), `smollm2-f16` (its F16 copy), `stories3m`, or a path. */
export function resolveModel(value: string): string {
    if (value === "smollm2")
        return requireFile(cachedModelPath(defaultChatModelName), "SmolLM2-135M-Instruct", "--model (or run npm run model:pull)");
    if (value === "smollm2-f16")
        return requireFile(cachedModelPath("smollm2-135m-instruct-f16"), "the F16 copy of SmolLM2", "--model (or run npm run model:pull smollm2-135m-instruct-f16)");
    if (value === "stories3m")
        return requireFile(testModelPath(), "stories3M", "KEEPKV_TEST_MODEL");
    if (knownModels[value] != null)
        return requireFile(cachedModelPath(value), value, `--model (or run npm run model:pull ${value})`);
    return requireFile(value, "model", "--model");
}

/** `kjv` (the King James Bible from Debian's bible-kjv, for 8k windows), `tinystories` (../shared), or a path. */
export function resolveCorpus(value: string): string {
    if (value === "kjv")
        return ensureKjvText();
    if (value === "tinystories")
        return requireFile(corpusPath(), "corpus", "KEEPKV_CORPUS");
    return requireFile(value, "corpus", "--corpus");
}
