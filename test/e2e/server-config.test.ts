import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ConfigError, loadConfig } from "../../server/config/load-config.js";
import { envOf, flagOf, optionDecls, optionKeys, serverDefaultBudget } from "../../server/config/options.js";
import { helpText, optionsMarkdown } from "../../server/config/options-doc.js";
import { modelsCacheDir } from "../../lib/models.js";
import { repoRoot } from "../../lib/paths.js";
import { testModelPath } from "../../lib/model-paths.js";
import { serverEntry } from "../helpers/server-process.js";

function throwsNaming(fn: () => unknown, option: string, pattern?: RegExp): void {
    assert.throws(fn, (err: unknown) => {
        assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
        assert.ok(err.message.includes(option), `"${err.message}" does not name ${option}`);
        if (pattern != null)
            assert.match(err.message, pattern);
        return true;
    });
}

describe("server configuration", function () {
    let tmp: string;
    beforeEach(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-config-")); });
    afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

    it("has a default for every option, binds to loopback and serves SmolLM2 with KeepKV at a budget by default", function () {
        const { config, sources } = loadConfig([], {});
        for (const key of optionKeys)
            assert.equal(sources[key], "default");
        assert.equal(config.host, "127.0.0.1");
        assert.equal(config.port, 8080);
        assert.equal(config.model, path.join(modelsCacheDir(), "SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert.equal(config.policy, "keepkv");
        assert.equal(config.budget, serverDefaultBudget);
        assert.equal(config.contextSize, 0, "the model's training context: 8192 for SmolLM2");
        assert.equal(config.apiKey, null);
    });

    it("--policy off alone turns the default budget off too; a budget given with it is still an error", function () {
        assert.equal(loadConfig(["--policy", "off"], {}).config.budget, null);
        assert.equal(loadConfig([], { KEEPKV_POLICY: "off" }).config.budget, null);
        assert.equal(loadConfig(["--policy", "off", "--budget", "0.5"], {}).config.budget, 0.5);
    });

    it("takes the command line over the environment over the config file", function () {
        const file = path.join(tmp, "keepkv.json");
        fs.writeFileSync(file, JSON.stringify({ port: 9001, sequences: 3, threads: 2, allowedOrigins: ["http://a.example"] }));
        const { config, sources } = loadConfig(["--config", file, "--port", "9003", "--budget=0.5", "--policy", "keepkv"],
            { KEEPKV_PORT: "9002", KEEPKV_SEQUENCES: "5", KEEPKV_API_KEY: "secret" });
        assert.equal(config.port, 9003);
        assert.equal(sources.port, "cli");
        assert.equal(config.sequences, 5);
        assert.equal(sources.sequences, "env");
        assert.equal(config.threads, 2);
        assert.equal(sources.threads, "file");
        assert.deepEqual(config.allowedOrigins, ["http://a.example"]);
        assert.equal(config.budget, 0.5);
        assert.equal(config.policy, "keepkv");
        assert.equal(config.apiKey, "secret");
        assert.equal(loadConfig(["--budget", "none"], {}).config.budget, null);
        assert.deepEqual(loadConfig(["--allowed-origins", "http://a, http://b"], {}).config.allowedOrigins, ["http://a", "http://b"]);
    });

    it("accepts every KeepKV policy and passes it through", function () {
        for (const policy of ["off", "window", "evict", "merge-naive", "keepkv"])
            assert.equal(loadConfig(["--policy", policy], {}).config.policy, policy);
    });

    it("an invalid value stops with a message that names the option and where the value came from", function () {
        throwsNaming(() => loadConfig(["--port", "70000"], {}), "--port", /command line/);
        throwsNaming(() => loadConfig([], { KEEPKV_SEQUENCES: "many" }), "KEEPKV_SEQUENCES", /environment/);
        throwsNaming(() => loadConfig(["--policy", "zip"], {}), "--policy", /one of off, window, evict, merge-naive, keepkv/);
        throwsNaming(() => loadConfig(["--threshold", "1.5"], {}), "--threshold");
        // the conversation-state options are numbers like the others: finite and in range
        for (const [flag, value] of [["--state-max-mb", "Infinity"], ["--state-max-mb", "0"], ["--state-max-mb", "1e400"],
            ["--state-save-idle", "-1"], ["--state-save-idle", "Infinity"], ["--state-save-idle", "NaN"]])
            throwsNaming(() => loadConfig([flag, value], {}), flag);
        throwsNaming(() => loadConfig(["--prot", "1"], {}), "--prot", /unknown option/);
        throwsNaming(() => loadConfig(["--port"], {}), "--port", /needs a value/);
        const file = path.join(tmp, "bad.json");
        fs.writeFileSync(file, JSON.stringify({ contextSize: 512, sequencs: 2 }));
        throwsNaming(() => loadConfig(["--config", file], {}), "sequencs", /not a known option/);
        fs.writeFileSync(file, JSON.stringify({ batchSize: "big" }));
        throwsNaming(() => loadConfig([], { KEEPKV_CONFIG: file }), "--batch-size", /bad\.json/);
        fs.writeFileSync(file, "{ not json");
        throwsNaming(() => loadConfig(["--config", file], {}), "bad.json", /not valid JSON/);
    });

    it("the server process refuses an invalid configuration at startup, naming the option", function () {
        const run = (args: string[]) => spawnSync(process.execPath, [serverEntry, ...args], { encoding: "utf8", timeout: 60_000 });
        const port = run(["--port", "-1"]);
        assert.equal(port.status, 2);
        assert.match(port.stderr, /--port/);
        // a budget needs a policy: checked against the model before anything loads
        const budget = run(["--model", testModelPath(), "--budget", "64", "--policy", "off"]);
        assert.equal(budget.status, 2);
        assert.match(budget.stderr, /--budget/);
        const model = run(["--model", path.join(tmp, "missing.gguf")]);
        assert.equal(model.status, 2);
        assert.match(model.stderr, /--model .*missing\.gguf/s);
    });

    it("--help lists every option with its environment variable and default", function () {
        const help = helpText();
        for (const key of optionKeys) {
            assert.ok(help.includes(flagOf(key)), `help lacks ${flagOf(key)}`);
            assert.ok(help.includes(envOf(key)), `help lacks ${envOf(key)}`);
        }
        const out = spawnSync(process.execPath, [serverEntry, "--help"], { encoding: "utf8" });
        assert.equal(out.status, 0);
        assert.equal(out.stdout, help);
    });

    it("docs/server.md carries the option table generated from the declarations", function () {
        const doc = fs.readFileSync(path.join(repoRoot, "docs", "server.md"), "utf8");
        const begin = "<!-- options:begin (generated by `npm run docs:options`) -->\n";
        const end = "<!-- options:end -->";
        const from = doc.indexOf(begin);
        const to = doc.indexOf(end);
        assert.ok(from >= 0 && to > from, "docs/server.md has no generated options section");
        assert.equal(doc.slice(from + begin.length, to), optionsMarkdown(),
            "docs/server.md is out of date: run `npm run docs:options`");
        for (const key of optionKeys)
            assert.ok(optionDecls[key].doc.length > 10, `option ${key} has no real documentation`);
    });
});
