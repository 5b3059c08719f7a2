// Placeholder server: loads the patched build and the default model, answers /health and a plain
// completion. The real server (engine supervision, WebSocket, OpenAI API, metrics) replaces it.
import express from "express";
import { LlamaCompletion } from "node-llama-cpp";
import { keepKvVersionOf, loadPatchedLlama } from "./engine/llama-loader.js";
import { defaultModelPath, requireFile } from "./engine/model-paths.js";

async function main(): Promise<void> {
    const port = Number(process.env.KEEPKV_PORT ?? 8080);
    const host = process.env.KEEPKV_HOST ?? "127.0.0.1";
    const modelPath = requireFile(defaultModelPath(), "model", "KEEPKV_MODEL");

    let ready = false;
    const app = express();
    app.use(express.json({ limit: "1mb" }));
    app.get("/health", (_req, res) => {
        if (!ready)
            res.status(503).json({ error: { code: 503, message: "Loading model", type: "unavailable_error" } });
        else
            res.json({ status: "ok" });
    });
    const server = app.listen(port, host, () => process.stderr.write(`keepkv listening on http://${host}:${port}\n`));

    const llama = await loadPatchedLlama();
    const model = await llama.loadModel({ modelPath });
    const context = await model.createContext({ contextSize: 512 });
    const completion = new LlamaCompletion({ contextSequence: context.getSequence() });
    ready = true;
    process.stderr.write(`keepkv: ${keepKvVersionOf(llama)}, model ${modelPath}\n`);

    app.post("/v1/completions", async (req, res) => {
        const prompt = typeof req.body?.prompt === "string" ? req.body.prompt : null;
        if (prompt == null) {
            res.status(400).json({ error: { code: 400, message: "prompt must be a string", type: "invalid_request_error" } });
            return;
        }
        const text = await completion.generateCompletion(prompt, { maxTokens: Number(req.body.max_tokens ?? 32) });
        res.json({ object: "text_completion", choices: [{ index: 0, text, finish_reason: "length" }] });
    });

    const stop = () => {
        server.close();
        void llama.dispose().finally(() => process.exit(0));
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err: unknown) => {
    process.stderr.write(`keepkv: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
});
