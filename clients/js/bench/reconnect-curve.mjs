// The reconnect curve: N clients of this library (default 1,000) are
// connected to a wsd that is then drained (SIGTERM: 1001 with a
// retry-after hint from 1 s to --retry-after-max) and restarted on the same
// port with --max-handshakes-per-sec. It records when each client is back,
// samples the new process's /metrics (handshakes, paced refusals) every
// 100 ms, and writes results/reconnect-curve.csv and .svg.
//   node --experimental-websocket bench/reconnect-curve.mjs [clients] [pace]
// Needs bin/wsd (make build). Loopback only; wsd is stopped by PID.
import { mkdirSync, writeFileSync } from "node:fs";

import { Client } from "../dist/index.js";
import { startWsd } from "../test/wsd.mjs";

const N = Number(process.argv[2] ?? 1000);
const PACE = Number(process.argv[3] ?? 100);
const RETRY_MAX = 5;
const backoff = { min: 500, max: 10000, factor: 2 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const base = ["--retry-after-max", `${RETRY_MAX}s`, "--drain-timeout", "5s", "--loops", "2"];

let wsd = await startWsd({ args: base });
const clients = [];
const back = new Array(N).fill(null); // ms after the drain when each was connected again
const refusals = new Array(N).fill(0); // failed attempts after the drain
let t0 = 0;
for (let i = 0; i < N; i++) {
  const c = new Client(wsd.url, { backoff });
  c.on("connected", () => {
    if (t0 && back[i] === null) back[i] = Date.now() - t0;
  });
  c.on("disconnected", (e) => {
    if (t0 && back[i] === null && e.code !== 1001) refusals[i]++;
  });
  c.subscribe("storm");
  c.connect();
  clients.push(c);
}
while (clients.some((c) => c.state !== "connected")) await sleep(100);
console.log(`${N} clients connected; draining`);

t0 = Date.now();
const stopped = wsd.stop();
await stopped;
const down = Date.now() - t0;
wsd = await startWsd({ args: [...base, "--max-handshakes-per-sec", String(PACE)], port: wsd.port });
const up = Date.now() - t0;
console.log(`old process gone after ${down} ms, new one ready after ${up} ms (pace ${PACE}/s)`);

const samples = []; // [ms after the drain, handshakes, paced refusals]
const metric = (text, re) => Number(re.exec(text)?.[1] ?? 0);
while (back.some((t) => t === null) && Date.now() - t0 < 90000) {
  const text = await (await fetch(`${wsd.adminURL}/metrics`)).text();
  samples.push([
    Date.now() - t0,
    metric(text, /^wsd_handshakes_total (\d+)$/m),
    metric(text, /^wsd_admission_rejected_total\{reason="paced"\} (\d+)$/m),
  ]);
  await sleep(100);
}
const last = await (await fetch(`${wsd.adminURL}/metrics`)).text();
samples.push([Date.now() - t0, metric(last, /^wsd_handshakes_total (\d+)$/m), metric(last, /^wsd_admission_rejected_total\{reason="paced"\} (\d+)$/m)]);
for (const c of clients) c.disconnect();
await wsd.stop();

// Clients back per 250 ms, and the server's handshakes per second over
// each 1 s window (from the samples).
const bin = 250;
const span = Math.max(...back.filter((t) => t !== null), samples.at(-1)[0]);
const bins = Array.from({ length: Math.ceil(span / bin) + 1 }, () => 0);
for (const t of back) if (t !== null) bins[Math.floor(t / bin)]++;
let maxRate = 0;
const rates = [];
for (const [t, h] of samples) {
  const earlier = samples.filter(([u]) => u <= t - 1000).at(-1);
  if (!earlier) continue;
  const r = ((h - earlier[1]) * 1000) / (t - earlier[0]);
  rates.push([t, r]);
  maxRate = Math.max(maxRate, r);
}
const missing = back.filter((t) => t === null).length;
const sorted = back.filter((t) => t !== null).sort((a, b) => a - b);
const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const summary = {
  clients: N,
  pace_per_sec: PACE,
  retry_after_max_s: RETRY_MAX,
  backoff,
  old_process_gone_ms: down,
  new_process_ready_ms: up,
  not_back: missing,
  back_ms: { first: sorted[0], p50: pct(50), p90: pct(90), p99: pct(99), last: sorted.at(-1) },
  max_handshakes_per_sec_1s_window: Math.round(maxRate),
  paced_refusals: samples.at(-1)[2],
  failed_attempts: refusals.reduce((a, b) => a + b, 0),
};
console.log(JSON.stringify(summary, null, 2));

const dir = new URL("results/", import.meta.url);
mkdirSync(dir, { recursive: true });
writeFileSync(
  new URL("reconnect-curve.csv", dir),
  "ms_after_drain,clients_back_in_bin,handshakes_per_sec\n" +
    bins.map((n, i) => `${i * bin},${n},${(rates.find(([t]) => t >= i * bin)?.[1] ?? 0).toFixed(0)}`).join("\n") +
    "\n",
);

// The plot: bars of clients back per 250 ms, the cumulative share, the
// server's handshakes per second and the pace.
const W = 900, H = 440, L = 60, R = 60, T = 50, B = 50;
const x = (ms) => L + (ms / span) * (W - L - R);
const maxBin = Math.max(...bins, 1);
const yRate = Math.max(maxRate, PACE) * 1.15;
const yb = (n) => H - B - (n / maxBin) * (H - T - B) * 0.9;
const yr = (r) => H - B - (r / yRate) * (H - T - B);
const svg = [];
svg.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`);
svg.push(`<rect width="${W}" height="${H}" fill="white"/>`);
svg.push(`<text x="${L}" y="16" font-size="14">${N} clients after a drain and restart (wsd --max-handshakes-per-sec ${PACE}, --retry-after-max ${RETRY_MAX}s)</text>`);
svg.push(`<text x="${L}" y="32" fill="#555">bars: clients back per 250 ms; blue line: share back; orange: server handshakes/s over 1 s; dashed: the pace</text>`);
bins.forEach((n, i) => {
  if (n) svg.push(`<rect x="${x(i * bin).toFixed(1)}" y="${yb(n).toFixed(1)}" width="${Math.max(1, x(bin) - L - 1).toFixed(1)}" height="${(H - B - yb(n)).toFixed(1)}" fill="#90b4e0"/>`);
});
let cum = 0;
const cumPts = bins.map((n, i) => ((cum += n), `${x((i + 1) * bin).toFixed(1)},${(H - B - (cum / N) * (H - T - B)).toFixed(1)}`));
svg.push(`<polyline fill="none" stroke="#1d4f91" stroke-width="2" points="${x(0)},${H - B} ${cumPts.join(" ")}"/>`);
svg.push(`<polyline fill="none" stroke="#d26a1c" stroke-width="2" points="${rates.map(([t, r]) => `${x(t).toFixed(1)},${yr(r).toFixed(1)}`).join(" ")}"/>`);
svg.push(`<line x1="${L}" x2="${W - R}" y1="${yr(PACE)}" y2="${yr(PACE)}" stroke="#d26a1c" stroke-dasharray="6 4"/>`);
svg.push(`<line x1="${x(up)}" x2="${x(up)}" y1="${T}" y2="${H - B}" stroke="#888" stroke-dasharray="2 3"/><text x="${x(up) + 4}" y="${T + 12}" fill="#555">new process ready</text>`);
svg.push(`<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#333"/><line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#333"/>`);
for (let s = 0; s <= span / 1000; s += Math.ceil(span / 10000)) svg.push(`<text x="${x(s * 1000)}" y="${H - B + 16}" text-anchor="middle">${s}</text>`);
svg.push(`<text x="${(W - R + L) / 2}" y="${H - 12}" text-anchor="middle">seconds after SIGTERM</text>`);
svg.push(`<text x="${L - 8}" y="${T + 4}" text-anchor="end">${maxBin}</text><text x="${L - 8}" y="${H - B}" text-anchor="end">0</text>`);
for (const r of [0, PACE, Math.round(yRate / 1.15)]) svg.push(`<text x="${W - R + 6}" y="${yr(r) + 4}" fill="#d26a1c">${r}/s</text>`);
svg.push(`<text x="${W - R - 4}" y="${T + 14}" text-anchor="end" fill="#1d4f91">100% back</text>`);
svg.push("</svg>");
writeFileSync(new URL("reconnect-curve.svg", dir), svg.join("\n"));
writeFileSync(new URL("reconnect-curve.json", dir), JSON.stringify(summary, null, 2) + "\n");
