// Reading Prometheus's text exposition (what GET /metrics answers) in tests.

/** The sum of a metric's samples whose labels contain `labels`. */
export function sample(exposition: string, name: string, labels = ""): number {
    let total = 0;
    for (const line of exposition.split("\n"))
        if ((line.startsWith(name + " ") || line.startsWith(name + "{")) && line.includes(labels))
            total += Number(line.slice(line.lastIndexOf(" ") + 1));
    return total;
}
