// The child process of gguf-inspector.ts: opens one model file at a time and reads its header with the
// bounded reader. It runs under a heap limit and a time limit set by the inspector, so even a bug in the
// reader costs this process, never the server. It exits when the server goes (its IPC channel closes).
import * as fs from "node:fs";
import { fileSource, GgufFormatError, readGgufHeader } from "./gguf-header.js";
import type { HeaderReport, HeaderRequest } from "./gguf-inspector.js";

function readReport(file: string): HeaderReport {
    let fd: number;
    try {
        // non-blocking: opening a FIFO named *.gguf must not wait for a writer
        fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    } catch (err) {
        return { ok: false, size: 0, mtimeMs: 0, code: "unreadable", message: `cannot read the file: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
    }
    try {
        const stat = fs.fstatSync(fd);
        const at = { size: stat.size, mtimeMs: stat.mtimeMs };
        if (!stat.isFile())
            return { ok: false, ...at, code: "not_a_file", message: "not a regular file" };
        try {
            return { ok: true, ...at, header: readGgufHeader(fileSource(fd, stat.size)) };
        } catch (err) {
            if (err instanceof GgufFormatError)
                return { ok: false, ...at, code: err.code, message: err.message };
            const code = (err as NodeJS.ErrnoException).code;
            if (typeof code === "string" && code.startsWith("E"))
                return { ok: false, ...at, code: "unreadable", message: `cannot read the file: ${code}` };
            // a bug in the reader: said as such, and the file is refused
            return { ok: false, ...at, code: "inspection_failed", message: `the GGUF reader failed: ${(err as Error).message}` };
        }
    } finally {
        fs.closeSync(fd);
    }
}

process.on("message", (request: HeaderRequest) => {
    process.send!({ id: request.id, report: readReport(request.file) });
});
process.on("disconnect", () => process.exit(0));
process.send!({ ready: true });
