// The admin page's reading of /metrics (adminui/metrics.js), without a browser.
import assert from "node:assert/strict";
import { test } from "node:test";

import { human, labelled, parseMetrics, Rates } from "../adminui/metrics.js";

const scrape = (out, bytesOut, conns) => `# HELP wsd_connections_open Connections open.
# TYPE wsd_connections_open gauge
wsd_connections_open ${conns}
wsd_messages_out_total ${out}
wsd_bytes_out_total ${bytesOut}
wsd_loop_connections{loop="0"} 3
wsd_loop_connections{loop="1"} 4
wsd_connections_closed_by_reason_total{reason="peer"} 9
go_gc_duration_seconds{quantile="0.5"} 1.5e-05
`;

test("parseMetrics reads samples with and without labels, skips comments", () => {
  const m = parseMetrics(scrape(10, 100, 7));
  assert.equal(m.get("wsd_connections_open"), 7);
  assert.equal(m.get('wsd_loop_connections{loop="1"}'), 4);
  assert.equal(m.get('go_gc_duration_seconds{quantile="0.5"}'), 1.5e-5);
  assert.equal(m.has("# HELP wsd_connections_open Connections open."), false);
  assert.deepEqual(labelled(m, "wsd_loop_connections", "loop"), [["0", 3], ["1", 4]]);
});

test("Rates: per-second rates from counters, a reset counter is not negative", () => {
  const r = new Rates(["wsd_messages_out_total", "wsd_bytes_out_total"], 3);
  assert.deepEqual(r.add(parseMetrics(scrape(10, 100, 1)), 0), {});
  assert.deepEqual(r.add(parseMetrics(scrape(30, 1100, 1)), 2000), { wsd_messages_out_total: 10, wsd_bytes_out_total: 500 });
  assert.deepEqual(r.add(parseMetrics(scrape(5, 50, 1)), 3000), { wsd_messages_out_total: 0, wsd_bytes_out_total: 0 });
  r.add(parseMetrics(scrape(15, 50, 1)), 4000);
  r.add(parseMetrics(scrape(25, 50, 1)), 5000);
  assert.deepEqual(r.history.wsd_messages_out_total, [0, 10, 10]); // the last 3 kept
});

test("human", () => {
  assert.equal(human(0), "0");
  assert.equal(human(12.34), "12.3");
  assert.equal(human(1500, "B"), "1.5 kB");
  assert.equal(human(25_000_000), "25 M");
});
