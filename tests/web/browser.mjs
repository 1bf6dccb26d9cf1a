// The web lobby and the admin dashboard in a real browser (Debian's Chromium, driven by
// Playwright), against a gateway run by tests/e2e/web.rs. Environment: WASMGATE_WS,
// WASMGATE_ADMIN (http://host:port), WASMGATE_ADMIN_TOKEN, WASMGATE_SECRET (the auth script's
// HS256 secret), WASMGATE_COMPONENT (a router component to deploy), WASMGATE_SCREENSHOTS (a
// directory). To have the gateway restarted it prints `RESTART` and waits for a line on stdin.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const step = (what) => console.log(`- ${what}`);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Serves the repository's files (the lobby and the SDK's build) on a free loopback port. */
async function staticServer() {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png" };
  const server = http.createServer(async (req, res) => {
    let file = path.normalize(path.join(root, decodeURIComponent(new URL(req.url, "http://x").pathname)));
    if (!file.startsWith(root)) return res.writeHead(403).end();
    if (file.endsWith(path.sep)) file = path.join(file, "index.html");
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[path.extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${server.address().port}` };
}

async function adminApi(method, route, body) {
  const response = await fetch(`${env("WASMGATE_ADMIN")}${route}`, {
    method,
    headers: { authorization: `Bearer ${env("WASMGATE_ADMIN_TOKEN")}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  return JSON.parse(text);
}

const routerVersion = async () => (await adminApi("GET", "/scripts")).scripts.find((s) => s.name === "router").version;

const files = await staticServer();
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
// Generous: the test suite runs this alongside other tests on a loaded machine.
context.setDefaultTimeout(60_000);
const lobby = `${files.url}/examples/web-lobby/?gateway=${encodeURIComponent(env("WASMGATE_WS"))}`;

async function logIn(name) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`page error (${name}): ${e.message}`));
  await page.goto(lobby);
  await page.fill("#name", name);
  await page.fill("#secret", env("WASMGATE_SECRET"));
  await page.click("#login button");
  await page.locator("#state", { hasText: "open" }).waitFor();
  return page;
}
const logLine = (page, text) => page.locator("#log li", { hasText: text }).first().waitFor();

step("two pages log in as two users and meet in a room");
const ann = await logIn("ann");
const ben = await logIn("ben");
await ann.fill("#room-name", "lobby");
await ann.click("#new-room button");
await logLine(ann, "joined #lobby");
await ben.locator('#rooms li[data-room="lobby"] button').click({ timeout: 10_000 });
await logLine(ben, "joined #lobby");

step("one chats, the other sees it");
await ann.fill("#message", "hello ben");
await ann.click("#chat button");
await logLine(ben, "ann: hello ben");

step("an admin API push appears in both");
await adminApi("POST", "/push/room", { room: "lobby", data: "maintenance at noon" });
await logLine(ann, "push: maintenance at noon");
await logLine(ben, "push: maintenance at noon");
await ben.screenshot({ path: path.join(env("WASMGATE_SCREENSHOTS"), "web-lobby.png") });

step("the gateway restarts; both pages reconnect, join again and keep working");
console.log("RESTART");
await lines.next();
for (const page of [ann, ben]) {
  await page.locator("#log li", { hasText: "connection lost" }).first().waitFor();
  await page.locator("#state", { hasText: "open" }).waitFor({ timeout: 20_000 });
}
await logLine(ann, "joined #lobby");
await ben.locator("#log li", { hasText: "joined #lobby" }).nth(1).waitFor();
await ben.fill("#message", "still here?");
await ben.click("#chat button");
await logLine(ann, "ben: still here?");

step("the dashboard shows the sessions and the room");
const dashboard = await context.newPage();
dashboard.on("pageerror", (e) => console.error(`page error (dashboard): ${e.message}`));
await dashboard.goto(`${env("WASMGATE_ADMIN")}/ui`);
await dashboard.fill("#token", env("WASMGATE_ADMIN_TOKEN"));
await dashboard.click("#login button");
await dashboard.locator('#sessions .tile[data-transport="websocket"] b', { hasText: /^2$/ }).waitFor();
await dashboard.locator("#rooms tbody tr", { hasText: "lobby" }).locator("td", { hasText: /^2$/ }).waitFor();
await dashboard.locator("#rate-in").filter({ hasText: /\d/ }).waitFor();

step("a deploy through the page's upload goes live, and rollback restores the version");
const before = await routerVersion();
const row = dashboard.locator('#scripts tr[data-script="router"]');
await row.locator('input[type="file"]').setInputFiles(env("WASMGATE_COMPONENT"));
await row.locator("button", { hasText: "Deploy" }).click();
await dashboard.locator("#deploy-result", { hasText: "live" }).waitFor();
const deployed = await routerVersion();
assert.notEqual(deployed, before, "a new router version is live");
await row.locator("td.version", { hasText: deployed }).waitFor();
await dashboard.screenshot({ path: path.join(env("WASMGATE_SCREENSHOTS"), "dashboard.png"), fullPage: true });
await row.locator("button", { hasText: "Rollback" }).click();
await dashboard.locator("#deploy-result", { hasText: `back to ${before}` }).waitFor();
assert.equal(await routerVersion(), before, "GET /scripts agrees");

await browser.close();
files.server.close();
console.log("ok");
process.exit(0);
