// The tests' WebSocket client: bench/lib/ws-client.ts (shared with the load test), recording every message
// and checking it against the published schemas.
export { WsClient as WsTestClient, type ChatRun } from "../../bench/lib/ws-client.js";
