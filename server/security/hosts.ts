// Who is calling: the Host header check that stops DNS rebinding, and the client address that rate
// limits count by.
//
// DNS rebinding: a web page on evil.example makes its own name resolve to 127.0.0.1 (or to this machine's
// LAN address); the browser then sends the page's requests to this server with `Host: evil.example:8080`
// and `Origin: http://evil.example:8080`, which look same-origin to an Origin check. The server therefore
// accepts only Host names that mean this machine (localhost, 127.0.0.1, [::1], the bind address) and the
// names `--allowed-hosts` adds, whatever it binds. A server bound beyond loopback is also reached by
// address (`http://192.168.1.5:8080`): an IP literal cannot be rebound (the page would have to be served
// from that address), so any IP literal passes there.
import type { IncomingMessage } from "node:http";
import * as net from "node:net";

/** Whether a bind address is loopback only. */
export function isLoopbackAddress(host: string): boolean {
    const h = host.replace(/^\[|\]$/g, "").toLowerCase();
    if (h === "localhost" || h === "::1")
        return true;
    return net.isIPv4(h) && h.startsWith("127.");
}

/**
 * Whether the server may start with this bind: beyond loopback only when the API takes keys (a user or
 * admin key from any of --api-key, --api-keys, --api-key-file), or with `--insecure`. A server bound
 * beyond loopback whose API is open serves anyone who can reach the port; a metrics key alone does not
 * change that, since it guards /metrics only.
 */
export function openBindAllowed(config: { host: string, insecure: boolean }, keys: { apiOpen: boolean }): boolean {
    return isLoopbackAddress(config.host) || !keys.apiOpen || config.insecure;
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

/** The Host names a server accepts; null: any (`--allowed-hosts '*'`). */
export type HostPolicy = {
    names: readonly string[],
    /** any IPv4 or IPv6 literal (a server bound beyond loopback is reached by address) */
    anyAddress: boolean
};

export function effectiveAllowedHosts(bindHost: string, allowedHosts: readonly string[]): HostPolicy | null {
    if (allowedHosts.includes("*"))
        return null;
    const loopbackNames = ["localhost", "127.0.0.1", "::1", bindHost.replace(/^\[|\]$/g, "").toLowerCase()];
    return {
        names: [...new Set([...loopbackNames, ...allowedHosts.map((h) => h.toLowerCase())])],
        anyAddress: !isLoopbackAddress(bindHost)
    };
}

/**
 * Whether a request's Host header is acceptable. Requests without one (HTTP/1.0 tools) pass: a browser
 * always sends it. `*.localhost` names are loopback by definition (RFC 6761) and pass too.
 */
export function hostAllowed(header: string | undefined, policy: HostPolicy | null): boolean {
    if (policy == null || header == null)
        return true;
    const name = hostName(header);
    if (name == null)
        return false;
    if (policy.names.includes(name) || name.endsWith(".localhost"))
        return true;
    if (policy.anyAddress && net.isIP(name) !== 0)
        return true;
    // 127.0.0.0/8 is all loopback
    return net.isIPv4(name) && name.startsWith("127.") && policy.names.includes("127.0.0.1");
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
