// The one name of a conversation that outlives a sequence: what the engine keys saved states by.
import type { RequestSpec } from "./scheduler.js";

/** The key of the request's conversation, or null for a request outside any conversation. */
export function conversationKey(spec: Pick<RequestSpec, "conversationId">): string | null {
    return spec.conversationId;
}
