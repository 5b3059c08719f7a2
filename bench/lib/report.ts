// What every benchmark prints and writes: the machine, a JSON object on stdout (--json) or a table, a
// markdown table and a PNG chart under the results directory, and progress on stderr.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { readBuildManifest } from "../../lib/build-key.js";
import { repoRoot } from "../../lib/paths.js";

export function machineInfo() {
    const manifest = readBuildManifest();
    return {
        cpu: os.cpus()[0]?.model ?? "unknown",
        cores: os.cpus().length,
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        platform: `${process.platform}-${process.arch}`,
        node: process.versions.node,
        keepkvBuild: manifest?.key ?? null,
        date: new Date().toISOString()
    };
}

export function progress(message: string): void {
    process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

export function resultsDir(name: string): string {
    const dir = path.resolve(process.env.KEEPKV_RESULTS_DIR ?? path.join(repoRoot, "results"), name);
    fs.mkdirSync(dir, { recursive: true });
    return dir;
}

export function median(values: number[]): number {
    const s = [...values].sort((a, b) => a - b);
    const m = Math.floor(s.length / 2);
    return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export type Column<T> = { title: string, value: (row: T) => string };

export function markdownTable<T>(rows: T[], columns: Column<T>[]): string {
    const head = `| ${columns.map((c) => c.title).join(" | ")} |`;
    const sep = `|${columns.map(() => "---").join("|")}|`;
    const body = rows.map((r) => `| ${columns.map((c) => c.value(r)).join(" | ")} |`);
    return [head, sep, ...body].join("\n") + "\n";
}

export function textTable<T>(rows: T[], columns: Column<T>[]): string {
    const cells = [columns.map((c) => c.title), ...rows.map((r) => columns.map((c) => c.value(r)))];
    const widths = columns.map((_, i) => Math.max(...cells.map((row) => row[i]!.length)));
    return cells.map((row) => row.map((v, i) => v.padEnd(widths[i]!)).join("  ")).join("\n") + "\n";
}

export type Series = { name: string, points: { x: number, y: number }[] };

/** A line chart as an SVG document. */
export function lineChartSvg(opts: {
    title: string, xLabel: string, yLabel: string, series: Series[], logY?: boolean, width?: number, height?: number
}): string {
    const width = opts.width ?? 900;
    const height = opts.height ?? 520;
    const m = { left: 80, right: 220, top: 50, bottom: 60 };
    const all = opts.series.flatMap((s) => s.points);
    const xs = all.map((p) => p.x);
    const ys = all.map((p) => opts.logY ? Math.log10(p.y) : p.y);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.08;
    y0 -= pad;
    y1 += pad;
    const px = (x: number) => m.left + (x - x0) / (x1 - x0) * (width - m.left - m.right);
    const py = (y: number) => height - m.bottom - ((opts.logY ? Math.log10(y) : y) - y0) / (y1 - y0) * (height - m.top - m.bottom);
    const colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
    const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    const parts: string[] = [];
    parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="13">`);
    parts.push(`<rect width="100%" height="100%" fill="white"/>`);
    parts.push(`<text x="${width / 2}" y="28" text-anchor="middle" font-size="16" font-weight="bold">${esc(opts.title)}</text>`);
    // axes and ticks
    parts.push(`<line x1="${m.left}" y1="${height - m.bottom}" x2="${width - m.right}" y2="${height - m.bottom}" stroke="#333"/>`);
    parts.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${height - m.bottom}" stroke="#333"/>`);
    // ticks closer than a label's width to the previous one are left out, so that labels never overlap
    let lastTick = -Infinity;
    for (const x of [...new Set(xs)].sort((a, b) => a - b)) {
        if (px(x) - lastTick < 36)
            continue;
        lastTick = px(x);
        parts.push(`<text x="${px(x)}" y="${height - m.bottom + 18}" text-anchor="middle">${x}</text>`);
    }
    for (let i = 0; i <= 5; i++) {
        const v = y0 + (y1 - y0) * i / 5;
        const label = opts.logY ? (10 ** v).toPrecision(3) : v.toPrecision(3);
        const y = height - m.bottom - i / 5 * (height - m.top - m.bottom);
        parts.push(`<line x1="${m.left - 4}" y1="${y}" x2="${width - m.right}" y2="${y}" stroke="#eee"/>`);
        parts.push(`<text x="${m.left - 8}" y="${y + 4}" text-anchor="end">${label}</text>`);
    }
    parts.push(`<text x="${(m.left + width - m.right) / 2}" y="${height - 18}" text-anchor="middle">${esc(opts.xLabel)}</text>`);
    parts.push(`<text transform="translate(20 ${(m.top + height - m.bottom) / 2}) rotate(-90)" text-anchor="middle">${esc(opts.yLabel)}</text>`);
    opts.series.forEach((s, i) => {
        const c = colors[i % colors.length]!;
        // past the palette, series repeat a color with a dashed line
        const dash = i >= colors.length ? ` stroke-dasharray="6 4"` : "";
        const pts = [...s.points].sort((a, b) => a.x - b.x);
        if (pts.length > 1)
            parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2"${dash} points="${pts.map((p) => `${px(p.x)},${py(p.y)}`).join(" ")}"/>`);
        for (const p of pts)
            parts.push(`<circle cx="${px(p.x)}" cy="${py(p.y)}" r="4" fill="${c}"/>`);
        const ly = m.top + 10 + i * 20;
        parts.push(`<line x1="${width - m.right + 15}" y1="${ly - 7}" x2="${width - m.right + 31}" y2="${ly - 7}" stroke="${c}" stroke-width="3"${dash}/>`);
        parts.push(`<text x="${width - m.right + 35}" y="${ly - 3}">${esc(s.name)}</text>`);
    });
    parts.push(`</svg>`);
    return parts.join("\n");
}

/**
 * Grouped bars on a log scale, one group per category and one bar per series: values of 0 (a log scale has
 * no room for them) stand at the bottom of the axis, labelled 0.
 */
export function groupedBarChartSvg(opts: {
    title: string, yLabel: string, categories: string[], series: { name: string, values: number[] }[],
    width?: number, height?: number
}): string {
    const width = opts.width ?? 1160;
    const height = opts.height ?? 560;
    const m = { left: 150, right: 170, top: 50, bottom: 150 };
    const positive = opts.series.flatMap((s) => s.values).filter((v) => v > 0);
    const y1 = Math.ceil(Math.log10(Math.max(...positive)));
    const y0 = Math.floor(Math.log10(Math.min(...positive))) - 1;
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const py = (v: number) => height - m.bottom - (Math.log10(v) - y0) / (y1 - y0) * plotH;
    const colors = ["#7f7f7f", "#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#17becf", "#8c564b"];
    const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    const groupW = plotW / opts.categories.length;
    const barW = groupW * 0.8 / opts.series.length;
    const parts: string[] = [];
    parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="13">`);
    parts.push(`<rect width="100%" height="100%" fill="white"/>`);
    parts.push(`<text x="${width / 2}" y="28" text-anchor="middle" font-size="16" font-weight="bold">${esc(opts.title)}</text>`);
    for (let e = y0; e <= y1; e++) {
        const y = py(10 ** e);
        parts.push(`<line x1="${m.left - 4}" y1="${y}" x2="${width - m.right}" y2="${y}" stroke="#eee"/>`);
        parts.push(`<text x="${m.left - 8}" y="${y + 4}" text-anchor="end">1e${e}</text>`);
    }
    parts.push(`<line x1="${m.left}" y1="${height - m.bottom}" x2="${width - m.right}" y2="${height - m.bottom}" stroke="#333"/>`);
    parts.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${height - m.bottom}" stroke="#333"/>`);
    parts.push(`<text transform="translate(20 ${(m.top + height - m.bottom) / 2}) rotate(-90)" text-anchor="middle">${esc(opts.yLabel)}</text>`);
    opts.categories.forEach((c, ci) => {
        const gx = m.left + ci * groupW + groupW * 0.1;
        opts.series.forEach((s, si) => {
            const v = s.values[ci]!;
            const x = gx + si * barW;
            const top = v > 0 ? py(v) : height - m.bottom - 2;
            parts.push(`<rect x="${x}" y="${top}" width="${barW * 0.9}" height="${height - m.bottom - top}" fill="${colors[si % colors.length]}"/>`);
            if (!(v > 0))
                parts.push(`<text x="${x + barW * 0.45}" y="${top - 4}" text-anchor="middle" font-size="11">0</text>`);
        });
        const lx = m.left + (ci + 0.5) * groupW;
        parts.push(`<text transform="translate(${lx} ${height - m.bottom + 16}) rotate(-25)" text-anchor="end" font-size="12">${esc(c)}</text>`);
    });
    opts.series.forEach((s, si) => {
        const ly = m.top + 10 + si * 20;
        parts.push(`<rect x="${width - m.right + 15}" y="${ly - 12}" width="14" height="14" fill="${colors[si % colors.length]}"/>`);
        parts.push(`<text x="${width - m.right + 35}" y="${ly}">${esc(s.name)}</text>`);
    });
    parts.push(`</svg>`);
    return parts.join("\n");
}

/**
 * Heat maps side by side, one per panel, as one SVG document: rows and columns are labelled, each cell's value
 * in [0, 1] is drawn from red (0) to green (1) and written in it (the needle-in-a-haystack picture).
 */
export function heatMapsSvg(opts: {
    title: string, rowLabel: string, columnLabel: string, rows: string[], columns: string[],
    panels: { name: string, values: (number | null)[][] }[]
}): string {
    const cell = 44;
    const panelWidth = Math.max(opts.columns.length * cell + 30, 190);
    const m = { left: 90, top: 70, bottom: 50 };
    const width = m.left + opts.panels.length * panelWidth + 20;
    const height = m.top + opts.rows.length * cell + m.bottom;
    const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
    const color = (v: number) => `hsl(${Math.round(v * 120)}, 65%, ${Math.round(45 + 10 * (1 - Math.abs(v - 0.5) * 2))}%)`;
    const parts: string[] = [];
    parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`);
    parts.push(`<rect width="100%" height="100%" fill="white"/>`);
    parts.push(`<text x="${width / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${esc(opts.title)}</text>`);
    opts.rows.forEach((r, ri) => parts.push(`<text x="${m.left - 8}" y="${m.top + ri * cell + cell / 2 + 4}" text-anchor="end">${esc(r)}</text>`));
    parts.push(`<text x="16" y="${m.top + opts.rows.length * cell / 2}" transform="rotate(-90 16 ${m.top + opts.rows.length * cell / 2})" text-anchor="middle">${esc(opts.rowLabel)}</text>`);
    opts.panels.forEach((panel, pi) => {
        const x0 = m.left + pi * panelWidth;
        parts.push(`<text x="${x0 + opts.columns.length * cell / 2}" y="${m.top - 26}" text-anchor="middle" font-weight="bold">${esc(panel.name)}</text>`);
        opts.columns.forEach((c, ci) => parts.push(`<text x="${x0 + ci * cell + cell / 2}" y="${m.top - 8}" text-anchor="middle">${esc(c)}</text>`));
        panel.values.forEach((row, ri) => row.forEach((v, ci) => {
            const x = x0 + ci * cell;
            const y = m.top + ri * cell;
            parts.push(`<rect x="${x}" y="${y}" width="${cell - 2}" height="${cell - 2}" fill="${v == null ? "#eee" : color(v)}"/>`);
            if (v != null)
                parts.push(`<text x="${x + cell / 2 - 1}" y="${y + cell / 2 + 4}" text-anchor="middle" fill="white">${Math.round(v * 100)}</text>`);
        }));
        parts.push(`<text x="${x0 + opts.columns.length * cell / 2}" y="${height - 20}" text-anchor="middle">${esc(opts.columnLabel)}</text>`);
    });
    parts.push(`</svg>`);
    return parts.join("\n");
}

/** Renders an SVG document to PNG with the system's Chromium (Debian package chromium), offline. */
export async function svgToPng(svg: string, pngPath: string): Promise<void> {
    const executablePath = process.env.KEEPKV_CHROMIUM ?? "/usr/bin/chromium";
    if (!fs.existsSync(executablePath))
        throw new Error(`Chromium is needed to draw the chart: ${executablePath} is missing (Debian: apt-get install chromium, or set KEEPKV_CHROMIUM)`);
    const { chromium } = await import("playwright-core");
    // playwright gives the browser a fresh temporary profile of its own
    const browser = await chromium.launch({
        executablePath,
        args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    });
    try {
        const page = await browser.newPage();
        const w = Number(/width="(\d+)"/.exec(svg)?.[1] ?? 900);
        const h = Number(/height="(\d+)"/.exec(svg)?.[1] ?? 520);
        await page.setViewportSize({ width: w, height: h });
        await page.setContent(`<html><body style="margin:0">${svg}</body></html>`);
        await page.screenshot({ path: pngPath, clip: { x: 0, y: 0, width: w, height: h } });
    } finally {
        await browser.close();
    }
}
