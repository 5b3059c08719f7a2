// The models folder: every `.gguf` file in it, inspected (inspections are cached by file, size and
// modification time in gguf-inspect.ts). Only files whose real path lies inside the folder are accepted:
// a link in the folder must not make the server open (or list the metadata of) a file elsewhere. The
// model named at startup is the operator's choice and may lie anywhere.
import * as fs from "node:fs";
import * as path from "node:path";
import { inspectModelFile, refusedModelFile, type ModelInspection } from "./gguf-inspect.js";

const isGguf = (name: string) => name.toLowerCase().endsWith(".gguf");

function realPath(file: string): string | null {
    try {
        return fs.realpathSync(file);
    } catch {
        return null;
    }
}

/** Lists and inspects the models folder (not recursive). */
export class ModelCatalog {
    /** @param trusted files named by the configuration (the startup model), accepted wherever they lie */
    constructor(readonly dir: string, private readonly trusted: readonly string[] = []) {}

    async list(extra: readonly string[] = []): Promise<ModelInspection[]> {
        let names: string[] = [];
        try {
            names = fs.readdirSync(this.dir).filter(isGguf).sort();
        } catch {
            names = [];
        }
        const files = names.map((n) => path.join(this.dir, n));
        for (const file of [...this.trusted, ...extra])
            if (!files.includes(path.resolve(file)))
                files.push(path.resolve(file));
        return await Promise.all(files.map((f) => this.inspect(f)));
    }

    async inspect(file: string): Promise<ModelInspection> {
        const resolved = path.resolve(file);
        const real = realPath(resolved);
        // a broken link or a missing file: the inspection says why
        if (real != null && !this.isTrusted(real)) {
            const dir = realPath(this.dir) ?? path.resolve(this.dir);
            if (!real.startsWith(dir + path.sep))
                // no paths in the message: it goes to API clients, and the operator can read the link
                return refusedModelFile(resolved, "outside_models_dir",
                    "a link to a file outside the models directory (copy the file into it, or point --models-dir at its folder)");
            if (!isGguf(resolved))
                return refusedModelFile(resolved, "not_gguf", "not a .gguf file");
        }
        return await inspectModelFile(resolved);
    }

    private isTrusted(real: string): boolean {
        return this.trusted.some((file) => realPath(file) === real);
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
