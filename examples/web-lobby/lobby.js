// The lobby demo: log in as a name, see rooms with member counts, join one, chat, and see
// pushes from the admin API. Everything goes through the SDK (clients/js); see README.md here.
import { GatewayError, WasmgateClient } from "../../clients/js/dist/index.js";

const $ = (id) => document.getElementById(id);
let client = null;
let room = null;

$("url").value = new URLSearchParams(location.search).get("gateway") ?? "ws://127.0.0.1:7100/ws";

function log(text, kind = "") {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  $("log").append(li);
  $("log").scrollTop = $("log").scrollHeight;
}

/** An HS256 JWT for `user`, signed in the page with the example config's secret (demo only). */
async function devToken(user, secret) {
  const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const text = (value) => b64url(new TextEncoder().encode(JSON.stringify(value)));
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${text({ alg: "HS256", typ: "JWT" })}.${text({ sub: user, iat: now, exp: now + 3600 })}`;
  const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const signature = new Uint8Array(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(unsigned)));
  return `${unsigned}.${b64url(signature)}`;
}

async function refreshRooms() {
  if (client?.state !== "open") return;
  try {
    const { rooms } = await client.rooms();
    const list = $("rooms");
    list.replaceChildren();
    for (const r of rooms) {
      const li = document.createElement("li");
      li.dataset.room = r.room;
      li.innerHTML = `<span></span><span class="members"></span>`;
      li.firstChild.textContent = r.room;
      li.lastChild.textContent = `${r.members} online`;
      if (r.room !== room) {
        const join = document.createElement("button");
        join.textContent = "Join";
        join.onclick = () => enter(r.room);
        li.append(join);
      }
      list.append(li);
    }
  } catch (e) {
    log(`room list: ${e.message}`, "system");
  }
}

async function enter(name) {
  try {
    if (room && room !== name) await client.leave(room);
    const joined = await client.join(name);
    room = name;
    $("room-title").textContent = `#${name} (${joined.members} online)`;
    log(`joined #${name}`, "system");
  } catch (e) {
    log(e instanceof GatewayError ? `join refused: ${e.code}` : e.message, "system");
  }
  refreshRooms();
}

$("login").onsubmit = async (event) => {
  event.preventDefault();
  const name = $("name").value;
  client?.close();
  client = new WasmgateClient({
    url: $("url").value,
    token: () => devToken(name, $("secret").value),
    format: "json",
    heartbeatMs: 5000,
  });
  client.on("state", (state) => ($("state").textContent = state));
  client.on("room", (m) => log(`${m.from}: ${typeof m.data === "string" ? m.data : JSON.stringify(m.data)}`));
  client.on("push", (p) => {
    if (p.msgId !== client.routes.roomMessage) log(`push: ${p.text()}`, "push");
  });
  client.on("error", (e) => log(`error: ${e.code} ${e.message}`, "system"));
  client.on("reconnecting", ({ attempt, delayMs }) => log(`connection lost; reconnect #${attempt} in ${delayMs} ms`, "system"));
  // A reconnect is a new session: join the room again.
  client.on("open", (login) => {
    $("who").textContent = login ? `as ${login.userId} (session ${login.sessionId})` : "";
    if (room) enter(room);
  });
  try {
    await client.connect();
    $("app").classList.remove("hidden");
    refreshRooms();
  } catch (e) {
    $("state").textContent = `login failed: ${e.message}`;
  }
};

$("new-room").onsubmit = (event) => {
  event.preventDefault();
  enter($("room-name").value);
  $("room-name").value = "";
};

$("chat").onsubmit = (event) => {
  event.preventDefault();
  if (!room) return log("join a room first", "system");
  client.say(room, $("message").value);
  $("message").value = "";
};

setInterval(refreshRooms, 3000);
