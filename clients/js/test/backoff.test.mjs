import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, retryHint } from "../dist/index.js";

const b = { min: 100, max: 1000, factor: 2 };

test("the ceiling grows by factor per attempt up to max", () => {
  const top = () => 0.999999;
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 10].map((a) => backoffDelay(b, a, 0, top)),
    [99, 199, 399, 799, 999, 999, 999],
  );
});

test("full jitter: anywhere from 0 to the ceiling", () => {
  assert.equal(backoffDelay(b, 3, 0, () => 0), 0);
  assert.equal(backoffDelay(b, 3, 0, () => 0.5), 400);
  let lo = Infinity,
    hi = 0;
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(b, 2, 0);
    lo = Math.min(lo, d);
    hi = Math.max(hi, d);
    assert.ok(d >= 0 && d < 400, `delay ${d}`);
  }
  assert.ok(hi - lo > 200, "1,000 draws are spread"); // fails only if Math.random is broken
});

test("a server hint is a floor", () => {
  assert.equal(backoffDelay(b, 0, 3000, () => 0.5), 3000);
  assert.equal(backoffDelay(b, 5, 300, () => 0.5), 500);
});

test("retry-after is read from wsd's drain reason", () => {
  assert.equal(retryHint("server shutting down; retry-after=7"), 7000);
  assert.equal(retryHint("bye"), 0);
  assert.equal(retryHint("retry-after=99999999999"), 0); // not a number the client believes
});
