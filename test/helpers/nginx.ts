// A real nginx (Debian's /usr/sbin/nginx) as a non-daemon child of the test, with its own prefix,
// configuration and logs in a temporary folder, on a free loopback port. It runs the repository's
// deploy/nginx/keepkv.conf with only the upstream servers and the listen port replaced.
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { repoRoot } from "../../lib/paths.js";
import { freePort } from "./free-port.js";

export const nginxBinary = process.env.KEEPKV_NGINX ?? "/usr/sbin/nginx";
export const deployNginxConf = path.join(repoRoot, "deploy", "nginx", "keepkv.conf");

export type NginxHandle = {
    url: string,
    port: number,
    dir: string,
    /** the access log: one line per request, "conversation upstream status request" */
    accessLog(): string[],
    output(): string,
    stop(): Promise<void>
};

/** deploy/nginx/keepkv.conf with the given upstream servers (host:port) and listen address. */
export function keepKvConfFor(upstreams: string[], listen: string): string {
    const text = fs.readFileSync(deployNginxConf, "utf8");
    const serverLine = /^(\s*)server\s+keepkv[\w-]*:8080\b([^;]*);\n/gm;
    const lines = [...text.matchAll(serverLine)];
    if (lines.length === 0)
        throw new Error(`${deployNginxConf}: no "server keepkv...:8080" lines in its upstream`);
    const indent = lines[0]![1]!;
    const options = lines[0]![2]!;
    let replaced = false;
    const conf = text.replace(serverLine, () => {
        if (replaced)
            return "";
        replaced = true;
        return upstreams.map((u) => `${indent}server ${u}${options};\n`).join("");
    });
    if (!/^\s*listen 8080;$/m.test(conf))
        throw new Error(`${deployNginxConf}: no "listen 8080;" line`);
    return conf.replace(/^(\s*)listen 8080;$/m, `$1listen ${listen};`);
}

export async function startNginx(upstreams: string[]): Promise<NginxHandle> {
    if (!fs.existsSync(nginxBinary))
        throw new Error(`${nginxBinary} is missing: install Debian's nginx (apt-get install nginx; ./scripts/setup.sh does it) or set KEEPKV_NGINX`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-nginx-"));
    // workers run as an unprivileged user when the test runs as root: they must reach the temp folders
    fs.chmodSync(dir, 0o755);
    const port = await freePort();
    fs.writeFileSync(path.join(dir, "keepkv.conf"), keepKvConfFor(upstreams, `127.0.0.1:${port}`));
    fs.writeFileSync(path.join(dir, "nginx.conf"), [
        "daemon off;",
        "master_process on;",
        "worker_processes 1;",
        `pid ${dir}/nginx.pid;`,
        "error_log stderr warn;",
        "events { worker_connections 512; }",
        "http {",
        `    client_body_temp_path ${dir}/client_body;`,
        `    proxy_temp_path ${dir}/proxy;`,
        `    fastcgi_temp_path ${dir}/fastcgi;`,
        `    uwsgi_temp_path ${dir}/uwsgi;`,
        `    scgi_temp_path ${dir}/scgi;`,
        `    include ${dir}/keepkv.conf;`,
        "    log_format keepkv '$keepkv_conversation $upstream_addr $status \"$request\"';",
        `    access_log ${dir}/access.log keepkv;`,
        "}",
        ""
    ].join("\n"));
    const proc: ChildProcess = spawn(nginxBinary, ["-p", dir, "-c", path.join(dir, "nginx.conf"), "-e", "stderr"], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    proc.stdout!.on("data", (d: Buffer) => { output += d.toString(); });
    proc.stderr!.on("data", (d: Buffer) => { output += d.toString(); });
    const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    process.once("exit", () => proc.kill("SIGKILL"));
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 30_000;
    for (;;) {
        if (proc.exitCode != null)
            throw new Error(`nginx exited (${proc.exitCode}):\n${output}`);
        try {
            if ((await fetch(`${url}/nginx-health`)).status === 200)
                break;
        } catch {
            // not listening yet
        }
        if (Date.now() > deadline)
            throw new Error(`nginx did not answer within 30 s:\n${output}`);
        await new Promise((r) => setTimeout(r, 100));
    }
    return {
        url,
        port,
        dir,
        accessLog: () => {
            try {
                return fs.readFileSync(path.join(dir, "access.log"), "utf8").split("\n").filter((l) => l !== "");
            } catch {
                return [];
            }
        },
        output: () => output,
        async stop() {
            if (proc.exitCode == null && proc.signalCode == null)
                proc.kill("SIGTERM");
            await exited;
            fs.rmSync(dir, { recursive: true, force: true });
        }
    };
}
