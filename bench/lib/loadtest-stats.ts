// The load test's arithmetic: percentiles, a least-squares slope, and sample values of a Prometheus scrape.

export function percentile(sorted: readonly number[], p: number): number | null {
    if (sorted.length === 0)
        return null;
    const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p / 100 * sorted.length) - 1));
    return sorted[rank]!;
}

/** Least-squares slope of y over x. */
export function slope(points: readonly { x: number, y: number }[]): number | null {
    if (points.length < 3)
        return null;
    const n = points.length;
    const mx = points.reduce((a, p) => a + p.x, 0) / n;
    const my = points.reduce((a, p) => a + p.y, 0) / n;
    let num = 0;
    let den = 0;
    for (const p of points) {
        num += (p.x - mx) * (p.y - my);
        den += (p.x - mx) ** 2;
    }
    return den === 0 ? null : num / den;
}

export const round = (x: number | null, digits = 1) => x == null ? null : Math.round(x * 10 ** digits) / 10 ** digits;

/** The value of a sample line of a Prometheus exposition (the sum over label sets matching `labels`). */
export function metric(text: string, name: string, labels = ""): number {
    let total = 0;
    for (const line of text.split("\n")) {
        if (!line.startsWith(name + " ") && !line.startsWith(name + "{"))
            continue;
        if (labels !== "" && !line.includes(labels))
            continue;
        total += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
    return total;
}
