// Reading wsd's /metrics (Prometheus text) for the admin page: kept apart
// from the page so that it can be tested without a browser.

/**
 * parseMetrics returns the samples of a Prometheus text exposition as a
 * Map from the series (name with its labels, as written) to its value.
 */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    // The value follows the last space outside the labels' braces.
    const close = line.lastIndexOf("}");
    const space = line.indexOf(" ", close < 0 ? 0 : close);
    if (space < 0) continue;
    const series = line.slice(0, space);
    const value = Number(line.slice(space + 1).trim().split(" ")[0]);
    if (!Number.isNaN(value)) out.set(series, value);
  }
  return out;
}

/** labelled returns the samples of one metric by the value of one label. */
export function labelled(samples, name, label) {
  const out = [];
  const prefix = `${name}{`;
  const re = new RegExp(`${label}="([^"]*)"`);
  for (const [series, value] of samples) {
    if (!series.startsWith(prefix)) continue;
    const m = re.exec(series);
    if (m) out.push([m[1], value]);
  }
  return out;
}

/**
 * Rates turns counters read at successive times into per-second rates,
 * keeping the last `keep` of each for the chart. A counter that went down
 * (a restarted server) starts again from its new value.
 */
export class Rates {
  constructor(names, keep = 120) {
    this.names = names;
    this.keep = keep;
    this.last = null;
    this.history = Object.fromEntries(names.map((n) => [n, []]));
  }

  add(samples, atMs) {
    const now = Object.fromEntries(this.names.map((n) => [n, samples.get(n) ?? 0]));
    const rates = {};
    if (this.last) {
      const dt = (atMs - this.last.at) / 1000;
      for (const n of this.names) {
        const d = now[n] - this.last.values[n];
        rates[n] = dt > 0 && d >= 0 ? d / dt : 0;
        const h = this.history[n];
        h.push(rates[n]);
        if (h.length > this.keep) h.shift();
      }
    }
    this.last = { at: atMs, values: now };
    return rates;
  }
}

/** human writes a number with k/M/G, for rates and bytes. */
export function human(n, unit = "") {
  const abs = Math.abs(n);
  for (const [f, s] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (abs >= f) return `${(n / f).toFixed(abs >= 10 * f ? 0 : 1)} ${s}${unit}`;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${unit}`.trim();
}
