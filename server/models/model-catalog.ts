// The models folder: every `.gguf` file in it, inspected (cached by size and modification time).
import * as fs from "node:fs";
import * as path from "node:path";
import { inspectModelFile, type ModelInspection } from "./gguf-inspect.js";

/** Lists and inspects the models folder (not recursive). */
export class ModelCatalog {
    private readonly cache = new Map<string, ModelInspection>();

    constructor(readonly dir: string) {}

    async list(extra: readonly string[] = []): Promise<ModelInspection[]> {
        let names: string[] = [];
        try {
            names = fs.readdirSync(this.dir).filter((n) => n.toLowerCase().endsWith(".gguf")).sort();
        } catch {
            names = [];
        }
        const files = names.map((n) => path.join(this.dir, n));
        for (const file of extra)
            if (!files.includes(path.resolve(file)))
                files.push(path.resolve(file));
        return await Promise.all(files.map((f) => this.inspect(f)));
    }

    async inspect(file: string): Promise<ModelInspection> {
        const resolved = path.resolve(file);
        let key: string;
        try {
            const stat = fs.statSync(resolved);
            key = `${stat.size}:${stat.mtimeMs}`;
        } catch {
            return await inspectModelFile(resolved);
        }
        const cached = this.cache.get(resolved);
        if (cached != null && `${cached.sizeBytes}:${cached.modifiedMs}` === key)
            return cached;
        const inspection = await inspectModelFile(resolved);
        this.cache.set(resolved, inspection);
        return inspection;
    }

    /**
     * A model id (file name) or path, resolved inside the models folder. Names that leave the folder are
     * refused: the admin endpoint must not become a way to open arbitrary files.
     */
    resolve(idOrPath: string): string | null {
        const candidate = path.resolve(this.dir, idOrPath);
        if (path.dirname(candidate) !== path.resolve(this.dir))
            return null;
        return candidate;
    }
}
