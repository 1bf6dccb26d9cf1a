// Integration test of the SDK against a real gateway (run by tests/e2e/js_client.rs, which
// starts the gateway with the example echo backend and passes, in the environment:
// WASMGATE_WS (ws://.../ws), WASMGATE_ADMIN (http://host:port), WASMGATE_ADMIN_TOKEN, and
// tokens WASMGATE_TOKEN_A, WASMGATE_TOKEN_B, WASMGATE_TOKEN_C for three users).
// Client A reaches the gateway through a TCP proxy this script cuts, to force a reconnect.
import assert from "node:assert/strict";
import net from "node:net";

import { ClosedError, GatewayError, WasmgateClient } from "../dist/index.js";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const wsUrl = new URL(env("WASMGATE_WS"));

/** A TCP proxy to the gateway's WebSocket port whose connections `cut()` destroys. */
async function proxy() {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(wsUrl.port), wsUrl.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}${wsUrl.pathname}`,
    cut: () => sockets.forEach((s) => s.destroy()),
    close: () => server.close(),
  };
}

/** Resolves with the next `event` value that passes `accept`, or rejects after 10 s. */
function next(client, event, accept = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} event`)), 10_000);
    const off = client.on(event, (value) => {
      if (!accept(value)) return;
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

async function push(path, body) {
  const response = await fetch(`${env("WASMGATE_ADMIN")}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${env("WASMGATE_ADMIN_TOKEN")}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.text());
}

const step = (what) => console.log(`- ${what}`);
const cutter = await proxy();
const reconnect = { initialMs: 100, maxMs: 1000 };
const a = new WasmgateClient({ url: cutter.url, token: env("WASMGATE_TOKEN_A"), heartbeatMs: 500, reconnect });
const b = new WasmgateClient({ url: wsUrl.href, token: env("WASMGATE_TOKEN_B"), format: "json", heartbeatMs: 500, reconnect });

step("log in over binary and JSON frames");
const loginA = await a.connect();
const loginB = await b.connect();
assert.equal(loginA.userId, "sdk-alice");
assert.equal(loginB.userId, "sdk-bob");
assert.equal(a.state, "open");

step("requests are answered by seq; error frames are typed errors");
assert.equal((await a.request(100, "hello")).text(), "hello");
assert.deepEqual((await b.request(100, { n: 1 })).json(), { n: 1 });
const [one, two] = await Promise.all([a.request(100, "one"), a.request(100, "two")]);
assert.deepEqual([one.text(), two.text()], ["one", "two"]);
await assert.rejects(a.request(99999), (e) => e instanceof GatewayError && e.code === "unknown_message" && e.blame === "client" && !e.retryable);

step("rooms: join, list, chat");
assert.equal((await a.join("lobby")).status, "joined");
assert.equal((await b.join("lobby")).members, 2);
const listed = await a.rooms("lob");
assert.deepEqual(listed.rooms, [{ room: "lobby", members: 2 }]);
const heard = next(b, "room");
a.say("lobby", { text: "hi bob" });
assert.deepEqual(await heard, { room: "lobby", from: "sdk-alice", data: { text: "hi bob" } });
await assert.rejects(a.leave("nowhere"), (e) => e instanceof GatewayError && e.code === "not_in_room");

step("an admin API push reaches both");
const pushedA = next(a, "push", (p) => p.msgId === 9);
const pushedB = next(b, "push", (p) => p.msgId === 9);
await push("/push/room", { room: "lobby", data: { news: "hello lobby" } });
assert.deepEqual((await pushedA).json(), { news: "hello lobby" });
assert.deepEqual((await pushedB).json(), { news: "hello lobby" });

step("a lost connection reconnects with back-off, logs in again, and sends what waited");
const reconnecting = next(a, "reconnecting");
const closed = next(a, "close");
cutter.cut();
assert.ok((await closed) instanceof ClosedError);
const { delayMs } = await reconnecting;
assert.ok(delayMs >= 50 && delayMs <= 100, `first delay ${delayMs} ms`);
const waited = a.request(100, "sent after the reconnect");
const reopened = await next(a, "open");
assert.equal(reopened.userId, "sdk-alice");
assert.notEqual(reopened.sessionId, loginA.sessionId, "a new session");
assert.equal((await waited).text(), "sent after the reconnect");
assert.equal((await a.join("lobby")).status, "joined", "rooms are joined again by the application");

step("heartbeats keep an idle session open past the gateway's heartbeat timeout");
await new Promise((resolve) => setTimeout(resolve, 2500));
assert.equal(a.state, "open");
assert.equal((await a.request(100, "still here")).text(), "still here");

step("?token= login, and a refused token closes without reconnecting");
const c = new WasmgateClient({ url: wsUrl.href, token: env("WASMGATE_TOKEN_C"), tokenInQuery: true, heartbeatMs: 500 });
assert.equal(await c.connect(), undefined);
assert.equal((await c.request(100, "via query")).text(), "via query");
const bad = new WasmgateClient({ url: wsUrl.href, token: "not-a-jwt" });
await assert.rejects(bad.connect(), (e) => e instanceof GatewayError && e.code === "invalid_token");
await next(bad, "state", (s) => s === "closed");

step("a full buffer refuses sends while disconnected");
const offline = new WasmgateClient({ url: "ws://127.0.0.1:9/ws", maxBuffered: 2, reconnect: false });
offline.send(100, "1");
offline.send(100, "2");
assert.throws(() => offline.send(100, "3"), { name: "BufferFullError" });

for (const client of [a, b, c]) client.close();
cutter.close();
console.log("ok");
