// @ts-check
// A small SVG line chart: time on x, one or more series on y (starting at 0), a legend with the latest
// values, optional horizontal reference series drawn dashed. No dependencies; redraws on resize.
// The legend items carry data-series / data-latest / data-max attributes (used by the tests).

const svgNs = "http://www.w3.org/2000/svg";
const palette = ["#2f7ed8", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#6c757d", "#d62976", "#3caea3"];

/**
 * @typedef {{ key: string, label: string, color?: string, dashed?: boolean }} SeriesSpec
 * @typedef {{ t: number, v: number }} Point
 * @typedef {{ spec: SeriesSpec, color: string, points: Point[] }} Series
 * @typedef {{
 *   series?: SeriesSpec[],
 *   format?: (v: number) => string,
 *   windowMs?: number,
 *   height?: number,
 *   markers?: boolean,
 *   emptyText?: string
 * }} ChartOptions
 */

/** The top of the y axis: four gridline steps of a round size covering `max`. @param {number} max */
function niceCeiling(max) {
    if (!(max > 0))
        return 1;
    const rough = max / 4;
    const exp = Math.pow(10, Math.floor(Math.log10(rough)));
    for (const step of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10])
        if (step * exp >= rough)
            return 4 * step * exp;
    return 40 * exp;
}

/** @param {number} v */
export function formatNumber(v) {
    if (!Number.isFinite(v))
        return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return `${(v / 1e9).toFixed(1)}G`;
    if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
    if (a >= 100 || Number.isInteger(v)) return String(Math.round(v));
    if (a >= 10) return v.toFixed(1);
    return v.toFixed(2);
}

/** @param {number} v */
export function formatBytes(v) {
    if (!Number.isFinite(v))
        return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
        v /= 1024;
        i++;
    }
    return `${i === 0 ? Math.round(v) : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

/**
 * @template {keyof SVGElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | number>} attrs
 * @returns {SVGElementTagNameMap[K]}
 */
function svg(tag, attrs) {
    const el = document.createElementNS(svgNs, tag);
    for (const [k, v] of Object.entries(attrs))
        el.setAttribute(k, String(v));
    return el;
}

export class LineChart {
    /**
     * @param {HTMLElement} container
     * @param {ChartOptions} options
     */
    constructor(container, options = {}) {
        this.container = container;
        this.format = options.format ?? formatNumber;
        this.windowMs = options.windowMs ?? 5 * 60_000;
        this.height = options.height ?? 170;
        this.markers = options.markers ?? false;
        this.emptyText = options.emptyText ?? "no data yet";
        /** @type {Map<string, Series>} */
        this.series = new Map();
        for (const spec of options.series ?? [])
            this.ensure(spec);
        this.svg = svg("svg", { class: "chart-svg", height: this.height, role: "img" });
        this.legend = document.createElement("ul");
        this.legend.className = "legend";
        container.replaceChildren(this.svg, this.legend);
        this.pending = false;
        new ResizeObserver(() => this.render()).observe(container);
    }

    /** @param {SeriesSpec} spec */
    ensure(spec) {
        let s = this.series.get(spec.key);
        if (s == null) {
            s = { spec, color: spec.color ?? palette[this.series.size % palette.length] ?? "#333", points: [] };
            this.series.set(spec.key, s);
        }
        return s;
    }

    /**
     * Adds a point (t in ms since the epoch) to a series, creating it when `label` is given.
     * @param {string} key
     * @param {number} t
     * @param {number} v
     * @param {string} [label]
     */
    add(key, t, v, label) {
        const s = label != null ? this.ensure({ key, label }) : this.series.get(key);
        if (s == null || !Number.isFinite(v))
            return;
        s.points.push({ t, v });
        const cutoff = t - this.windowMs;
        while (s.points.length > 2 && (s.points[0]?.t ?? t) < cutoff)
            s.points.shift();
        this.schedule();
    }

    /** @param {string} key */
    remove(key) {
        if (this.series.delete(key))
            this.schedule();
    }

    schedule() {
        if (this.pending)
            return;
        this.pending = true;
        requestAnimationFrame(() => {
            this.pending = false;
            this.render();
        });
    }

    render() {
        const width = Math.max(200, this.container.clientWidth);
        const height = this.height;
        const m = { left: 62, right: 10, top: 8, bottom: 22 };
        const all = [...this.series.values()];
        const points = all.flatMap((s) => s.points);
        this.svg.setAttribute("width", String(width));
        this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
        this.svg.replaceChildren();

        const tMax = points.length > 0 ? Math.max(...points.map((p) => p.t)) : Date.now();
        const tFirst = points.length > 0 ? Math.min(...points.map((p) => p.t)) : tMax - this.windowMs;
        const tMin = Math.max(tFirst, tMax - this.windowMs);
        // at least 20 s wide (or the whole window if shorter): new data grows from the right
        const span = Math.max(tMax - tMin, Math.min(20_000, this.windowMs), 1000);
        const yMax = niceCeiling(Math.max(0, ...points.filter((p) => p.t >= tMin).map((p) => p.v)));
        const x = (/** @type {number} */ t) => m.left + ((t - (tMax - span)) / span) * (width - m.left - m.right);
        const y = (/** @type {number} */ v) => height - m.bottom - (v / yMax) * (height - m.top - m.bottom);

        // grid and y labels
        for (let i = 0; i <= 4; i++) {
            const v = (yMax * i) / 4;
            this.svg.append(svg("line", { x1: m.left, x2: width - m.right, y1: y(v), y2: y(v), class: "grid" }));
            const label = svg("text", { x: m.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" });
            label.textContent = this.format(v);
            this.svg.append(label);
        }
        // x labels: seconds ago
        for (let i = 0; i <= 4; i++) {
            const t = tMax - span + (span * i) / 4;
            const label = svg("text", { x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle", class: "tick" });
            const ago = (tMax - t) / 1000;
            label.textContent = i === 4 ? "now" : ago >= 120 ? `-${Math.round(ago / 60)}m` : `-${ago >= 10 ? Math.round(ago) : ago.toFixed(1)}s`;
            this.svg.append(label);
        }
        if (points.length === 0) {
            const text = svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" });
            text.textContent = this.emptyText;
            this.svg.append(text);
        }

        for (const s of all) {
            const visible = s.points.filter((p) => p.t >= tMin - 1);
            if (visible.length === 0)
                continue;
            const attrs = { fill: "none", stroke: s.color, "stroke-width": s.spec.dashed === true ? 1.5 : 2, class: "series" };
            if (s.spec.dashed === true)
                Object.assign(attrs, { "stroke-dasharray": "5 4" });
            const line = svg("polyline", { ...attrs, points: visible.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ") });
            line.dataset.series = s.spec.key;
            this.svg.append(line);
            if (this.markers || visible.length === 1)
                for (const p of visible)
                    this.svg.append(svg("circle", { cx: x(p.t), cy: y(p.v), r: 3, fill: s.color }));
        }

        this.legend.replaceChildren(...all.map((s) => {
            const li = document.createElement("li");
            const latest = s.points.at(-1)?.v;
            const max = s.points.reduce((a, p) => Math.max(a, p.v), 0);
            li.dataset.series = s.spec.key;
            li.dataset.latest = String(latest ?? "");
            li.dataset.max = String(max);
            const swatch = document.createElement("span");
            swatch.className = s.spec.dashed === true ? "swatch dashed" : "swatch";
            swatch.style.borderColor = s.color;
            const text = document.createElement("span");
            text.textContent = `${s.spec.label} ${latest == null ? "–" : this.format(latest)}`;
            li.append(swatch, text);
            return li;
        }));
    }
}
