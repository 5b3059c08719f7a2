// HTTP requests the way fetch cannot make them: from a chosen local address (127.0.0.2 and so on are all
// this machine, and the server counts them as different clients), with any Host header.
import * as http from "node:http";

export type RawResponse = { status: number, body: string, headers: http.IncomingHttpHeaders };

export function requestFrom(port: number, opts: {
    localAddress?: string, method?: string, path: string, headers?: Record<string, string>, body?: object | string, agent?: http.Agent | false
}): Promise<RawResponse> {
    const body = opts.body == null ? undefined : typeof opts.body === "string" ? opts.body : JSON.stringify(opts.body);
    return new Promise((resolve, reject) => {
        const req = http.request({
            host: "127.0.0.1", port, method: opts.method ?? (body != null ? "POST" : "GET"), path: opts.path,
            ...(opts.localAddress != null ? { localAddress: opts.localAddress } : {}),
            agent: opts.agent ?? false,
            headers: { ...(body != null ? { "Content-Type": "application/json" } : {}), ...opts.headers }
        }, (res) => {
            let text = "";
            res.setEncoding("utf8").on("data", (d: string) => { text += d; }).on("end", () => resolve({ status: res.statusCode ?? 0, body: text, headers: res.headers }));
        });
        req.on("error", reject);
        req.end(body);
    });
}
