// Who is calling: the Host header check that stops DNS rebinding, and the client address that rate
// limits count by.
//
// DNS rebinding: a web page on evil.example makes its own name resolve to 127.0.0.1; the browser then
// sends the page's requests to this server with `Host: evil.example:8080` and `Origin:
// http://evil.example:8080`, which look same-origin to an Origin check. A server that listens on
// loopback therefore accepts only Host names that mean this machine (localhost, 127.0.0.1, [::1]) unless
// `--allowed-hosts` names more. A server that listens on other interfaces is reached by names the server
// cannot know, so it accepts any Host unless `--allowed-hosts` is set.
import type { IncomingMessage } from "node:http";
import * as net from "node:net";

/** Whether a bind address is loopback only. */
export function isLoopbackAddress(host: string): boolean {
    const h = host.replace(/^\[|\]$/g, "").toLowerCase();
    if (h === "localhost" || h === "::1")
        return true;
    return net.isIPv4(h) && h.startsWith("127.");
}

/** The host name of a Host header, lowercase, without port or IPv6 brackets; null when malformed. */
export function hostName(header: string): string | null {
    const value = header.trim().toLowerCase();
    if (value === "")
        return null;
    if (value.startsWith("[")) {
        const end = value.indexOf("]");
        return end > 0 ? value.slice(1, end) : null;
    }
    const colon = value.lastIndexOf(":");
    // more than one colon without brackets: a bare IPv6 address (not valid in Host, but harmless)
    if (colon >= 0 && value.indexOf(":") === colon)
        return value.slice(0, colon);
    return value;
}

/** The Host names a server accepts: null = any. */
export function effectiveAllowedHosts(bindHost: string, allowedHosts: readonly string[]): string[] | null {
    if (allowedHosts.includes("*"))
        return null;
    if (allowedHosts.length === 0 && !isLoopbackAddress(bindHost))
        return null;
    const loopbackNames = ["localhost", "127.0.0.1", "::1", bindHost.replace(/^\[|\]$/g, "").toLowerCase()];
    return [...new Set([...loopbackNames, ...allowedHosts.map((h) => h.toLowerCase())])];
}

/**
 * Whether a request's Host header is acceptable. Requests without one (HTTP/1.0 tools) pass: a browser
 * always sends it. `*.localhost` names are loopback by definition (RFC 6761) and pass too.
 */
export function hostAllowed(header: string | undefined, allowed: readonly string[] | null): boolean {
    if (allowed == null || header == null)
        return true;
    const name = hostName(header);
    if (name == null)
        return false;
    if (allowed.includes(name) || name.endsWith(".localhost"))
        return true;
    // 127.0.0.0/8 is all loopback
    return net.isIPv4(name) && name.startsWith("127.") && allowed.includes("127.0.0.1");
}

/**
 * The address a request comes from, for rate limits: the socket's peer, or behind a trusted reverse
 * proxy (`--trust-proxy`) the last address of X-Forwarded-For (the one the proxy itself appended; the
 * earlier ones are whatever the client claimed).
 */
export function clientAddress(req: IncomingMessage, trustProxy: boolean): string {
    if (trustProxy) {
        const header = req.headers["x-forwarded-for"];
        const value = Array.isArray(header) ? header.join(",") : header;
        if (value != null) {
            const last = value.split(",").map((s) => s.trim()).filter((s) => s !== "").pop();
            if (last != null)
                return last;
        }
    }
    return req.socket.remoteAddress ?? "unknown";
}
