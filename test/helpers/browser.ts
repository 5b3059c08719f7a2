// Headless Chromium (Debian's /usr/bin/chromium, never a downloaded browser) driven by playwright-core,
// with a fresh profile in a temporary folder. Shared by the dashboard and Grafana-preview tests.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { repoRoot } from "../../lib/paths.js";

export const chromiumBinary = process.env.KEEPKV_CHROMIUM ?? "/usr/bin/chromium";
export const screenshotsDir = path.join(repoRoot, "docs", "screenshots");

// offline and quiet: nothing may reach the network, nothing runs in the background
const chromiumArgs = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"
];

export type BrowserHandle = {
    context: BrowserContext,
    page: Page,
    /** console errors, page errors and failed requests seen so far */
    problems: string[],
    close(): Promise<void>
};

/** Fails with a message that says how to install Chromium when the binary is missing. */
export function requireChromium(): void {
    if (!fs.existsSync(chromiumBinary))
        throw new Error(`${chromiumBinary} is missing: install Debian's chromium (apt-get install chromium; ./scripts/setup.sh does it) or set KEEPKV_CHROMIUM`);
}

export async function openBrowser(opts: { width?: number, height?: number } = {}): Promise<BrowserHandle> {
    requireChromium();
    const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "keepkv-chromium-"));
    const context = await chromium.launchPersistentContext(userDataDir, {
        executablePath: chromiumBinary,
        headless: true,
        args: chromiumArgs,
        viewport: { width: opts.width ?? 1400, height: opts.height ?? 1000 },
        deviceScaleFactor: 1,
        timeout: 120_000
    });
    const page = context.pages()[0] ?? await context.newPage();
    const problems: string[] = [];
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ""}`));
    return {
        context,
        page,
        problems,
        async close() {
            await context.close().catch(() => undefined);
            fs.rmSync(userDataDir, { recursive: true, force: true });
        }
    };
}

/** Saves a screenshot under docs/screenshots/ and returns its path. */
export async function saveScreenshot(page: Page, name: string, opts: { fullPage?: boolean } = {}): Promise<string> {
    fs.mkdirSync(screenshotsDir, { recursive: true });
    const file = path.join(screenshotsDir, name);
    await page.screenshot({ path: file, fullPage: opts.fullPage ?? false });
    return file;
}
