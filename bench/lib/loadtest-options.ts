// The load test's options (bench/loadtest.ts), parsed by util.parseArgs.
import { parseArgs } from "node:util";
import { describeParseArgsError, isParseArgsError } from "../../scripts/lib/command-line.js";
import { testModelPath } from "../../lib/model-paths.js";

export type LoadTestOptions = {
    clients: number,
    durationS: number,
    /** seconds after which memory counts as warmed up (0: a fifth of the duration, at least 5 s) */
    warmupS: number,
    /** the longest wait for requests in flight after the duration */
    drainS: number,
    seed: number,
    json: boolean,
    /** share of clients that use the OpenAI HTTP API (the rest use the WebSocket) */
    httpShare: number,
    /** drive this server instead of starting one (loopback only) */
    url: string | null,
    apiKey: string | null,
    /** server options for the server the load test starts */
    model: string,
    sequences: number,
    contextSize: number,
    policy: string,
    budget: string,
    batchSize: number,
    threads: number,
    maxTokens: number,
    /** further server arguments */
    serverArgs: string[]
};

export const loadTestDefaults: LoadTestOptions = {
    clients: 32,
    durationS: 300,
    warmupS: 0,
    drainS: 60,
    seed: 1,
    json: false,
    httpShare: 0.25,
    url: null,
    apiKey: null,
    // stories3M: the load test measures the server under load, not the model; its prompts are TinyStories
    model: testModelPath(),
    sequences: 8,
    contextSize: 1024,
    policy: "keepkv",
    budget: "64",
    batchSize: 16,
    threads: 1,
    maxTokens: 160,
    serverArgs: []
};

export const loadTestUsage = `Usage: npm run -s loadtest -- [options]

  --clients N        concurrent clients (default 32)
  --duration S       seconds of load (default 300)
  --warmup S         seconds before memory counts as warmed up (default: a fifth of the duration, >= 10)
  --drain S          longest wait for requests in flight at the end (default 60)
  --seed N           seed of the random choices (default 1)
  --json             print one JSON object instead of the report
  --http-share F     share of clients on the OpenAI HTTP API (default 0.25)
  --url URL          drive a running server (loopback only) instead of starting one
  --api-key KEY      its bearer token
  --model PATH, --sequences N, --context-size N, --policy P, --budget B, --batch-size N, --threads N, --max-tokens N
                     options of the server it starts (defaults stories3M, 8, 1024, keepkv, 64, 16, 1, 160)
  --server-arg ARG   one more argument for that server (repeatable)
`;

/** --help was given: the caller prints the usage and exits 0. */
export class LoadTestHelp extends Error {
    constructor() {
        super(loadTestUsage);
    }
}

const stringOptions = [
    "clients", "duration", "warmup", "drain", "seed", "http-share", "url", "api-key",
    "model", "sequences", "context-size", "policy", "budget", "batch-size", "threads", "max-tokens"
] as const;
type StringOption = typeof stringOptions[number];

/**
 * Throws LoadTestHelp for --help, and an Error that names the option (and ends with the usage) for an
 * unknown option or a bad value.
 */
export function parseLoadTestArgs(argv: readonly string[]): LoadTestOptions {
    // a server argument is nearly always an option itself (--server-arg --log-level): util.parseArgs takes
    // a value that starts with a dash only in the --name=value form
    const args: string[] = [];
    for (let i = 0; i < argv.length; i++)
        args.push(argv[i] === "--server-arg" && i + 1 < argv.length ? `--server-arg=${argv[++i]!}` : argv[i]!);
    let values;
    try {
        values = parseArgs({
            args,
            options: {
                ...Object.fromEntries(stringOptions.map((name) => [name, { type: "string" as const }])) as Record<StringOption, { type: "string" }>,
                json: { type: "boolean" },
                "server-arg": { type: "string", multiple: true },
                help: { type: "boolean", short: "h" }
            },
            strict: true,
            allowPositionals: false
        }).values;
    } catch (err) {
        throw new Error(`${isParseArgsError(err) ? describeParseArgsError(err) : String(err)}\n${loadTestUsage}`);
    }
    if (values.help === true)
        throw new LoadTestHelp();

    const num = (flag: StringOption, min: number, fallback: number): number => {
        const raw = values[flag];
        if (raw === undefined)
            return fallback;
        const n = Number(raw);
        if (raw === "" || !Number.isFinite(n) || n < min)
            throw new Error(`--${flag} needs a number >= ${min}, got ${raw}`);
        return n;
    };
    const d = loadTestDefaults;
    const opts: LoadTestOptions = {
        clients: Math.floor(num("clients", 1, d.clients)),
        durationS: num("duration", 1, d.durationS),
        warmupS: num("warmup", 0, d.warmupS),
        drainS: num("drain", 1, d.drainS),
        seed: Math.floor(num("seed", 0, d.seed)),
        json: values.json === true,
        httpShare: Math.min(1, num("http-share", 0, d.httpShare)),
        url: values.url ?? d.url,
        apiKey: values["api-key"] ?? d.apiKey,
        model: values.model ?? d.model,
        sequences: Math.floor(num("sequences", 1, d.sequences)),
        contextSize: Math.floor(num("context-size", 64, d.contextSize)),
        policy: values.policy ?? d.policy,
        budget: values.budget ?? d.budget,
        batchSize: Math.floor(num("batch-size", 1, d.batchSize)),
        threads: Math.floor(num("threads", 0, d.threads)),
        maxTokens: Math.floor(num("max-tokens", 1, d.maxTokens)),
        serverArgs: values["server-arg"] ?? []
    };
    if (opts.url != null) {
        const host = new URL(opts.url).hostname.replace(/^\[|\]$/g, "");
        if (!(host === "localhost" || host === "::1" || host.startsWith("127.")))
            throw new Error(`--url must be a loopback address (the load test never leaves this machine), got ${opts.url}`);
    }
    return opts;
}
