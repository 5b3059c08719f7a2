import * as net from "node:net";

/** A TCP port that was free a moment ago on 127.0.0.1 (for tools that cannot take port 0). */
export async function freePort(): Promise<number> {
    return await new Promise((resolve, reject) => {
        const server = net.createServer();
        server.once("error", reject);
        server.listen(0, "127.0.0.1", () => {
            const { port } = server.address() as net.AddressInfo;
            server.close(() => resolve(port));
        });
    });
}
