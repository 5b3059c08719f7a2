// Runs generated GGUF header cases through the reader, in a child process that the test starts with a
// small heap limit (--max-old-space-size): a reader that allocated by a count from the file would kill
// this process (out of memory) instead of passing. The index of the case being read is written to a file
// before each case, so that the test can name the case that killed it.
import * as fs from "node:fs";
import { bufferSource, GgufFormatError, ggufLimits, readGgufHeader } from "../../server/models/gguf-header.js";
import { modelFileErrorCodes } from "../../server/protocol/model-file-errors.js";
import { ggufCase, loadFixture } from "./gguf-fuzz.js";

export type FuzzJob = { seed: number, cases: number, fixtures: string[], progressFile: string };
export type FuzzResult = { failures: string[], codes: Record<string, number>, valid: number };

function run(job: FuzzJob): FuzzResult {
    const progress = fs.openSync(job.progressFile, "w");
    const index = Buffer.alloc(4);
    const fixtures = job.fixtures.map(loadFixture);
    const failures: string[] = [];
    const codes: Record<string, number> = {};
    let valid = 0;
    for (let n = 0; n < job.cases; n++) {
        index.writeUInt32LE(n);
        fs.writeSync(progress, index, 0, 4, 0);
        const c = ggufCase(job.seed, n, fixtures);
        const where = `case ${n} (seed ${job.seed}) ${c.note.slice(0, 300)}`;
        try {
            const header = readGgufHeader(bufferSource(c.bytes, c.size));
            valid++;
            if (c.expect != null)
                failures.push(`${where}: read as valid, expected ${c.expect.join(" or ")}`);
            if (header.dataEnd > c.size || header.dataOffset > c.size)
                failures.push(`${where}: valid, but its data ends at ${header.dataEnd}, past the file's ${c.size} bytes`);
            if (header.metadata.size > ggufLimits.maxKeyValues || header.tensorCount > ggufLimits.maxTensors)
                failures.push(`${where}: valid with ${header.metadata.size} pairs and ${header.tensorCount} tensors, beyond the caps`);
        } catch (err) {
            if (!(err instanceof GgufFormatError)) {
                failures.push(`${where}: threw ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
                continue;
            }
            codes[err.code] = (codes[err.code] ?? 0) + 1;
            if (!(err.code in modelFileErrorCodes))
                failures.push(`${where}: undocumented code ${err.code}`);
            if (err.message.length === 0 || err.message.length > 500)
                failures.push(`${where}: ${err.code} with a message of ${err.message.length} characters`);
            if (c.expect != null && !c.expect.includes(err.code))
                failures.push(`${where}: ${err.code} (${err.message}), expected ${c.expect.join(" or ")}`);
        }
    }
    fs.closeSync(progress);
    return { failures, codes, valid };
}

process.once("message", (job: FuzzJob) => {
    process.send!(run(job), () => process.disconnect());
});
