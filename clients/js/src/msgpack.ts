// A small MessagePack codec for the wsd.msgpack subprotocol. wsd's data is
// JSON's, so this maps values the way JSON.stringify and JSON.parse do:
// what a MessagePack client sends and receives is what a JSON client
// would, in another encoding.
//
// Encoding: null and undefined inside arrays → nil (undefined object
// members are left out, as JSON.stringify does); safe integers → the
// smallest integer format; other numbers → float64 (NaN and infinities
// throw: the server refuses them); bigint → int64/uint64; strings → str;
// arrays → array; objects → map (toJSON honoured); Uint8Array → bin (the
// server refuses bin: encode binary data into a string).
//
// Decoding: integers beyond 2^53 become (inexact) numbers, as JSON.parse
// makes them; bin → Uint8Array; ext → an error (wsd never sends one).

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** How deep arrays and maps may nest, as on the server. */
export const MAX_DEPTH = 10000;

export class MsgpackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MsgpackError";
  }
}

class Writer {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  pos = 0;

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }
  u16(v: number): void {
    this.ensure(2);
    this.view.setUint16(this.pos, v);
    this.pos += 2;
  }
  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.pos, v);
    this.pos += 4;
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

/** encode returns value as MessagePack. */
export function encode(value: unknown): Uint8Array {
  const w = new Writer();
  write(w, value, 0);
  return w.buf.slice(0, w.pos);
}

function write(w: Writer, v: unknown, depth: number): void {
  if (depth > MAX_DEPTH) throw new MsgpackError("nested too deep");
  if (v !== null && typeof v === "object" && typeof (v as { toJSON?: unknown }).toJSON === "function") {
    v = (v as { toJSON: () => unknown }).toJSON();
  }
  switch (typeof v) {
    case "undefined":
      w.u8(0xc0);
      return;
    case "boolean":
      w.u8(v ? 0xc3 : 0xc2);
      return;
    case "number":
      writeNumber(w, v);
      return;
    case "bigint":
      writeBigInt(w, v);
      return;
    case "string":
      writeString(w, v);
      return;
    case "object":
      break;
    default:
      throw new MsgpackError(`cannot encode a ${typeof v}`);
  }
  if (v === null) {
    w.u8(0xc0);
    return;
  }
  if (v instanceof Uint8Array) {
    const n = v.length;
    if (n < 0x100) {
      w.u8(0xc4);
      w.u8(n);
    } else if (n < 0x10000) {
      w.u8(0xc5);
      w.u16(n);
    } else {
      w.u8(0xc6);
      w.u32(n);
    }
    w.bytes(v);
    return;
  }
  if (Array.isArray(v)) {
    header(w, v.length, 0x90, 0xdc, 0xdd);
    for (const e of v) write(w, e, depth + 1);
    return;
  }
  const entries = Object.entries(v as Record<string, unknown>).filter(
    ([, e]) => e !== undefined && typeof e !== "function" && typeof e !== "symbol",
  );
  header(w, entries.length, 0x80, 0xde, 0xdf);
  for (const [k, e] of entries) {
    writeString(w, k);
    write(w, e, depth + 1);
  }
}

function header(w: Writer, n: number, fix: number, c16: number, c32: number): void {
  if (n < 16) {
    w.u8(fix | n);
  } else if (n < 0x10000) {
    w.u8(c16);
    w.u16(n);
  } else {
    w.u8(c32);
    w.u32(n);
  }
}

function writeNumber(w: Writer, v: number): void {
  if (!Number.isFinite(v)) throw new MsgpackError("NaN and infinities cannot be sent");
  if (!Number.isSafeInteger(v)) {
    w.u8(0xcb);
    w.ensure(8);
    w.view.setFloat64(w.pos, v);
    w.pos += 8;
    return;
  }
  if (v >= 0) {
    if (v < 0x80) w.u8(v === 0 ? 0 : v); // -0 is 0, as JSON.stringify writes it
    else if (v < 0x100) {
      w.u8(0xcc);
      w.u8(v);
    } else if (v < 0x10000) {
      w.u8(0xcd);
      w.u16(v);
    } else if (v < 0x100000000) {
      w.u8(0xce);
      w.u32(v);
    } else {
      w.u8(0xcf);
      w.u32(Math.floor(v / 0x100000000));
      w.u32(v >>> 0);
    }
    return;
  }
  if (v >= -32) w.u8(v & 0xff);
  else if (v >= -0x80) {
    w.u8(0xd0);
    w.u8(v & 0xff);
  } else if (v >= -0x8000) {
    w.u8(0xd1);
    w.u16(v & 0xffff);
  } else if (v >= -0x80000000) {
    w.u8(0xd2);
    w.u32(v >>> 0);
  } else {
    w.u8(0xd3);
    w.ensure(8);
    w.view.setBigInt64(w.pos, BigInt(v));
    w.pos += 8;
  }
}

function writeBigInt(w: Writer, v: bigint): void {
  w.ensure(9);
  if (v >= 0n) {
    if (v > 0xffffffffffffffffn) throw new MsgpackError("integer beyond 64 bits");
    w.buf[w.pos++] = 0xcf;
    w.view.setBigUint64(w.pos, v);
  } else {
    if (v < -0x8000000000000000n) throw new MsgpackError("integer beyond 64 bits");
    w.buf[w.pos++] = 0xd3;
    w.view.setBigInt64(w.pos, v);
  }
  w.pos += 8;
}

function writeString(w: Writer, s: string): void {
  const b = textEncoder.encode(s);
  const n = b.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n < 0x100) {
    w.u8(0xd9);
    w.u8(n);
  } else if (n < 0x10000) {
    w.u8(0xda);
    w.u16(n);
  } else {
    w.u8(0xdb);
    w.u32(n);
  }
  w.bytes(b);
}

/** decode reads one MessagePack value that must fill data exactly. */
export function decode(data: Uint8Array | ArrayBuffer): unknown {
  const buf = data instanceof Uint8Array ? data : new Uint8Array(data);
  const r = new Reader(buf);
  const v = r.value();
  if (r.pos !== buf.length) throw new MsgpackError("bytes after the MessagePack value");
  return v;
}

class Reader {
  view: DataView;
  pos = 0;
  constructor(readonly buf: Uint8Array) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  // need checks that n more bytes are there before they are read: a
  // length in a header is believed only once the bytes it claims exist.
  need(n: number): void {
    if (n > this.buf.length - this.pos) throw new MsgpackError("truncated MessagePack");
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }
  str(n: number): string {
    this.need(n);
    const s = textDecoder.decode(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }
  bin(n: number): Uint8Array {
    this.need(n);
    const b = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  // value reads one whole value without recursion (a peer's nesting must
  // not decide how deep the stack goes): open containers are kept in an
  // explicit stack, as JSON.parse does.
  value(): unknown {
    const stack: Open[] = [];
    for (;;) {
      const top = stack[stack.length - 1];
      let v = this.item();
      if (top?.map && top.key === undefined) {
        if (typeof v !== "string") throw new MsgpackError("a map key is not a string");
        top.key = v;
        continue;
      }
      if (v instanceof Open) {
        if (v.left > 0) {
          if (stack.length >= MAX_DEPTH) throw new MsgpackError("nested too deep");
          stack.push(v);
          continue;
        }
        v = v.value();
      }
      // Place v in the open containers, closing those it completes.
      for (;;) {
        const o = stack[stack.length - 1];
        if (!o) return v;
        o.put(v);
        if (o.left > 0) break;
        stack.pop();
        v = o.value();
      }
    }
  }

  // item reads a scalar, or the header of an array or map (an Open).
  item(): unknown {
    const b = this.u8();
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return this.open(true, b & 0x0f);
    if ((b & 0xf0) === 0x90) return this.open(false, b & 0x0f);
    if ((b & 0xe0) === 0xa0) return this.str(b & 0x1f);
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return this.bin(this.u8());
      case 0xc5:
        return this.bin(this.u16());
      case 0xc6:
        return this.bin(this.u32());
      case 0xca: {
        this.need(4);
        const v = this.view.getFloat32(this.pos);
        this.pos += 4;
        return v;
      }
      case 0xcb: {
        this.need(8);
        const v = this.view.getFloat64(this.pos);
        this.pos += 8;
        return v;
      }
      case 0xcc:
        return this.u8();
      case 0xcd:
        return this.u16();
      case 0xce:
        return this.u32();
      case 0xcf: {
        this.need(8);
        const v = this.view.getBigUint64(this.pos);
        this.pos += 8;
        return Number(v);
      }
      case 0xd0:
        return (this.u8() << 24) >> 24;
      case 0xd1:
        return (this.u16() << 16) >> 16;
      case 0xd2:
        return this.u32() | 0;
      case 0xd3: {
        this.need(8);
        const v = this.view.getBigInt64(this.pos);
        this.pos += 8;
        return Number(v);
      }
      case 0xd9:
        return this.str(this.u8());
      case 0xda:
        return this.str(this.u16());
      case 0xdb:
        return this.str(this.u32());
      case 0xdc:
        return this.open(false, this.u16());
      case 0xdd:
        return this.open(false, this.u32());
      case 0xde:
        return this.open(true, this.u16());
      case 0xdf:
        return this.open(true, this.u32());
    }
    throw new MsgpackError(`unsupported MessagePack type 0x${b.toString(16)}`);
  }

  open(map: boolean, n: number): Open {
    // Every element takes at least a byte: a count is believed only once
    // that many bytes are there, so no array is sized by a lie.
    this.need(map ? 2 * n : n);
    return new Open(map, n);
  }
}

// Open is an array or map being read.
class Open {
  arr: unknown[] | undefined;
  obj: Record<string, unknown> | undefined;
  key: string | undefined;
  i = 0;
  constructor(
    readonly map: boolean,
    public left: number,
  ) {
    if (map) this.obj = {};
    else this.arr = new Array<unknown>(left);
  }
  put(v: unknown): void {
    if (this.arr) {
      this.arr[this.i++] = v;
    } else {
      const k = this.key!;
      if (k === "__proto__") {
        Object.defineProperty(this.obj, k, { value: v, enumerable: true, writable: true, configurable: true });
      } else {
        this.obj![k] = v;
      }
      this.key = undefined;
    }
    this.left--;
  }
  value(): unknown {
    return this.arr ?? this.obj;
  }
}
