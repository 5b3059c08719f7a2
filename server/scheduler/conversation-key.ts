// The one name of a conversation that outlives a sequence: what the engine keys saved states by.
import type { RequestSpec } from "./scheduler.js";

/**
 * The key of the request's conversation, or null for a request outside any conversation. Conversations
 * are (principal, id): two principals naming the same id have two keys, so a saved state is only ever
 * restored to the principal whose conversation it was. JSON keeps the pair unambiguous whatever the
 * characters of either part.
 */
export function conversationKey(spec: Pick<RequestSpec, "principal" | "conversationId">): string | null {
    return spec.conversationId == null ? null : JSON.stringify([spec.principal, spec.conversationId]);
}
