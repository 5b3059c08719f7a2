// The deployment files without a Docker engine (none runs here): Debian's docker-compose accepts the
// compose files in every combination, promtool accepts the Prometheus configuration, and the pieces
// agree with each other (service names, ports, mounts, the server's option variables, the Grafana
// provisioning paths). What needs an engine (building the images, starting the stack) is not tested.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parse as parseYaml } from "yaml";
import { repoRoot } from "../../lib/paths.js";
import { loadConfig } from "../../server/config/load-config.js";
import { envOf, optionKeys } from "../../server/config/options.js";
import { keyRingFrom } from "../../server/security/api-keys.js";
import { effectiveAllowedHosts, hostAllowed, openBindAllowed } from "../../server/security/hosts.js";
import { promtoolBinary } from "../helpers/prometheus.js";

const dockerCompose = process.env.KEEPKV_DOCKER_COMPOSE ?? "/usr/bin/docker-compose";

type ComposeService = {
    image?: string,
    build?: { context: string, dockerfile: string },
    profiles?: string[],
    environment?: Record<string, string | null>,
    volumes?: (string | { source: string, target: string })[],
    ports?: unknown[],
    healthcheck?: { test: string[] },
    depends_on?: Record<string, { condition: string }>,
    command?: string[],
    deploy?: { resources?: { reservations?: { devices?: { driver: string, capabilities: string[] }[] } } }
};
type ComposeConfig = { services: Record<string, ComposeService>, volumes?: Record<string, unknown> };

function compose(args: string[]): { status: number | null, stdout: string, stderr: string } {
    // a clean environment: the defaults of the files, not whatever the test runner's shell sets
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME };
    const res = spawnSync(dockerCompose, ["--project-directory", repoRoot, ...args], { cwd: repoRoot, env, encoding: "utf8" });
    if (res.error != null)
        throw new Error(`cannot run ${dockerCompose}: ${res.error.message} (install Debian's docker-compose: apt-get install docker-compose; ./scripts/setup.sh does it)`);
    return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

function resolved(files: string[], profiles: string[] = []): ComposeConfig {
    const res = compose([...files.flatMap((f) => ["-f", f]), ...profiles.flatMap((p) => ["--profile", p]), "config"]);
    assert.equal(res.status, 0, res.stderr);
    return parseYaml(res.stdout) as ComposeConfig;
}

/** "source:target[:mode]" or the long form: [source, target] */
function mounts(service: ComposeService): { source: string, target: string }[] {
    return (service.volumes ?? []).map((v) => {
        if (typeof v !== "string")
            return { source: v.source, target: v.target };
        const [source, target] = v.split(":");
        return { source: source!, target: target! };
    });
}

function mountOf(service: ComposeService, target: string): string {
    const found = mounts(service).find((m) => m.target === target);
    assert.ok(found != null, `a mount at ${target}`);
    return found.source;
}

describe("docker-compose files and the Prometheus configuration (no Docker engine here)", function () {
    const base = "docker-compose.yml";
    const cuda = "docker-compose.cuda.yml";

    before(function () {
        for (const tool of [dockerCompose, promtoolBinary])
            if (!fs.existsSync(tool))
                throw new Error(`${tool} is missing: apt-get install docker-compose prometheus (./scripts/setup.sh installs them)`);
    });

    for (const [files, profiles] of [[[base], []], [[base], ["scale"]], [[base, cuda], []], [[base, cuda], ["scale"]]] as const)
        it(`docker-compose ${files.map((f) => `-f ${f}`).join(" ")}${profiles.map((p) => ` --profile ${p}`).join("")} config -q accepts it`, function () {
            const res = compose([...files.flatMap((f) => ["-f", f]), ...profiles.flatMap((p) => ["--profile", p]), "config", "-q"]);
            assert.equal(res.status, 0, `${res.stdout}${res.stderr}`);
            assert.equal(res.stderr.trim(), "", "no warnings (unset variables, deprecated keys)");
        });

    it("promtool check config accepts deploy/prometheus/prometheus.yml", function () {
        const res = spawnSync(promtoolBinary, ["check", "config", path.join(repoRoot, "deploy", "prometheus", "prometheus.yml")], { encoding: "utf8" });
        assert.equal(res.status, 0, `${res.stdout}${res.stderr}`);
        assert.match(res.stdout, /SUCCESS/);
    });

    it("the stack: the server with health check and models folder, Prometheus and Grafana; the scale profile adds a replica and nginx", function () {
        const config = resolved([base]);
        const services = config.services;
        for (const name of ["keepkv", "keepkv-2", "nginx", "prometheus", "grafana"])
            assert.ok(services[name] != null, name);
        assert.deepEqual(services["keepkv"]!.profiles ?? [], [], "keepkv always runs");
        assert.deepEqual(services["keepkv-2"]!.profiles, ["scale"]);
        assert.deepEqual(services["nginx"]!.profiles, ["scale"]);
        for (const name of ["keepkv", "keepkv-2", "nginx", "prometheus", "grafana"])
            assert.ok((services[name]!.healthcheck?.test.length ?? 0) > 1, `${name} has a health check`);
        assert.match(services["keepkv"]!.healthcheck!.test.join(" "), /\/health/);

        for (const name of ["keepkv", "keepkv-2"]) {
            const s = services[name]!;
            assert.equal(s.build?.dockerfile, "Dockerfile");
            assert.equal(mountOf(s, "/models"), path.join(repoRoot, "models"), "GGUF drop-in folder");
            assert.equal(s.environment?.KEEPKV_MODELS_DIR, "/models");
            assert.equal(s.environment?.KEEPKV_HOST, "0.0.0.0");
            assert.equal(s.environment?.KEEPKV_POLICY, "keepkv");
        }
        // nginx waits for healthy replicas; Grafana for Prometheus
        assert.deepEqual(Object.keys(services["nginx"]!.depends_on ?? {}).sort(), ["keepkv", "keepkv-2"]);
        assert.equal(services["grafana"]!.depends_on?.prometheus?.condition, "service_healthy");
    });

    it("publishes every port on the host's 127.0.0.1 only; the server inside binds 0.0.0.0, which it accepts only because the file says --insecure, and keeps its Host check", function () {
        for (const [files, profiles] of [[[base], []], [[base], ["scale"]], [[base, cuda], []], [[base, cuda], ["scale"]]] as const) {
            const config = resolved([...files], [...profiles]);
            for (const [name, service] of Object.entries(config.services))
                for (const port of service.ports ?? []) {
                    // short syntax "127.0.0.1:8080:8080" or the long form docker-compose config writes
                    const hostIp = typeof port === "string" ? (port.split(":").length === 3 ? port.split(":")[0] : "") : (port as { host_ip?: string }).host_ip;
                    assert.equal(hostIp, "127.0.0.1", `${files.join(" + ")}: ${name} publishes ${JSON.stringify(port)}`);
                }
        }
        const env = resolved([base], ["scale"]).services["keepkv"]!.environment as NodeJS.ProcessEnv;
        const { config } = loadConfig([], env);
        assert.equal(config.host, "0.0.0.0");
        assert.equal(config.apiKey, null);
        const bindAllowed = (c: typeof config) => openBindAllowed(c, keyRingFrom(c));
        assert.equal(bindAllowed(config), true, "the stack starts without a key");
        assert.equal(bindAllowed(loadConfig([], { ...env, KEEPKV_INSECURE: "false" }).config), false, "and KEEPKV_INSECURE=false makes it insist on one");
        assert.equal(bindAllowed(loadConfig([], { ...env, KEEPKV_INSECURE: "false", KEEPKV_API_KEY: "k" }).config), true);
        assert.equal(bindAllowed(loadConfig([], { ...env, KEEPKV_INSECURE: "false", KEEPKV_API_KEYS: "alice:user:alice-key-0123456789" }).config), true, "a user key counts");
        assert.equal(bindAllowed(loadConfig([], { ...env, KEEPKV_INSECURE: "false", KEEPKV_METRICS_API_KEY: "m" }).config), false, "a metrics key alone leaves the API open");
        // the names the stack's own services use pass the Host check; a rebinding name does not
        const policy = effectiveAllowedHosts(config.host, config.allowedHosts);
        for (const host of ["keepkv:8080", "keepkv-2:8080", "localhost:8080", "127.0.0.1:8080", "172.18.0.3:8080"])
            assert.equal(hostAllowed(host, policy), true, host);
        assert.equal(hostAllowed("evil.example:8080", policy), false);
    });

    it("every KEEPKV_ variable the compose files set is an option of the server", function () {
        const known = new Set([...optionKeys.map((k) => envOf(k)), "KEEPKV_CONFIG"]);
        for (const files of [[base], [base, cuda]]) {
            const config = resolved(files);
            for (const name of ["keepkv", "keepkv-2"])
                for (const variable of Object.keys(config.services[name]!.environment ?? {}))
                    if (variable.startsWith("KEEPKV_"))
                        assert.ok(known.has(variable), `${variable} (${files.join(" + ")}) is not a server option`);
        }
        // and the Dockerfiles' ENV lines too (KEEPKV_BUILD_CACHE, KEEPKV_GPU and KEEPKV_SKIP_BUILD_CHECK are the build's)
        const buildVariables = new Set(["KEEPKV_BUILD_CACHE", "KEEPKV_GPU", "KEEPKV_SKIP_BUILD_CHECK"]);
        for (const file of ["Dockerfile", "Dockerfile.cuda"]) {
            const text = fs.readFileSync(path.join(repoRoot, file), "utf8");
            for (const [, variable] of text.matchAll(/\b(KEEPKV_[A-Z_]+)=/g))
                assert.ok(known.has(variable!) || buildVariables.has(variable!), `${variable} in ${file}`);
        }
    });

    it("every file the stack mounts or copies exists in the repository", function () {
        const config = resolved([base]);
        for (const [name, service] of Object.entries(config.services))
            for (const { source } of mounts(service))
                if (source.startsWith("/") && source !== path.join(repoRoot, "models"))
                    assert.ok(fs.existsSync(source), `${name} mounts ${source}`);
        for (const file of ["Dockerfile", "Dockerfile.cuda"]) {
            const text = fs.readFileSync(path.join(repoRoot, file), "utf8");
            for (const [, sources] of text.matchAll(/^COPY (?!--from)(.+) \S+$/gm))
                for (const source of sources!.split(/\s+/))
                    assert.ok(fs.existsSync(path.join(repoRoot, source)), `${file} copies ${source}`);
            assert.match(text, /^EXPOSE 8080$/m);
            assert.match(text, /^HEALTHCHECK /m);
            assert.match(text, /build-llama\.js/, `${file} builds the patched llama.cpp`);
        }
        assert.match(fs.readFileSync(path.join(repoRoot, "Dockerfile.cuda"), "utf8"), /build-llama\.js --gpu cuda/);
        const entrypoint = fs.statSync(path.join(repoRoot, "deploy", "docker-entrypoint.sh"));
        assert.ok((entrypoint.mode & 0o111) !== 0, "the entrypoint is executable");
    });

    it("the Dockerfiles' first compile step (build-llama alone, before the patched build) compiles here", function () {
        for (const file of ["Dockerfile", "Dockerfile.cuda"]) {
            const text = fs.readFileSync(path.join(repoRoot, file), "utf8").replace(/\\\n\s*/g, " ");
            const command = /RUN npx tsc (--ignoreConfig [^&]+?) &&/.exec(text);
            assert.ok(command != null, `${file}: the build-llama compile step`);
            const out = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-docker-tsc-"));
            try {
                const args = command[1]!.trim().split(/\s+/).map((a) => a === "dist" ? out : a);
                const res = spawnSync(process.execPath, [path.join(repoRoot, "node_modules", "typescript", "bin", "tsc"), ...args], { cwd: repoRoot, encoding: "utf8" });
                assert.equal(res.status, 0, `${file}: tsc ${args.join(" ")}\n${res.stdout}${res.stderr}`);
                assert.ok(fs.existsSync(path.join(out, "scripts", "build-llama.js")));
            } finally {
                fs.rmSync(out, { recursive: true, force: true });
            }
        }
    });

    it("the CUDA variant builds from Dockerfile.cuda and reserves NVIDIA GPUs for every replica", function () {
        const config = resolved([base, cuda]);
        for (const name of ["keepkv", "keepkv-2"]) {
            const s = config.services[name]!;
            assert.equal(s.build?.dockerfile, "Dockerfile.cuda");
            const device = s.deploy?.resources?.reservations?.devices?.[0];
            assert.equal(device?.driver, "nvidia");
            assert.deepEqual(device?.capabilities, ["gpu"]);
            // the override changes the build, not what the base file says about the server
            assert.equal(mountOf(s, "/models"), path.join(repoRoot, "models"));
            assert.equal(s.environment?.KEEPKV_POLICY, "keepkv");
        }
        assert.deepEqual(config.services["keepkv-2"]!.profiles, ["scale"]);
    });

    it("Prometheus scrapes every replica by its service name; nginx balances the same replicas", function () {
        const config = resolved([base]);
        const replicas = Object.keys(config.services).filter((n) => /^keepkv(-\d+)?$/.test(n)).sort();
        const prom = parseYaml(fs.readFileSync(mountOf(config.services["prometheus"]!, "/etc/prometheus/prometheus.yml"), "utf8")) as {
            scrape_configs: { job_name: string, dns_sd_configs?: { names: string[], port: number }[] }[]
        };
        const job = prom.scrape_configs.find((j) => j.job_name === "keepkv");
        assert.ok(job != null);
        assert.deepEqual([...job.dns_sd_configs![0]!.names].sort(), replicas);
        assert.equal(job.dns_sd_configs![0]!.port, 8080);
        const nginx = fs.readFileSync(mountOf(config.services["nginx"]!, "/etc/nginx/conf.d/default.conf"), "utf8");
        const upstream = [...nginx.matchAll(/^\s*server\s+([\w-]+):8080\b/gm)].map((m) => m[1]).sort();
        assert.deepEqual(upstream, replicas);
        assert.match(nginx, /hash \$keepkv_conversation consistent;/);
    });

    it("Grafana gets the provisioned datasource and the dashboard where the provisioning looks for it", function () {
        const config = resolved([base]);
        const grafana = config.services["grafana"]!;
        const provisioning = mountOf(grafana, "/etc/grafana/provisioning");
        const datasources = parseYaml(fs.readFileSync(path.join(provisioning, "datasources", "prometheus.yml"), "utf8")) as {
            datasources: { type: string, url: string, uid: string }[]
        };
        assert.equal(datasources.datasources[0]!.type, "prometheus");
        assert.equal(datasources.datasources[0]!.url, "http://prometheus:9090");
        const providers = parseYaml(fs.readFileSync(path.join(provisioning, "dashboards", "keepkv.yml"), "utf8")) as {
            providers: { type: string, options: { path: string } }[]
        };
        const dashboardsTarget = providers.providers[0]!.options.path;
        const dashboards = mountOf(grafana, dashboardsTarget);
        assert.ok(fs.existsSync(path.join(dashboards, "keepkv.json")));
        assert.equal(grafana.environment?.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH, `${dashboardsTarget}/keepkv.json`);
    });
});
