// Reading Prometheus's text exposition (what GET /metrics answers) in tests.

/** The sum of a metric's samples whose labels contain `labels`. */
export function sample(exposition: string, name: string, labels = ""): number {
    let total = 0;
    for (const line of exposition.split("\n"))
        if ((line.startsWith(name + " ") || line.startsWith(name + "{")) && line.includes(labels))
            total += Number(line.slice(line.lastIndexOf(" ") + 1));
    return total;
}

/** The value of the one series of a metric with exactly these labels (`a="x",b="y"`; "" for none), or null when it is absent. */
export function series(exposition: string, name: string, labels = ""): number | null {
    const line = exposition.split("\n").find((l) => l.startsWith(labels === "" ? `${name} ` : `${name}{${labels}} `));
    return line == null ? null : Number(line.slice(line.lastIndexOf(" ") + 1));
}
