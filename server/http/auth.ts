// Bearer-token and browser-origin checks, shared by HTTP and WebSocket.
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Principal } from "../security/api-keys.js";

/** Constant-time comparison (of digests, so that the lengths do not leak either). */
export function tokenMatches(given: string, expected: string): boolean {
    const a = createHash("sha256").update(given).digest();
    const b = createHash("sha256").update(expected).digest();
    return timingSafeEqual(a, b);
}

/** The token of an `Authorization: Bearer <token>` header, or null. */
export function bearerToken(header: string | undefined): string | null {
    if (header == null)
        return null;
    const match = /^Bearer\s+(.+)$/i.exec(header.trim());
    return match == null ? null : match[1]!.trim();
}

// the principal of each authenticated request (HTTP, and WebSocket upgrades), set by authentication
const principals = new WeakMap<IncomingMessage, Principal>();

export function setPrincipal(request: IncomingMessage, principal: Principal): void {
    principals.set(request, principal);
}

/**
 * Who sent a request: the name and role of its API key, `anonymous` (with every right) when the server
 * has no user or admin keys, or null when the request has not been authenticated (yet, or at all).
 */
export function principalOf(request: IncomingMessage): Principal | null {
    return principals.get(request) ?? null;
}

/**
 * Requests without an Origin header (curl, SDKs, Prometheus) are not from a browser and pass. A browser
 * page may call only from the server's own origin or from a configured one: this stops any web page the
 * user visits from driving the local server (cross-site WebSocket hijacking).
 */
export function originAllowed(origin: string | undefined, host: string | undefined, allowed: readonly string[]): boolean {
    if (origin == null || origin === "")
        return true;
    if (allowed.includes("*") || allowed.includes(origin))
        return true;
    try {
        return host != null && new URL(origin).host === host;
    } catch {
        return false;
    }
}
