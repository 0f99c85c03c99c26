// Acceptance of the JS client in a real browser: Debian's Chromium, driven
// by puppeteer-core, loads a page that uses the bundled client
// (dist/wsd.browser.js) against real wsd processes.
//
// With the memory broker: the page's connection is cut while publications
// go on, and it must recover every one, in order, once; wsd is then drained
// and restarted, and the page must be told recovered:false (the memory
// broker's history went with the process) and refetch. A screenshot of the
// admin page is taken on the way, and the numbers it shows are compared
// with /metrics.
//
// With the Redis broker (a redis-server of the test's own, two wsd nodes
// on it): the pages are on node A; A is drained and, while it is down,
// node B's HTTP API publishes; A is restarted on the same port, and each
// page must resubscribe with its last {offset, epoch}, be told
// recovered:true and get every publication in order, once, in the same
// epoch, without a refetch, while B publishes through the restart and the
// resubscribe. Skipped without /usr/bin/redis-server (REDIS_SERVER: another).
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import puppeteer from "puppeteer-core";

import { apiKey, redisBin, startRedis, startWsd, token } from "../test/wsd.mjs";

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
async function waitPage(page, fn, what, timeout = 15000, ...args) {
  try {
    // Polled on a timer: a page in a background tab gets no animation
    // frames, which waitForFunction polls on by default.
    await page.waitForFunction(fn, { timeout, polling: 100 }, ...args);
  } catch (err) {
    const seen = await page.evaluate(() => ({ events: window.events, offsets: window.pubs?.map((p) => p.offset) }));
    throw new Error(`${what}: ${err.message}; the page saw ${JSON.stringify(seen)}; its console: ${JSON.stringify(page.consoleLines)}`);
  }
}

async function publish(wsd, channel, from, to) {
  for (let n = from; n <= to; n++) await wsd.api("/api/publish", { channel, data: { n } });
}

// openPages opens one page per protocol on the test page, connected to
// wsd and subscribed to channel.
async function openPages(wsd, channel) {
  const pages = {};
  for (const protocol of ["json", "msgpack"]) {
    const page = await browser.newPage();
    page.consoleLines = [];
    page.on("console", (m) => page.consoleLines.push(m.text()));
    page.on("pageerror", (e) => page.consoleLines.push(`page error: ${e.message}`));
    const q = new URLSearchParams({ ws: wsd.url, token: token(`page-${protocol}`), channel, protocol });
    await page.goto(`http://127.0.0.1:${httpPort}/page.html?${q}`);
    await waitPage(page, () => window.events.some((e) => e.event === "subscribed"), `${protocol}: first subscribe`);
    pages[protocol] = page;
  }
  return pages;
}

const upTo = (n) => Array.from({ length: n }, (_, i) => i + 1);

test("a page cut off recovers everything; after a drain and restart it is told recovered:false and refetches", { skip: !existsSync(chromium) && `no ${chromium}` }, async () => {
  const args = ["--retry-after-max", "1s", "--drain-timeout", "3s", "--admin-ui"];
  let wsd = await startWsd({ tokens: true, args });
  let pages = {};
  try {
    pages = await openPages(wsd, "e2e");
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
    for (const page of Object.values(pages)) await page.close();
    await wsd.stop();
  }
});

const noRedis = !existsSync(redisBin) && `no ${redisBin} (apt-get install redis-server)`;
test("Redis broker: a page drained off node A recovers, once A is back, what node B published meanwhile", { skip: (!existsSync(chromium) && `no ${chromium}`) || noRedis }, async () => {
  const redis = await startRedis();
  // History of 1,000: room for what the racing publisher below adds, however slow the machine.
  const args = (node) => ["--retry-after-max", "1s", "--drain-timeout", "3s", "--broker", "redis", "--redis-addr", redis.addr, "--node-id", node, "--history-size", "1000"];
  const channel = "e2e-redis";
  let a, b;
  let pages = {};
  try {
    a = await startWsd({ tokens: true, args: args("a") });
    b = await startWsd({ tokens: true, args: args("b") });
    pages = await openPages(a, channel);

    // Live, through either node's API: 1 to 5 through A's, 6 to 10 through B's.
    await publish(a, channel, 1, 5);
    await publish(b, channel, 6, 10);
    let epoch;
    for (const [protocol, page] of Object.entries(pages)) {
      await waitPage(page, () => window.pubs.length >= 10, `${protocol}: the first 10`);
      const pubs = await page.evaluate(() => window.pubs);
      assert.deepEqual(pubs.map((p) => p.offset), upTo(10), protocol);
      epoch ??= pubs[0].epoch;
      assert.ok(epoch && pubs.every((p) => p.epoch === epoch), `${protocol}: one epoch`);
    }

    // Drain A (1001 with a retry hint) while B's API publishes 11 to 20;
    // then, with A gone, 21 to 30.
    const during = publish(b, channel, 11, 20);
    await a.stop();
    await during;
    for (const [protocol, page] of Object.entries(pages)) {
      const drained = await page.evaluate(() => window.events.filter((e) => e.event === "disconnected").at(-1));
      assert.equal(drained?.code, 1001, protocol);
      assert.match(drained.reason, /retry-after=1/);
      assert.ok(drained.delay >= 1000, `${protocol}: reconnect after ${drained.delay} ms, not before the hint`);
    }
    await publish(b, channel, 21, 30);

    // A again, on the same port, while B's API goes on publishing (every
    // 25 ms, until both pages are back and a little after): each page
    // resubscribes with its last {offset, epoch}, recovers from Redis's
    // history what it missed, and goes on live without a gap or a double
    // where the recovery meets the publications that race it.
    let last = 30;
    let publishing = true;
    const racing = (async () => {
      while (publishing) {
        await publish(b, channel, last + 1, last + 1);
        last++;
        await sleep(25);
      }
    })();
    try {
      a = await startWsd({ tokens: true, args: args("a"), port: a.port });
      for (const [protocol, page] of Object.entries(pages)) {
        await waitPage(page, () => window.events.filter((e) => e.event === "subscribed").length === 2 && window.pubs.length >= 30, `${protocol}: the recovery after the restart`);
      }
      await sleep(250);
    } finally {
      publishing = false;
      await racing;
    }
    for (const [protocol, page] of Object.entries(pages)) {
      await waitPage(page, (n) => window.pubs.length >= n, `${protocol}: ${last} publications`, 15000, last);
      const { pubs, events, refetched } = await page.evaluate(() => ({ pubs: window.pubs, events: window.events, refetched: window.refetched }));
      const resub = events.filter((e) => e.event === "subscribed").at(-1);
      assert.deepEqual([resub.recovering, resub.recovered], [true, true], protocol);
      assert.equal(refetched, null, `${protocol}: nothing to refetch`);
      assert.deepEqual(pubs.map((p) => p.offset), upTo(last), `${protocol}: every publication, in order, once`);
      assert.deepEqual(pubs.map((p) => p.data.n), upTo(last));
      assert.ok(pubs.every((p) => p.epoch === epoch), `${protocol}: the same epoch across the restart`);
    }

    // And one more, through the restarted node's API: live.
    await publish(a, channel, last + 1, last + 1);
    for (const [protocol, page] of Object.entries(pages)) {
      await waitPage(page, (n) => window.pubs.length >= n, `${protocol}: the publication after the restart`, 15000, last + 1);
      const pubs = await page.evaluate(() => window.pubs);
      assert.deepEqual(pubs.map((p) => p.offset), upTo(last + 1), protocol);
      assert.deepEqual([pubs[last].epoch, pubs[last].data], [epoch, { n: last + 1 }], protocol);
    }
  } finally {
    for (const page of Object.values(pages)) await page.close();
    await a?.stop();
    await b?.stop();
    await redis.stop();
  }
});
