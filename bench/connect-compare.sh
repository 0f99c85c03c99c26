#!/usr/bin/env bash
# Handshakes per server CPU-second, wsd against the baseline (bin/gnetecho),
# with `wsbench connect`: a storm of N handshakes onto servers that already
# hold HELD idle connections (HELD=0: a plain storm).
#
#   bench/connect-compare.sh                 # 15,000 held, 10,000 handshakes, 3 runs each
#   HELD=0 bench/connect-compare.sh          # the plain 10,000-handshake storm
#
# One process may open at most 20,000 files here, so each server runs as two
# processes sharing the port (SO_REUSEPORT, one event loop each: two loops
# for two CPUs), as in bench/README.md's storm figures; their CPU times are
# summed; the servers take turns, run by run. wsd serves its plain echo endpoint (--echo-path /echo), anonymous,
# with --ping-interval PING (default 10m: the baseline pings nothing, so no
# heartbeat falls inside the measurement). Servers are started afresh for
# every run and stopped by PID; every run dials from addresses of its own.
#
# Environment: RUNS=3 HELD=15000 N=10000 SERVERS="wsd gnetecho" PING=10m
#              NET=40 (runs use 127.NET.x.x, 127.NET+1.x.x, …) OUT=DIR
#              WSD_FLAGS="..." (more wsd flags) CONCURRENCY=64
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-3}
HELD=${HELD:-15000}
N=${N:-10000}
SERVERS=${SERVERS:-wsd gnetecho}
PING=${PING:-10m}
NET=${NET:-40}
CONCURRENCY=${CONCURRENCY:-64}
OUT=${OUT:-$(mktemp -d /tmp/wsbench-connect-compare.XXXXXX)}
PORT=18190
mkdir -p "$OUT"

make -s build >/dev/null

pids=()
stop_servers() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
trap stop_servers EXIT

start_servers() {
	for i in 0 1; do
		case "$1" in
		wsd) bin/wsd --listen 127.0.0.1:$PORT --reuse-port --loops 1 --admin 127.0.0.1:$((19290 + i)) \
			--echo-path /echo --ping-interval "$PING" --log-level warn ${WSD_FLAGS:-} >"$OUT/$1.$i.log" 2>&1 & ;;
		gnetecho) bin/gnetecho -addr 127.0.0.1:$PORT -loops 1 -reuse-port >"$OUT/$1.$i.log" 2>&1 & ;;
		*) echo "unknown server $1" >&2; exit 2 ;;
		esac
		pids+=($!)
	done
	for _ in $(seq 50); do
		[ "$(grep -c ":$(printf %04X $PORT) 00000000:0000 0A" /proc/net/tcp)" -ge 2 ] && return
		sleep 0.1
	done
	echo "servers did not start; see $OUT" >&2
	exit 1
}

run=0
for r in $(seq "$RUNS"); do # the servers take turns, so that a change in the host's load falls on both
	for s in $SERVERS; do
		net=$((NET + run))
		run=$((run + 1))
		start_servers "$s"
		sleep 1
		bin/wsbench connect -url ws://127.0.0.1:$PORT/echo -n "$N" -concurrency "$CONCURRENCY" \
			-held "$HELD" -held-source 127.$net.1.2 -source 127.$net.0.2 \
			-json "$OUT/$s.$r.json" 2>/dev/null | tee "$OUT/$s.$r.txt" | tail -n +3
		stop_servers
		sleep 2
	done
done

echo
echo "held $HELD, storm $N, $RUNS runs each; results in $OUT"
printf '%-10s %28s %28s %14s\n' server "per server CPU-s (median)" "all runs" "handshakes/s"
for s in $SERVERS; do
	vals=$(for r in $(seq "$RUNS"); do jq '.rounds[0].handshakes_per_server_cpu_second | round' "$OUT/$s.$r.json"; done | sort -n)
	rates=$(for r in $(seq "$RUNS"); do jq '.rounds[0].handshakes_per_second | round' "$OUT/$s.$r.json"; done | sort -n)
	med=$(echo "$vals" | sed -n "$(((RUNS + 1) / 2))p")
	printf '%-10s %28s %28s %14s\n' "$s" "$med" "$(echo $vals)" "$(echo "$rates" | sed -n "$(((RUNS + 1) / 2))p")"
done
