// Takes a screenshot of the admin page with live numbers (the README's):
//   node --experimental-websocket cmd/wsd/testdata/admin-screenshot.mjs WS_URL ADMIN_URL API_KEY OUT.png
// against a wsd started with --admin-ui. It opens 50 clients (JSON and
// MessagePack) on a few channels, publishes through the HTTP API for ten
// seconds, and drives Debian's chromium (headless) over the DevTools
// protocol. Everything on loopback; chromium is stopped by PID.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createServer } from "node:net";

import { Client } from "../../../clients/js/dist/index.js";

const [wsURL, adminURL, key, out] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const port = await new Promise((res) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const p = s.address().port;
    s.close(() => res(p));
  });
});

const clients = [];
for (let i = 0; i < 50; i++) {
  const c = new Client(wsURL, { protocol: i % 2 ? "msgpack" : "json" });
  c.connect();
  c.subscribe(["news", "chat:lobby", "scores.live"][i % 3]);
  clients.push(c);
}
let publishing = true;
const publisher = (async () => {
  for (let n = 0; publishing; n++) {
    await fetch(`${adminURL}/api/publish`, {
      method: "POST",
      headers: { Authorization: `apikey ${key}` },
      body: JSON.stringify({ channel: ["news", "chat:lobby", "scores.live"][n % 3], data: { n } }),
    });
    await sleep(20);
  }
})();

const chromium = spawn("chromium", ["--headless=new", "--no-sandbox", "--disable-gpu", `--remote-debugging-port=${port}`, "--window-size=1400,1050", "about:blank"], { stdio: "ignore" });
try {
  let target;
  for (let i = 0; i < 100 && !target; i++) {
    await sleep(100);
    try {
      target = (await (await fetch(`http://127.0.0.1:${port}/json/list`)).json()).find((t) => t.type === "page");
    } catch {}
  }
  const ws = new WebSocket(target.webSocketDebuggerUrl);
  await new Promise((r) => (ws.onopen = r));
  let id = 0;
  const waiting = new Map();
  ws.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    waiting.get(m.id)?.(m);
  };
  const cdp = (method, params = {}) =>
    new Promise((res) => {
      waiting.set(++id, res);
      ws.send(JSON.stringify({ id, method, params }));
    });
  await cdp("Page.navigate", { url: `${adminURL}/` });
  await sleep(1000);
  await cdp("Runtime.evaluate", { expression: `sessionStorage.setItem("wsd-api-key", ${JSON.stringify(key)}); location.reload()` });
  await sleep(9000);
  await cdp("Runtime.evaluate", { expression: `document.getElementById("look-channel").value = "news"; document.querySelector('#look button[data-what="history"]').click()` });
  await sleep(1500);
  const shot = await cdp("Page.captureScreenshot", { format: "png" });
  writeFileSync(out, Buffer.from(shot.result.data, "base64"));
  ws.close();
} finally {
  chromium.kill("SIGTERM");
  publishing = false;
  await publisher;
  for (const c of clients) c.disconnect();
}
