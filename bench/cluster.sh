#!/usr/bin/env bash
# Fan-out across nodes next to one node and Centrifugo, in turns:
#   nodes: bin/wsbench broadcast -nodes 2 (two wsd nodes and a redis-server of
#          its own; the server CPU is both nodes' and Redis's)
#   wsd:   one bin/wsd, memory broker
#   cf:    bin/centrifugo v6.9.1 (bench/centrifugo/run.sh builds it)
# Each on SUBS subscribers (10,000), COUNT publications (200) at RATE per
# second (20); RUNS runs (3). Needs redis-server, jq, bin/ built (make build).
#   bench/cluster.sh                      # saturated
#   COUNT=40 RATE=2 bench/cluster.sh      # the latency scenario
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3} COUNT=${COUNT:-200} RATE=${RATE:-20} SUBS=${SUBS:-10000}
OUT=${OUT:-$(mktemp -d /tmp/wsbench-cluster.XXXXXX)}
TARGETS=${TARGETS:-nodes wsd cf}
[ -x bin/centrifugo ] || case " $TARGETS " in *" cf "*) echo "bin/centrifugo missing: run bench/centrifugo/run.sh once, or TARGETS=\"nodes wsd\"" >&2; exit 2 ;; esac
pid=
stop() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi; }
trap stop EXIT
flags=(-subs "$SUBS" -count "$COUNT" -rate "$RATE")
for r in $(seq "$RUNS"); do
	for t in $TARGETS; do
		case $t in
		nodes) bin/wsbench broadcast -nodes 2 "${flags[@]}" -source 127.60.0.2 -json "$OUT/$t.$r.json" >"$OUT/$t.$r.txt" 2>"$OUT/$t.$r.err" || echo "$t run $r failed: see $OUT/$t.$r.*" >&2 ;;
		wsd)
			bin/wsd --api-key KEY --log-level warn >"$OUT/wsd.$r.log" 2>&1 &
			pid=$!
			sleep 1
			bin/wsbench broadcast -target wsd -api-key KEY "${flags[@]}" -source 127.61.0.2 -json "$OUT/$t.$r.json" >"$OUT/$t.$r.txt" 2>"$OUT/$t.$r.err" || echo "$t run $r failed: see $OUT/$t.$r.*" >&2
			stop ;;
		cf)
			bin/centrifugo -c bench/centrifugo/config.json >"$OUT/cf.$r.log" 2>&1 &
			pid=$!
			sleep 2
			bin/wsbench broadcast -target centrifugo -api-key bench-api-key "${flags[@]}" -source 127.62.0.2 -json "$OUT/$t.$r.json" >"$OUT/$t.$r.txt" 2>"$OUT/$t.$r.err" || echo "$t run $r failed: see $OUT/$t.$r.*" >&2
			stop ;;
		*) echo "unknown target $t" >&2; exit 2 ;;
		esac
		sleep 2
	done
done
echo "$SUBS subscribers, $COUNT publications at $RATE/s, $RUNS runs each; results in $OUT"
for t in $TARGETS; do
	for r in $(seq "$RUNS"); do
		[ -f "$OUT/$t.$r.json" ] || continue
		jq -r --arg t "$t" '"\($t)\t\(.deliveries_per_server_cpu_second|round) per server CPU-s (broker \(.broker_cpu_seconds*100|round/100) s of \(.server_cpu_seconds*100|round/100) s)\tlast delivery p50 \(.latency_ms.publish_to_last_delivery_p50*10|round/10) ms p99 \(.latency_ms.publish_to_last_delivery_p99*10|round/10) ms\t\(.deliveries_per_second|round)/s, cross-node \(.deliveries_cross_node_per_second|round)/s\tcomplete \(.every_subscriber_got_every_publication_once_in_order)"' "$OUT/$t.$r.json"
	done
done
