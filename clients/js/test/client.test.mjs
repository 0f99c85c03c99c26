// The client against real wsd processes (bin/wsd), on loopback.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Client, DisconnectedError, TimeoutError, WsdError } from "../dist/index.js";
import { collect, freePort, next, startWsd, token } from "./wsd.mjs";

const fast = { min: 20, max: 200, factor: 2 };

for (const protocol of ["json", "msgpack"]) {
  describe(`${protocol}: channels, presence, history`, () => {
    let wsd;
    before(async () => {
      wsd = await startWsd({ args: ["--allow-client-publish", "--namespace", "room:presence,join_leave"] });
    });
    after(() => wsd.stop());

    test("connect, subscribe, publish, receive; state events in order", async () => {
      const c = new Client(wsd.url, { protocol, backoff: fast });
      const states = [];
      c.on("state", (s) => states.push(s));
      const connected = next(c, "connected");
      c.connect();
      assert.equal((await connected).protocol, `wsd.${protocol}`);
      const sub = c.subscribe("news");
      const subscribed = await next(sub, "subscribed");
      assert.equal(subscribed.recovering, false);
      const got = collect(sub, 3);
      const pos = await c.publish("news", { n: 1, f: 1.5, s: "é" });
      assert.equal(pos.offset, 1);
      await wsd.api("/api/publish", { channel: "news", data: [true, null, "x"] });
      await c.publish("news", "text");
      const pubs = await got;
      assert.deepEqual(pubs.map((p) => [p.offset, p.data]), [[1, { n: 1, f: 1.5, s: "é" }], [2, [true, null, "x"]], [3, "text"]]);
      assert.equal(pubs[0].epoch, pos.epoch);
      assert.equal(sub.offset, 3);
      c.disconnect();
      assert.deepEqual(states, ["connecting", "connected", "disconnected"]);
    });

    test("presence, join and leave, history, unsubscribe", async () => {
      const a = new Client(wsd.url, { protocol, backoff: fast });
      const b = new Client(wsd.url, { protocol, backoff: fast });
      a.connect();
      b.connect();
      const sa = a.subscribe("room:1");
      await next(sa, "subscribed");
      const joined = next(sa, "join");
      const sb = b.subscribe("room:1");
      await next(sb, "subscribed");
      assert.ok((await joined).client);
      const list = await a.presence("room:1");
      assert.equal(list.length, 2);
      for (let i = 1; i <= 5; i++) await a.publish("room:1", { i });
      const h = await b.history("room:1", { limit: 2 });
      assert.deepEqual(h.publications.map((p) => p.data), [{ i: 4 }, { i: 5 }]);
      assert.equal(h.offset, 5);
      const since = await b.history("room:1", { since: { offset: 3, epoch: h.epoch } });
      assert.equal(since.recovered, true);
      assert.deepEqual(since.publications.map((p) => p.offset), [4, 5]);
      const left = next(sa, "leave");
      await sb.unsubscribe();
      await left;
      assert.equal((await a.presence("room:1")).length, 1);
      await assert.rejects(a.presence("news"), (e) => e instanceof WsdError && e.code === "NOT_AVAILABLE");
      a.disconnect();
      b.disconnect();
    });

    test("a refused subscribe is reported and dropped", async () => {
      const c = new Client(wsd.url, { protocol, backoff: fast });
      c.connect();
      const sub = c.subscribe("$private:x");
      const err = await next(sub, "error");
      assert.equal(err.code, "FORBIDDEN");
      assert.equal(c.getSubscription("$private:x"), undefined);
      c.disconnect();
    });
  });
}

describe("JSON and MessagePack clients on one channel", () => {
  let wsd;
  before(async () => {
    wsd = await startWsd({ args: ["--allow-client-publish"] });
  });
  after(() => wsd.stop());

  test("receive identical publications, whoever published them", async () => {
    const j = new Client(wsd.url, { protocol: "json" });
    const m = new Client(wsd.url, { protocol: "msgpack" });
    j.connect();
    m.connect();
    const sj = j.subscribe("mixed");
    const sm = m.subscribe("mixed");
    await Promise.all([next(sj, "subscribed"), next(sm, "subscribed")]);
    const data = [
      { price: 101.25, tags: ["a", "b"], ok: true, none: null, nested: { deep: [[1], { x: -7 }] } },
      "text é ✓ 𝄞",
      -42,
      2 ** 40,
      0.1,
      [],
      {},
    ];
    const gj = collect(sj, data.length * 3);
    const gm = collect(sm, data.length * 3);
    for (const d of data) {
      await j.publish("mixed", d);
      await m.publish("mixed", d);
      await wsd.api("/api/publish", { channel: "mixed", data: d });
    }
    const [pj, pm] = await Promise.all([gj, gm]);
    assert.deepEqual(pm, pj);
    assert.deepEqual(pj.map((p) => p.data), data.flatMap((d) => [d, d, d]));
    j.disconnect();
    m.disconnect();
  });
});

describe("reconnect and recovery", () => {
  let wsd;
  before(async () => {
    wsd = await startWsd({ tokens: true, args: ["--allow-client-publish", "--retry-after-max", "1s", "--drain-timeout", "3s"] });
  });
  after(() => wsd.stop());

  for (const protocol of ["json", "msgpack"]) {
    test(`${protocol}: cut by the server, it reconnects with backoff and recovers every missed publication once, in order`, async () => {
      const user = `alice-${protocol}`;
      const c = new Client(wsd.url, { protocol, token: token(user), backoff: fast });
      c.connect();
      const sub = c.subscribe(`feed-${protocol}`);
      await next(sub, "subscribed");
      const before = collect(sub, 2);
      for (let i = 1; i <= 2; i++) await wsd.api("/api/publish", { channel: sub.channel, data: { i } });
      await before;
      const base = sub.offset;

      const disconnected = next(c, "disconnected");
      const resubscribed = next(sub, "subscribed");
      const rest = collect(sub, 20);
      assert.equal((await wsd.api("/api/disconnect", { user, code: 4000, reason: "cut" })).disconnected, 1);
      const d = await disconnected;
      assert.deepEqual([d.code, d.reason, d.reconnect], [4000, "cut", true]);
      for (let i = 3; i <= 22; i++) await wsd.api("/api/publish", { channel: sub.channel, data: { i } });
      const r = await resubscribed;
      assert.equal(r.recovering, true);
      assert.equal(r.recovered, true);
      const got = await rest;
      assert.deepEqual(got.map((p) => p.data.i), Array.from({ length: 20 }, (_, k) => k + 3));
      assert.deepEqual(got.map((p) => p.offset), Array.from({ length: 20 }, (_, k) => base + k + 1));
      c.disconnect();
    });
  }

  test("a request gets no reply in time: TimeoutError, and the client goes on", async () => {
    const c = new Client(wsd.url, { token: token("bob"), requestTimeout: 300 });
    try {
      c.connect();
      await next(c, "connected");
      await wsd.signal("SIGSTOP"); // the server is there, but answers nothing
      try {
        await assert.rejects(c.publish("feed", 1), TimeoutError);
      } finally {
        await wsd.signal("SIGCONT");
      }
      // The client goes on: a later request is answered. (The resumed
      // server may take more than the 300 ms on a loaded machine: a few
      // tries, each a request of its own.)
      let later;
      for (let i = 0; i < 10 && later === undefined; i++) {
        later = await c.history("feed", { limit: 1 }).catch((e) => {
          if (!(e instanceof TimeoutError)) throw e;
        });
      }
      assert.equal(typeof later?.offset, "number");
    } finally {
      c.disconnect(); // a failed assertion must not leave a reconnecting client behind (the file would never end)
    }
  });

  test("getToken refreshes the token before exp: the connection outlives the first token", async () => {
    const now = Math.floor(Date.now() / 1000);
    let calls = 0;
    const c = new Client(wsd.url, {
      token: token("carol", { exp: now + 3 }),
      refreshBefore: 2000,
      getToken: () => {
        calls++;
        return token("carol", { exp: Math.floor(Date.now() / 1000) + 3600 });
      },
    });
    const errors = [];
    c.on("error", (e) => errors.push(e));
    let drops = 0;
    c.on("disconnected", () => drops++);
    c.connect();
    await next(c, "connected");
    // Past the first token's exp (and the server's one-second tick):
    // without the refresh the server would have closed with 4001.
    await new Promise((r) => setTimeout(r, (now + 5) * 1000 - Date.now()));
    await c.history("feed", { limit: 1 });
    assert.equal(calls, 1);
    assert.equal(drops, 0);
    assert.deepEqual(errors, []);
    c.disconnect();
  });

  test("an expired token without getToken: closed with 4001, no reconnect", async () => {
    const now = Math.floor(Date.now() / 1000);
    const c = new Client(wsd.url, { token: token("dave", { exp: now + 1 }) });
    c.connect();
    await next(c, "connected");
    const d = await next(c, "disconnected", 5000);
    assert.deepEqual([d.code, d.reconnect], [4001, false]);
    assert.equal(c.state, "disconnected");
  });
});

describe("requests while reconnecting", () => {
  test("a request made while no server is there waits for the connection, across failed attempts", async () => {
    const port = await freePort();
    const c = new Client(`ws://127.0.0.1:${port}/ws`, { backoff: { min: 50, max: 200, factor: 2 }, requestTimeout: 20000 });
    let failures = 0;
    const twoFailures = new Promise((res) => c.on("disconnected", (e) => ++failures === 2 && res(e)));
    c.connect();
    const published = c.publish("waiting", { x: 1 });
    assert.equal((await twoFailures).code, 1006);
    const wsd = await startWsd({ port, args: ["--allow-client-publish"] });
    try {
      assert.equal((await published).offset, 1);
    } finally {
      c.disconnect();
      await wsd.stop();
    }
  });

  test("disconnect rejects what is still waiting", async () => {
    const port = await freePort();
    const c = new Client(`ws://127.0.0.1:${port}/ws`, { backoff: { min: 50, max: 200, factor: 2 } });
    c.connect();
    const p = c.publish("never", 1);
    await next(c, "disconnected");
    c.disconnect();
    await assert.rejects(p, DisconnectedError);
  });
});

describe("refused upgrades", () => {
  test("an upgrade refused by a pacing server (503) is a failed attempt: it backs off and comes back", async () => {
    const wsd = await startWsd({ args: ["--max-handshakes-per-sec", "1"] });
    try {
      const first = new Client(wsd.url);
      first.connect();
      await next(first, "connected");
      const second = new Client(wsd.url, { backoff: { min: 300, max: 3000, factor: 2 } });
      const refused = next(second, "disconnected");
      second.connect();
      const d = await refused;
      assert.deepEqual([d.code, d.reconnect], [1006, true]);
      await next(second, "connected", 20000);
      first.disconnect();
      second.disconnect();
    } finally {
      await wsd.stop();
    }
  });
});

describe("drain and restart", () => {
  test("1001 with a retry hint: it waits at least the hint, comes back to the restarted node, and is told recovered:false", async () => {
    const args = ["--allow-client-publish", "--retry-after-max", "1s", "--drain-timeout", "3s"];
    let wsd = await startWsd({ args });
    const c = new Client(wsd.url, { protocol: "msgpack", backoff: fast });
    try {
      c.connect();
      const sub = c.subscribe("news");
      await next(sub, "subscribed");
      const one = collect(sub, 1);
      await wsd.api("/api/publish", { channel: "news", data: "before" });
      await one;
      const disconnected = next(c, "disconnected");
      const stopped = wsd.stop();
      const d = await disconnected;
      assert.equal(d.code, 1001);
      assert.match(d.reason, /retry-after=1/);
      assert.ok(d.reconnect && d.delay >= 1000, `delay ${d.delay}`);
      await stopped;
      const resubscribed = next(sub, "subscribed", 15000);
      wsd = await startWsd({ args, port: wsd.port });
      const r = await resubscribed;
      assert.deepEqual([r.recovering, r.recovered], [true, false]); // the memory broker's history went with the process
      const after = collect(sub, 1);
      await wsd.api("/api/publish", { channel: "news", data: "after" });
      assert.equal((await after)[0].data, "after");
    } finally {
      c.disconnect();
      await wsd.stop();
    }
  });
});
