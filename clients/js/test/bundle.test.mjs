// The browser bundles (dist/wsd.browser*.js) define the global Wsd and work
// as a page would use them, against a real wsd.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { collect, next, startWsd } from "./wsd.mjs";

let wsd;
before(async () => {
  wsd = await startWsd();
});
after(() => wsd.stop());

for (const file of ["wsd.browser.js", "wsd.browser.min.js"]) {
  test(`${file}: a script tag's global Wsd connects, subscribes and receives`, async () => {
    const code = readFileSync(new URL(`../dist/${file}`, import.meta.url), "utf8");
    // As a classic script: `var Wsd` at the top level, nothing imported.
    const Wsd = new Function(`${code}\nreturn Wsd;`)();
    assert.equal(typeof Wsd.Client, "function");
    const client = new Wsd.Client(wsd.url, { protocol: "msgpack" });
    client.connect();
    const sub = client.subscribe("page");
    await next(sub, "subscribed");
    const got = collect(sub, 1);
    await wsd.api("/api/publish", { channel: "page", data: { from: "api" } });
    assert.deepEqual((await got)[0].data, { from: "api" });
    client.disconnect();
  });
}
