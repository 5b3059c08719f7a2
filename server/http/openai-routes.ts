// OpenAI-compatible generation endpoints: POST /v1/chat/completions and POST /v1/completions, streaming
// (SSE, ending with `data: [DONE]`) and not. Extra fields beside OpenAI's: `timings` (as llama-server)
// and `keepkv` (the KV statistics of the request's sequence).
import { randomBytes } from "node:crypto";
import type { Request, Response, Router } from "express";
import { ApiError, openAiErrorBody, toWireError, type WireError } from "../protocol/errors.js";
import { describeSchemaError, validators } from "../protocol/schemas.js";
import type {
    ChatChoice, CompletionChunk, CompletionResponse, OpenAiMessage, OpenAiRequestBody, OpenAiUsage, TextChoice
} from "../protocol/openai-messages.js";
import type { ChatMessage, FinishReason } from "../protocol/ws-messages.js";
import { requestSpec } from "../scheduler/request-spec.js";
import type { FinalResult, ScheduledRequest, Scheduler } from "../scheduler/scheduler.js";
import type { ServerMetrics } from "../metrics/metrics.js";
import { clientAddress } from "../security/hosts.js";
import { addressBucket, principalBucket, type RateLimiter } from "../security/rate-limit.js";
import { principalOf } from "./auth.js";

/** keyed: user or admin keys are configured, so each request's principal (its key) has a bucket of its own */
export type HttpRateLimit = { rateLimiter: RateLimiter, trustProxy: boolean, keyed: boolean };

type Kind = "chat" | "completion";

export function sendError(res: Response, error: WireError): void {
    res.status(new ApiError(error.code, error.message).status).json(openAiErrorBody(error));
}

function toMessages(messages: OpenAiMessage[]): ChatMessage[] {
    return messages.map((m) => ({
        role: m.role === "developer" ? "system" : m.role,
        content: typeof m.content === "string" ? m.content
            : Array.isArray(m.content) ? m.content.map((p) => p.text).join("") : ""
    }));
}

function usageOf(result: FinalResult): OpenAiUsage {
    return {
        prompt_tokens: result.usage.prompt_tokens,
        completion_tokens: result.usage.completion_tokens,
        total_tokens: result.usage.total_tokens,
        prompt_tokens_details: { cached_tokens: result.usage.cached_tokens }
    };
}

export function addOpenAiRoutes(router: Router, scheduler: Scheduler, metrics: ServerMetrics, maxBufferedBytes: number, rate?: HttpRateLimit): void {
    router.post("/v1/chat/completions", (req, res) => handle(req, res, "chat", scheduler, metrics, maxBufferedBytes, rate));
    router.post("/v1/completions", (req, res) => handle(req, res, "completion", scheduler, metrics, maxBufferedBytes, rate));
}

function handle(req: Request, res: Response, kind: Kind, scheduler: Scheduler, metrics: ServerMetrics, maxBufferedBytes: number, rate?: HttpRateLimit): void {
    const validate = kind === "chat" ? validators.chatCompletions : validators.completions;
    if (!validate(req.body)) {
        sendError(res, { code: "invalid_message", message: describeSchemaError(validate.errors) });
        return;
    }
    const principal = principalOf(req)?.name;
    if (principal == null) {
        // authentication runs before every route: this is a bug, not a client error
        sendError(res, { code: "internal_error", message: "the request was not authenticated" });
        return;
    }
    const buckets = [addressBucket(clientAddress(req, rate?.trustProxy === true)), ...(rate?.keyed === true ? [principalBucket(principal)] : [])];
    const decision = rate?.rateLimiter.takeAll(buckets);
    if (decision != null && !decision.ok) {
        metrics.requestRefused("rate_limited");
        res.set("Retry-After", String(decision.retryAfterS));
        sendError(res, { code: "rate_limited", message: `more than ${rate!.rateLimiter.perMinute} requests per minute from this client address or key (rate-limit); retry in ${decision.retryAfterS} s` });
        return;
    }
    const body = req.body as OpenAiRequestBody;
    const input = kind === "chat"
        ? { messages: toMessages(body.messages!) }
        : { prompt: Array.isArray(body.prompt) ? body.prompt[0]! : body.prompt! };
    const header = req.headers["x-conversation-id"];
    const conversationId = body.conversation_id ?? (typeof header === "string" && header !== "" ? header : null);
    const spec = requestSpec(input, { ...body, max_tokens: body.max_completion_tokens ?? body.max_tokens }, conversationId, principal);

    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`;
    const object = kind === "chat" ? "chat.completion" : "text_completion";
    const stream = body.stream === true;
    const includeUsage = body.stream_options?.include_usage === true;
    let model = scheduler.model?.name ?? "";
    let created = Math.floor(Date.now() / 1000);
    let text = "";
    let ended = false;

    const chunk = (fields: Omit<CompletionChunk, "id" | "object" | "created" | "model">): void => {
        const event: CompletionChunk = { id, object: kind === "chat" ? "chat.completion.chunk" : "text_completion", created, model, ...fields };
        res.write(`data: ${JSON.stringify(event)}\n\n`);
        // a client that does not read: drop it rather than buffer without limit
        if (res.writableLength > maxBufferedBytes && !ended) {
            ended = true;
            metrics.clientDropped("http", "slow_consumer");
            scheduler.cancel(request);
            res.destroy();
        }
    };
    const choiceDelta = (content: string | null, finishReason: FinishReason | null): CompletionChunk["choices"][number] => kind === "chat"
        ? { index: 0, delta: content == null ? {} : { content }, logprobs: null, finish_reason: finishReason }
        : { index: 0, text: content ?? "", logprobs: null, finish_reason: finishReason };

    let request: ScheduledRequest;
    try {
        request = scheduler.submit(spec, {
            // a comment line, which SSE clients ignore: the stream shows life while a long prompt is evaluated
            onProgress: (evaluated, total) => {
                if (stream && !ended && res.writableLength <= maxBufferedBytes)
                    res.write(`: prompt ${evaluated}/${total}\n\n`);
            },
            onDelta: (delta) => {
                if (ended)
                    return;
                if (stream)
                    chunk({ choices: [choiceDelta(delta, null)] });
                else
                    text += delta;
            },
            onFinal: (result) => {
                if (ended)
                    return;
                ended = true;
                if (stream) {
                    if (result.error != null)
                        res.write(`data: ${JSON.stringify(openAiErrorBody(result.error))}\n\n`);
                    else {
                        chunk({ choices: [choiceDelta(null, result.finishReason)], timings: result.timings, keepkv: result.kv });
                        if (includeUsage)
                            chunk({ choices: [], usage: usageOf(result) });
                    }
                    res.end("data: [DONE]\n\n");
                    return;
                }
                if (result.error != null) {
                    sendError(res, result.error);
                    return;
                }
                const choice: ChatChoice | TextChoice = kind === "chat"
                    ? { index: 0, message: { role: "assistant", content: text, refusal: null }, logprobs: null, finish_reason: result.finishReason }
                    : { index: 0, text, logprobs: null, finish_reason: result.finishReason };
                res.json({
                    id, object, created, model, choices: [choice], usage: usageOf(result), timings: result.timings, keepkv: result.kv
                } satisfies CompletionResponse);
            }
        });
    } catch (err) {
        const wire = toWireError(err);
        metrics.requestRefused(wire.code);
        sendError(res, wire);
        return;
    }
    model = request.model;
    created = request.created;
    // a client that hangs up cancels its request at once (its sequence is freed)
    res.on("close", () => {
        if (!ended)
            scheduler.cancel(request);
        ended = true;
    });
    if (stream) {
        res.status(200).set({
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Accel-Buffering": "no"
        });
        res.flushHeaders();
        if (kind === "chat")
            chunk({ choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }] });
    }
}
