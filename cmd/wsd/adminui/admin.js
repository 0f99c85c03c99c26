// The admin page: live numbers from /metrics, the rest through the HTTP
// API with the key the user gives (kept in sessionStorage: this tab only).
import { human, labelled, parseMetrics, Rates } from "./metrics.js";

const $ = (id) => document.getElementById(id);
const rates = new Rates(["wsd_messages_in_total", "wsd_messages_out_total", "wsd_bytes_in_total", "wsd_bytes_out_total"]);
let key = sessionStorage.getItem("wsd-api-key") ?? "";

class Unauthorized extends Error {}

async function api(path, body) {
  const r = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: { Authorization: `apikey ${key}` },
    body: body === undefined ? undefined : body,
  });
  if (r.status === 401) throw new Unauthorized();
  const json = await r.json();
  if (!r.ok) throw new Error(json.error ? `${json.error.code}: ${json.error.message}` : `HTTP ${r.status}`);
  return json;
}

function showLogin(message = "") {
  $("app").classList.add("hidden");
  $("login").classList.remove("hidden");
  $("login-error").textContent = message;
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  key = $("key").value.trim();
  try {
    await api("/api/info");
  } catch (err) {
    showLogin(err instanceof Unauthorized ? "wrong key" : String(err));
    return;
  }
  sessionStorage.setItem("wsd-api-key", key);
  start();
});

function row(cells, onClick) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = String(c);
    tr.append(td);
  }
  if (onClick) {
    tr.className = "pick";
    tr.addEventListener("click", onClick);
  }
  return tr;
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  const series = [
    [rates.history.wsd_messages_out_total, "#2b6cb0"],
    [rates.history.wsd_messages_in_total, "#c05621"],
  ];
  const max = Math.max(1, ...series.flatMap(([s]) => s));
  ctx.fillStyle = "#667";
  ctx.font = "20px system-ui, sans-serif";
  ctx.fillText(`${human(max)}/s`, 6, 22);
  ctx.strokeStyle = "#dde1e8";
  ctx.beginPath();
  ctx.moveTo(0, h - 1);
  ctx.lineTo(w, h - 1);
  ctx.stroke();
  for (const [s, color] of series) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 3;
    ctx.beginPath();
    s.forEach((v, i) => {
      const x = w - (s.length - 1 - i) * (w / (rates.keep - 1));
      const y = h - 2 - (v / max) * (h - 30);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

async function tick() {
  const [text, info, chans] = await Promise.all([
    fetch("/metrics").then((r) => r.text()),
    api("/api/info"),
    api("/api/channels"),
  ]);
  const samples = parseMetrics(text);
  const r = rates.add(samples, Date.now());
  $("conns").textContent = human(samples.get("wsd_connections_open") ?? 0);
  $("chans").textContent = human(info.channels);
  if ("wsd_messages_in_total" in r) {
    $("min").textContent = human(r.wsd_messages_in_total);
    $("mout").textContent = human(r.wsd_messages_out_total);
    $("bin").textContent = human(r.wsd_bytes_in_total, "B");
    $("bout").textContent = human(r.wsd_bytes_out_total, "B");
  }
  $("node").textContent = `node ${info.node}`;
  $("version").textContent = info.version;
  $("uptime").textContent = `up ${Math.round(info.uptime_seconds)} s`;
  $("draining").textContent = info.draining ? "DRAINING" : "";
  $("loops").replaceChildren(...labelled(samples, "wsd_loop_connections", "loop").map(([loop, n]) => row([loop, n])));
  $("channels").replaceChildren(
    ...chans.channels.map((c) =>
      row([c.channel, c.subscribers], () => {
        $("look-channel").value = c.channel;
        $("pub-channel").value = c.channel;
      }),
    ),
  );
  drawChart();
}

$("look").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const what = ev.submitter?.dataset.what ?? "presence";
  const ch = encodeURIComponent($("look-channel").value.trim());
  try {
    const r = await api(what === "history" ? `/api/history?channel=${ch}&limit=20` : `/api/presence?channel=${ch}`);
    $("look-out").textContent = JSON.stringify(r, null, 2);
  } catch (err) {
    $("look-out").textContent = String(err);
  }
});

$("publish").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  let data;
  try {
    data = JSON.parse($("pub-data").value);
  } catch {
    $("pub-out").textContent = "data is not valid JSON";
    return;
  }
  try {
    const r = await api("/api/publish", JSON.stringify({ channel: $("pub-channel").value.trim(), data }));
    $("pub-out").textContent = `published: offset ${r.offset}, epoch ${r.epoch}`;
  } catch (err) {
    $("pub-out").textContent = String(err);
  }
});

let timer;
function start() {
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  clearInterval(timer);
  const run = () =>
    tick().catch((err) => {
      if (err instanceof Unauthorized) {
        clearInterval(timer);
        showLogin("the key was refused");
      }
    });
  run();
  timer = setInterval(run, 1000);
}

if (key) start();
else showLogin();
