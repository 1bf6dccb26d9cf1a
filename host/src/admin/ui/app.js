// wasmgate's admin dashboard (served at /ui by the admin listener). Every value comes from the
// admin API (docs/api.md), called with the token typed above (kept in this tab's
// sessionStorage): GET /metrics, /rooms, /cluster/nodes, /scripts, /maps, every 2 s, and
// POST /scripts/{name} (deploy) and /scripts/{name}/rollback.
const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const POINTS = 60;
let token = sessionStorage.getItem("wasmgate-admin-token") ?? "";
let last = null; // the previous metrics sample: {at, in, out, calls, errors}
const series = { in: [], out: [], calls: [], errors: [] };

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: { ...init.headers, authorization: `Bearer ${token}` } });
  const text = await response.text();
  if (!response.ok) {
    let reason = text;
    try { reason = JSON.parse(text).reason ?? text; } catch { /* not JSON */ }
    throw new Error(`${response.status}: ${reason}`);
  }
  return text;
}
const apiJson = async (path, init) => JSON.parse(await api(path, init));

/** Prometheus text -> [{name, labels, value}]. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}
const sum = (samples, name, keep = () => true) =>
  samples.filter((s) => s.name === name && keep(s.labels)).reduce((a, s) => a + s.value, 0);

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}

function chart(id, values) {
  const max = Math.max(1, ...values);
  // The newest point at the right edge; a series not yet full starts further right.
  const x = (i) => 300 - ((values.length - 1 - i) * 300) / (POINTS - 1);
  const points = values.map((v, i) => `${x(i)},${58 - (v / max) * 56}`).join(" ");
  $(id).innerHTML = `<polyline points="${points}"></polyline>`;
}

function renderMetrics(text) {
  const samples = parseMetrics(text);
  const tiles = $("sessions");
  tiles.replaceChildren();
  const sessions = samples.filter((s) => s.name === "wasmgate_sessions");
  for (const s of sessions) {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.transport = s.labels.transport;
    tile.innerHTML = `<b>${s.value}</b>${s.labels.transport}`;
    tiles.append(tile);
  }
  const now = {
    at: performance.now(),
    in: sum(samples, "wasmgate_messages_received_total"),
    out: sum(samples, "wasmgate_messages_sent_total"),
    calls: sum(samples, "wasmgate_script_calls_total"),
    errors: sum(samples, "wasmgate_script_calls_total", (l) => l.outcome !== "ok"),
  };
  if (last) {
    const seconds = (now.at - last.at) / 1000;
    for (const key of Object.keys(series)) {
      const rate = Math.max(0, (now[key] - last[key]) / seconds);
      series[key].push(rate);
      if (series[key].length > POINTS) series[key].shift();
      chart(`chart-${key}`, series[key]);
      $(`rate-${key}`).textContent = rate.toFixed(1);
    }
  }
  last = now;
}

/** Rows are kept across refreshes (a chosen file stays chosen); their figures are updated. */
function renderScripts({ scripts }) {
  const body = $("scripts").tBodies[0];
  const names = new Set(scripts.map((s) => s.name));
  for (const row of [...body.rows]) if (!names.has(row.dataset.script)) row.remove();
  for (const s of scripts) {
    let row = [...body.rows].find((r) => r.dataset.script === s.name);
    if (!row) row = scriptRow(body, s.name);
    const [, version, deployed, calls, traps] = row.cells;
    version.textContent = s.version;
    deployed.textContent = new Date(s.deployed_at_ms).toLocaleString();
    calls.textContent = s.calls;
    traps.textContent = s.traps;
  }
}

function scriptRow(body, name) {
  const row = body.insertRow();
  row.dataset.script = name;
  cell(row, name);
  cell(row, "").className = "version";
  cell(row, "");
  cell(row, "");
  cell(row, "");
  const input = document.createElement("input");
  input.type = "file";
  input.accept = ".wasm";
  input.setAttribute("aria-label", `component for ${name}`);
  const deploy = document.createElement("button");
  deploy.textContent = "Deploy";
  deploy.onclick = () => run(`deploy ${name}`, async () => {
    const file = input.files?.[0];
    if (!file) throw new Error("choose a .wasm file first");
    const info = await apiJson(`/scripts/${encodeURIComponent(name)}`, { method: "POST", body: await file.arrayBuffer() });
    return `${name} ${info.version} live (swap ${info.swap_ms.toFixed(1)} ms)`;
  });
  cell(row, "").append(input, deploy);
  const rollback = document.createElement("button");
  rollback.textContent = "Rollback";
  rollback.onclick = () => run(`rollback ${name}`, async () => {
    const info = await apiJson(`/scripts/${encodeURIComponent(name)}/rollback`, { method: "POST" });
    return `${name} back to ${info.version}`;
  });
  cell(row, "").append(rollback);
  return row;
}

function renderTable(id, rows, columns) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  for (const item of rows) {
    const row = body.insertRow();
    for (const column of columns) cell(row, item[column]);
  }
}

function renderMaps(status) {
  const list = $("maps");
  list.replaceChildren();
  for (const [label, entry, cls] of [["last applied", status.last_applied, ""], ["last refused", status.last_error, "error"]]) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.className = entry ? cls : "";
    dd.textContent = entry ? `${new Date(entry.at_ms).toLocaleString()} ${entry.origin}: ${entry.detail}` : "none since start";
    list.append(dt, dd);
  }
}

async function run(what, action) {
  const out = $("deploy-result");
  try {
    out.className = "";
    out.textContent = await action();
    await refresh();
  } catch (e) {
    out.className = "error";
    out.textContent = `${what}: ${e.message}`;
  }
}

async function refresh() {
  if (!token) return;
  try {
    const [metrics, scripts, rooms, nodes, maps] = await Promise.all([
      api("/metrics"), apiJson("/scripts"), apiJson("/rooms"), apiJson("/cluster/nodes"), apiJson("/maps"),
    ]);
    renderMetrics(metrics);
    renderScripts(scripts);
    renderTable("rooms", rooms.rooms, ["room", "members"]);
    renderTable("nodes", nodes.nodes, ["id", "node_type", "name", "load", "version"]);
    renderMaps(maps);
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("status").className = "";
  } catch (e) {
    $("status").textContent = e.message;
    $("status").className = "error";
  }
}

$("login").onsubmit = (event) => {
  event.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("wasmgate-admin-token", token);
  refresh();
};
$("token").value = token;
refresh();
setInterval(refresh, POLL_MS);
