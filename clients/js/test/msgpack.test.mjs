import assert from "node:assert/strict";
import { test } from "node:test";

import { decodeMsgpack as decode, encodeMsgpack as encode, MsgpackError } from "../dist/index.js";

const hex = (b) => Buffer.from(b).toString("hex");

test("values survive a round trip as JSON would carry them", () => {
  const values = [
    null, true, false, 0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER,
    -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, Number.MIN_SAFE_INTEGER,
    1.5, -0.25, 1e21, 0.1, "", "plain", "é ✓ 𝄞", "x".repeat(31), "x".repeat(32), "y".repeat(300), "z".repeat(70000),
    [], [1, [2, [3, []]], {}], { a: 1, b: { c: null }, l: ["s", 2.5] },
    Array.from({ length: 20 }, (_, i) => i), Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
  ];
  for (const v of values) {
    assert.deepEqual(decode(encode(v)), JSON.parse(JSON.stringify(v)), `value ${JSON.stringify(v).slice(0, 40)}`);
  }
});

test("smallest encodings, as the server writes them", () => {
  assert.equal(hex(encode(5)), "05");
  assert.equal(hex(encode(-5)), "fb");
  assert.equal(hex(encode(200)), "ccc8");
  assert.equal(hex(encode(-200)), "d1ff38");
  assert.equal(hex(encode(1.5)), "cb3ff8000000000000");
  assert.equal(hex(encode(-0)), "00"); // JSON.stringify(-0) is "0"
  assert.equal(hex(encode({ k: "v" })), "81a16ba176");
  assert.equal(hex(encode([true, null])), "92c3c0");
});

test("JSON.stringify's rules: undefined members dropped, toJSON used", () => {
  const d = new Date(0);
  assert.deepEqual(decode(encode({ a: undefined, b: 1, d })), { b: 1, d: d.toJSON() });
  assert.deepEqual(decode(encode([undefined])), [null]);
});

test("decodes float32 and 64-bit integers as numbers", () => {
  assert.equal(decode(Uint8Array.from([0xca, 0x3f, 0xc0, 0, 0])), 1.5);
  assert.equal(decode(Uint8Array.from([0xcf, 0, 0, 0, 1, 0, 0, 0, 0])), 2 ** 32);
  assert.equal(decode(Uint8Array.from([0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe])), -2);
});

test("a __proto__ key is data, not a prototype", () => {
  const m = decode(Uint8Array.from([0x81, 0xa9, ...Buffer.from("__proto__"), 0x81, 0xa1, 0x78, 0x01]));
  assert.deepEqual(Object.keys(m), ["__proto__"]);
  assert.equal(Object.getPrototypeOf(m), Object.prototype);
  assert.equal(m.x, undefined);
});

test("malformed or lying input is refused, never sized from its headers", () => {
  const bad = {
    "map of 2^32-1 entries": [0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 0x6b],
    "array of 2^32-1": [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],
    "str of 4 GiB": [0xdb, 0xff, 0xff, 0xff, 0xff, 0x61],
    "truncated float": [0xcb, 0, 0],
    "never-used byte": [0xc1],
    "ext": [0xd4, 0x01, 0x00],
    "trailing bytes": [0xc0, 0xc0],
    "integer key": [0x81, 0x01, 0x02],
    "invalid UTF-8": [0xa2, 0xff, 0xfe],
    "empty": [],
  };
  for (const [name, bytes] of Object.entries(bad)) {
    assert.throws(() => decode(Uint8Array.from(bytes)), (e) => e instanceof MsgpackError || e instanceof TypeError, name);
  }
  const nested = (n) => {
    const d = new Uint8Array(n + 1).fill(0x91);
    d[n] = 0xc0;
    return d;
  };
  assert.throws(() => decode(nested(10001)), MsgpackError);
  let v = decode(nested(10000)); // the server's limit, without recursion
  for (let i = 0; i < 10000; i++) v = v[0];
  assert.equal(v, null);
});

test("NaN and infinities cannot be encoded", () => {
  assert.throws(() => encode({ x: NaN }), MsgpackError);
  assert.throws(() => encode(Infinity), MsgpackError);
});
