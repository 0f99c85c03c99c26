#!/usr/bin/env bash
# wsd against the baseline (bin/gnetecho), per server CPU-second.
#
#   bench/compare.sh              # connect: a storm of N=10,000 handshakes onto servers
#                                 # already holding HELD=15,000 idle connections, 3 runs each
#   HELD=0 bench/compare.sh       # the plain 10,000-handshake storm
#   MODE=echo bench/compare.sh    # echo: N=1,000 connections, SIZE=64-byte messages,
#                                 # WINDOW=1 in flight each, for DURATION=10s
#
# One process may open at most 20,000 files here, so each server runs as two
# processes sharing the port (SO_REUSEPORT, one event loop each: two loops
# for two CPUs), as in bench/README.md's storm figures; their CPU times are
# summed; the servers take turns, run by run. wsd serves its plain echo
# endpoint (--echo-path /echo), anonymous, without the per-connection rate
# limits (--max-messages-per-sec 0 --max-inbound-bytes-per-sec 0: the
# baseline has none) and with --ping-interval PING (default 10m: the
# baseline pings nothing, so no heartbeat falls inside the measurement). Servers are started afresh for
# every run and stopped by PID; every run dials from addresses of its own.
#
# SERVERS may also name another wsd binary as wsd@PATH (a build to compare).
# Environment: MODE=connect|echo RUNS=3 HELD=15000 N=10000 (echo: 1000) SERVERS="wsd gnetecho" PING=10m
#              SIZE=64 WINDOW=1 DURATION=10s (echo)
#              NET=40 (runs use 127.NET.x.x, 127.NET+1.x.x, …) OUT=DIR
#              WSD_FLAGS="..." (more wsd flags) CONCURRENCY=64
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=${MODE:-connect}
RUNS=${RUNS:-3}
HELD=${HELD:-15000}
SIZE=${SIZE:-64}
WINDOW=${WINDOW:-1}
DURATION=${DURATION:-10s}
case "$MODE" in
connect) N=${N:-10000} ;;
echo) N=${N:-1000} ;;
*) echo "MODE must be connect or echo" >&2; exit 2 ;;
esac
SERVERS=${SERVERS:-wsd gnetecho}
PING=${PING:-10m}
NET=${NET:-40}
CONCURRENCY=${CONCURRENCY:-64}
OUT=${OUT:-$(mktemp -d /tmp/wsbench-compare-$MODE.XXXXXX)}
PORT=18190
mkdir -p "$OUT"

make -s build >/dev/null

# label names a server's files: "wsd@/tmp/old/wsd" (another wsd binary, to
# compare builds) becomes "wsd@_tmp_old_wsd".
label() { echo "${1//\//_}"; }

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
		wsd | wsd@*)
			bin=${1#wsd@}
			[ "$bin" = wsd ] && bin=bin/wsd
			"$bin" --listen 127.0.0.1:$PORT --reuse-port --loops 1 --admin 127.0.0.1:$((19290 + i)) \
				--echo-path /echo --max-messages-per-sec 0 --max-inbound-bytes-per-sec 0 --ping-interval "$PING" --log-level warn ${WSD_FLAGS:-} >"$OUT/$(label "$1").$i.log" 2>&1 &
			;;
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
		if [ "$MODE" = connect ]; then
			bin/wsbench connect -url ws://127.0.0.1:$PORT/echo -n "$N" -concurrency "$CONCURRENCY" \
				-held "$HELD" -held-source 127.$net.1.2 -source 127.$net.0.2 \
				-json "$OUT/$(label "$s").$r.json" 2>/dev/null | tee "$OUT/$(label "$s").$r.txt" | tail -n +3
		else
			bin/wsbench echo -url ws://127.0.0.1:$PORT/echo -n "$N" -size "$SIZE" -window "$WINDOW" \
				-duration "$DURATION" -source 127.$net.0.2 -json "$OUT/$(label "$s").$r.json" 2>/dev/null | tee "$OUT/$(label "$s").$r.txt" | tail -n +3
		fi
		stop_servers
		sleep 2
	done
done

echo
if [ "$MODE" = connect ]; then
	echo "held $HELD, storm $N, $RUNS runs each; results in $OUT"
	keys=(".rounds[0].handshakes_per_server_cpu_second|round" ".rounds[0].handshakes_per_second|round" ".rounds[0].latency_p50_ms*10|round/10" ".rounds[0].latency_p99_ms*10|round/10")
	names=("per server CPU-s" "handshakes/s" "p50 ms" "p99 ms")
else
	echo "echo: $N connections, $SIZE B, window $WINDOW, $DURATION; $RUNS runs each; results in $OUT"
	keys=(".messages_per_server_cpu_second|round" ".messages_per_second|round" ".rtt_p50_us|round" ".rtt_p99_us|round" ".rtt_p999_us|round")
	names=("per server CPU-s" "messages/s" "RTT p50 us" "RTT p99 us" "RTT p999 us")
fi
median() { sort -n | sed -n "$(((RUNS + 1) / 2))p"; }
printf '%-10s' server
for n in "${names[@]}"; do printf ' %18s' "$n"; done
printf '   %s\n' "(medians; then every run's ${names[0]})"
for s in $SERVERS; do
	printf '%-10s' "$s"
	for k in "${keys[@]}"; do
		printf ' %18s' "$(for r in $(seq "$RUNS"); do jq "$k" "$OUT/$(label "$s").$r.json"; done | median)"
	done
	printf '   %s\n' "$(for r in $(seq "$RUNS"); do jq "${keys[0]}" "$OUT/$(label "$s").$r.json"; done | sort -n | tr '\n' ' ')"
done
