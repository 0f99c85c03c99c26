// Acceptance of the JS client in a real browser: Debian's Chromium, driven
// by puppeteer-core, loads a page that uses the bundled client
// (dist/wsd.browser.js) against a real wsd. The page's connection is cut
// while publications go on, and it must recover every one, in order, once;
// wsd is then drained and restarted, and the page must be told
// recovered:false (the memory broker's history went with the process) and
// refetch. A screenshot of the admin page is taken on the way, and the
// numbers it shows are compared with /metrics.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import puppeteer from "puppeteer-core";

import { apiKey, startWsd, token } from "../test/wsd.mjs";

const chromium = process.env.CHROMIUM ?? "/usr/bin/chromium";
const files = {
  "/page.html": [new URL("page.html", import.meta.url), "text/html"],
  "/wsd.browser.js": [new URL("../dist/wsd.browser.js", import.meta.url), "text/javascript"],
};
const artifacts = new URL("artifacts/", import.meta.url);

let http, httpPort, browser;
before(async () => {
  if (!existsSync(chromium)) return;
  http = createServer((req, res) => {
    const f = files[new URL(req.url, "http://x").pathname];
    if (!f) return void res.writeHead(404).end();
    res.writeHead(200, { "Content-Type": f[1] }).end(readFileSync(f[0]));
  });
  await new Promise((r) => http.listen(0, "127.0.0.1", r));
  httpPort = http.address().port;
  browser = await puppeteer.launch({ executablePath: chromium, headless: true, args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
  http?.close();
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// waitPage waits for fn to hold in the page; on a timeout the page's
// events and offsets say what happened instead.
async function waitPage(page, fn, what, timeout = 15000) {
  try {
    // Polled on a timer: a page in a background tab gets no animation
    // frames, which waitForFunction polls on by default.
    await page.waitForFunction(fn, { timeout, polling: 100 });
  } catch (err) {
    const seen = await page.evaluate(() => ({ events: window.events, offsets: window.pubs?.map((p) => p.offset) }));
    throw new Error(`${what}: ${err.message}; the page saw ${JSON.stringify(seen)}; its console: ${JSON.stringify(page.consoleLines)}`);
  }
}

async function publish(wsd, channel, from, to) {
  for (let n = from; n <= to; n++) await wsd.api("/api/publish", { channel, data: { n } });
}

test("a page cut off recovers everything; after a drain and restart it is told recovered:false and refetches", { skip: !existsSync(chromium) && `no ${chromium}` }, async () => {
  const args = ["--retry-after-max", "1s", "--drain-timeout", "3s", "--admin-ui"];
  let wsd = await startWsd({ tokens: true, args });
  const pages = {};
  try {
    for (const protocol of ["json", "msgpack"]) {
      const page = await browser.newPage();
      page.consoleLines = [];
      page.on("console", (m) => page.consoleLines.push(m.text()));
      page.on("pageerror", (e) => page.consoleLines.push(`page error: ${e.message}`));
      const q = new URLSearchParams({ ws: wsd.url, token: token(`page-${protocol}`), channel: "e2e", protocol });
      await page.goto(`http://127.0.0.1:${httpPort}/page.html?${q}`);
      await waitPage(page, () => window.events.some((e) => e.event === "subscribed"), "first subscribe");
      pages[protocol] = page;
    }
    await publish(wsd, "e2e", 1, 5);
    for (const page of Object.values(pages)) await waitPage(page, () => window.pubs.length === 5, "the first 5");

    // The admin page, with the two pages connected: what it shows is what /metrics says.
    const admin = await browser.newPage();
    admin.consoleLines = [];
    await admin.setViewport({ width: 1400, height: 950 });
    await admin.goto(`${wsd.adminURL}/`);
    await admin.evaluate((k) => sessionStorage.setItem("wsd-api-key", k), apiKey);
    await admin.reload();
    await waitPage(admin, () => document.getElementById("conns").textContent === "2" && document.querySelectorAll("#channels tr").length === 1, "the admin page's numbers");
    await sleep(2500); // a few samples for the chart
    mkdirSync(artifacts, { recursive: true });
    await admin.screenshot({ path: new URL("admin.png", artifacts).pathname });
    const shown = await admin.evaluate(() => ({
      conns: document.getElementById("conns").textContent,
      loops: [...document.querySelectorAll("#loops tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
      channels: [...document.querySelectorAll("#channels tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
    }));
    const metrics = await (await fetch(`${wsd.adminURL}/metrics`)).text();
    assert.equal(shown.conns, /^wsd_connections_open (\d+)$/m.exec(metrics)[1]);
    for (const [loop, n] of shown.loops) {
      assert.equal(n, new RegExp(`^wsd_loop_connections\\{loop="${loop}"\\} (\\d+)$`, "m").exec(metrics)[1], `loop ${loop}`);
    }
    assert.deepEqual(shown.channels, [["e2e", "2"]]);
    await admin.close();

    // Cut both pages while publications go on: 6 to 40, the cut after 10.
    const publishing = (async () => {
      await publish(wsd, "e2e", 6, 10);
      for (const protocol of Object.keys(pages)) {
        assert.equal((await wsd.api("/api/disconnect", { user: `page-${protocol}`, code: 4000, reason: "cut" })).disconnected, 1);
      }
      await publish(wsd, "e2e", 11, 40);
    })();
    await publishing;
    for (const [protocol, page] of Object.entries(pages)) {
      await waitPage(page, () => window.pubs.length >= 40, `${protocol}: 40 publications across the cut`);
      const { pubs, events } = await page.evaluate(() => ({ pubs: window.pubs, events: window.events }));
      assert.deepEqual(pubs.map((p) => p.offset), Array.from({ length: 40 }, (_, i) => i + 1), `${protocol}: every publication, in order, once`);
      assert.deepEqual(pubs.map((p) => p.data.n), Array.from({ length: 40 }, (_, i) => i + 1));
      const cut = events.find((e) => e.event === "disconnected");
      assert.deepEqual([cut.code, cut.reason, cut.reconnect], [4000, "cut", true], protocol);
      const resub = events.filter((e) => e.event === "subscribed").at(-1);
      assert.deepEqual([resub.recovering, resub.recovered], [true, true], protocol);
    }

    // Drain (1001 with a retry hint) and restart on the same port.
    const epoch = (await pages.json.evaluate(() => window.pubs.at(-1).epoch));
    await wsd.stop();
    for (const page of Object.values(pages)) {
      const drained = await page.evaluate(() => window.events.filter((e) => e.event === "disconnected").at(-1));
      assert.equal(drained.code, 1001);
      assert.match(drained.reason, /retry-after=1/);
      assert.ok(drained.delay >= 1000, `reconnect after ${drained.delay} ms, not before the hint`);
    }
    wsd = await startWsd({ tokens: true, args, port: wsd.port });
    for (const [protocol, page] of Object.entries(pages)) {
      await waitPage(page, () => window.refetched !== null, `${protocol}: the refetch after the restart`);
      const resub = await page.evaluate(() => window.events.filter((e) => e.event === "subscribed").at(-1));
      assert.deepEqual([resub.recovering, resub.recovered], [true, false], protocol);
    }
    await publish(wsd, "e2e", 41, 41);
    for (const [protocol, page] of Object.entries(pages)) {
      await waitPage(page, () => window.pubs.length === 41, `${protocol}: the first publication after the restart`);
      const last = await page.evaluate(() => window.pubs.at(-1));
      assert.equal(last.offset, 1, `${protocol}: the new process's stream starts again`);
      assert.notEqual(last.epoch, epoch);
      assert.deepEqual(last.data, { n: 41 });
    }
  } finally {
    await wsd.stop();
  }
});
