// Bearer-token and browser-origin checks, shared by HTTP and WebSocket.
import { createHash, timingSafeEqual } from "node:crypto";

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

/** null: no key is configured; true/false: the header carries it or not. */
export function authorized(header: string | undefined, key: string | null): boolean {
    if (key == null)
        return true;
    const token = bearerToken(header);
    return token != null && tokenMatches(token, key);
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
