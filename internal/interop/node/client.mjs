// Interop client for wsd. Usage:
//   node client.mjs ws|browser ws://HOST:PORT
// "ws" uses the ws package (permessage-deflate offered); "browser" uses the
// WHATWG WebSocket built into Node (run with --experimental-websocket), the
// API browsers expose. Prints one line per check and exits non-zero on the
// first failure.
const [impl, base] = process.argv.slice(2);
let WS;
if (impl === 'ws') {
  WS = (await import('ws')).default;
} else if (impl === 'browser') {
  WS = globalThis.WebSocket;
  if (!WS) throw new Error('no global WebSocket: run node with --experimental-websocket');
} else {
  throw new Error('usage: client.mjs ws|browser URL');
}

function fail(msg) {
  console.error(`FAIL ${impl}: ${msg}`);
  process.exit(1);
}

// open connects and returns helpers to send and to await the next message.
function open(path, protocols) {
  return new Promise((resolve, reject) => {
    const ws = protocols ? new WS(base + path, protocols) : new WS(base + path);
    ws.binaryType = 'arraybuffer';
    const queue = [];
    const waiters = [];
    ws.onmessage = (ev) => {
      const w = waiters.shift();
      if (w) w(ev.data); else queue.push(ev.data);
    };
    ws.onerror = (ev) => reject(new Error(`${path}: ${ev.message || 'connection error'}`));
    ws.onopen = () => resolve({
      ws,
      next: () => new Promise((res, rej) => {
        if (queue.length) return res(queue.shift());
        const t = setTimeout(() => rej(new Error(`${path}: no message within 10s`)), 10000);
        waiters.push((d) => { clearTimeout(t); res(d); });
      }),
      closed: () => new Promise((res) => { ws.onclose = (ev) => res(ev); }),
    });
  });
}

function same(a, b) {
  const x = new Uint8Array(a), y = new Uint8Array(b);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

const echo = await open('/echo');
if (impl === 'ws' && !String(echo.ws.extensions).includes('permessage-deflate')) {
  fail(`permessage-deflate not negotiated (extensions: ${echo.ws.extensions})`);
}
for (const size of [0, 1, 125, 126, 65535, 65536, 300000]) {
  const text = 'κόσμε-'.repeat(Math.ceil(size / 6)).slice(0, size);
  echo.ws.send(text);
  const got = await echo.next();
  if (got !== text) fail(`text echo of ${size} chars came back as ${String(got).length}`);
  const bin = new Uint8Array(size).map((_, i) => (i * 31) & 0xff);
  echo.ws.send(bin);
  const gotBin = await echo.next();
  if (!same(gotBin, bin.buffer)) fail(`binary echo of ${size} bytes differs`);
}
console.log(`ok ${impl}: echo text and binary up to 300000 bytes (extensions: "${echo.ws.extensions}")`);

const app = await open('/ws', ['wsd.json']);
if (app.ws.protocol !== 'wsd.json') fail(`subprotocol "${app.ws.protocol}"`);
app.ws.send(JSON.stringify({ type: 'echo', id: 1, data: { hello: 'world', n: [1, 2, 3] } }));
const reply = JSON.parse(await app.next());
if (reply.type !== 'echo_reply' || reply.id !== 1 || reply.data.hello !== 'world') fail(`echo_reply ${JSON.stringify(reply)}`);
const peer = await open('/ws');
for (const c of [app, peer]) {
  c.ws.send(JSON.stringify({ type: 'subscribe', channel: 'room', id: 's' }));
  const a = JSON.parse(await c.next());
  if (a.type !== 'ack' || a.id !== 's' || a.channel !== 'room') fail(`subscribe ack ${JSON.stringify(a)}`);
}
app.ws.send(JSON.stringify({ type: 'publish', channel: 'room', data: { text: 'to all' }, id: 'p' }));
const pa = JSON.parse(await app.next());
if (pa.type !== 'ack' || pa.id !== 'p' || !(pa.offset >= 1)) fail(`publish ack ${JSON.stringify(pa)}`);
for (const c of [app, peer]) {
  const m = JSON.parse(await c.next());
  if (m.type !== 'message' || m.channel !== 'room' || m.offset !== pa.offset || m.epoch !== pa.epoch || m.data.text !== 'to all') fail(`message ${JSON.stringify(m)}`);
}
app.ws.send('{"type":"nope"}');
const e = JSON.parse(await app.next());
if (e.type !== 'error' || e.code !== 'UNKNOWN_MESSAGE_TYPE') fail(`error ${JSON.stringify(e)}`);
console.log(`ok ${impl}: JSON protocol echo, subscribe, publish and errors on /ws (subprotocol ${app.ws.protocol})`);

const closed = echo.closed();
echo.ws.close(4000, 'done');
const ev = await closed;
if (ev.code !== 4000 || !ev.wasClean) fail(`close: code ${ev.code} clean ${ev.wasClean}`);
console.log(`ok ${impl}: clean close with code ${ev.code}`);
app.ws.close();
peer.ws.close();
