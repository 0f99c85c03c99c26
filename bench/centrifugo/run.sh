#!/usr/bin/env bash
# Fan-out benchmark of Centrifugo v6.9.1 (or wsd) with `wsbench broadcast`.
#
#   bench/centrifugo/run.sh [saturation|latency|all]      (default: all)
#
# For each scenario and each of RUNS runs (default 3) it starts the server
# afresh on loopback, waits for the host to be quiet, runs wsbench
# broadcast, stops the server by its PID, and finally prints the median and
# range of the runs. Results (JSON and the tables) go to OUT (default: a
# new directory under /tmp).
#
#   saturation: 10,000 subscribers, 200 publications of 100 B at 20/s
#   latency:    10,000 subscribers,  40 publications of 100 B at 2/s
#
# Environment:
#   TARGET=centrifugo|wsd   the server (default centrifugo; wsd is built from
#                           this tree and started with --allow-anonymous --api-key)
#   RUNS=3  SUBS=10000  OUT=DIR  QUIET_WAIT=120 (seconds to wait for a quiet host)
#   CONFIG=FILE             Centrifugo's configuration (default bench/centrifugo/config.json)
#   EXTRA="..."             more wsbench broadcast flags
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TARGET=${TARGET:-centrifugo}
RUNS=${RUNS:-3}
SUBS=${SUBS:-10000}
QUIET_WAIT=${QUIET_WAIT:-120}
OUT=${OUT:-$(mktemp -d /tmp/wsbench-broadcast-$TARGET.XXXXXX)}
KEY=bench-api-key
CENTRIFUGO_VERSION=v6.9.1
mkdir -p "$OUT"

case "${1:-all}" in
saturation | latency) SCENARIOS=$1 ;;
all) SCENARIOS="saturation latency" ;;
*)
	echo "usage: $0 [saturation|latency|all]" >&2
	exit 2
	;;
esac

go build -o bin/wsbench ./bench/cmd/wsbench
case "$TARGET" in
centrifugo)
	if ! go version -m bin/centrifugo 2>/dev/null | grep -q "centrifugo/v6[[:space:]]*$CENTRIFUGO_VERSION"; then
		echo "building Centrifugo $CENTRIFUGO_VERSION into bin/ (a few minutes)" >&2
		GOBIN="$ROOT/bin" go install "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"
	fi
	SERVER=(bin/centrifugo -c "${CONFIG:-bench/centrifugo/config.json}")
	PORT=8000
	;;
wsd)
	go build -o bin/wsd ./cmd/wsd
	SERVER=(bin/wsd --listen 127.0.0.1:8080 --allow-anonymous --api-key "$KEY")
	PORT=8080
	;;
*)
	echo "TARGET must be centrifugo or wsd" >&2
	exit 2
	;;
esac

SERVER_PID=
stop_server() {
	if [[ -n $SERVER_PID ]]; then
		kill "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=
	fi
}
trap stop_server EXIT

start_server() {
	local log=$1
	if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
		echo "something already listens on 127.0.0.1:$PORT: stop it first" >&2
		exit 1
	fi
	"${SERVER[@]}" >"$log" 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
			return 0
		fi
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	echo "the server did not start; its log:" >&2
	cat "$log" >&2
	exit 1
}

# wait_quiet waits (at most QUIET_WAIT seconds) until the host's CPUs are
# less than 10% busy over a second: other work on the host disturbs the
# figures (each result also reports the CPU other processes used).
wait_quiet() {
	local deadline=$((SECONDS + QUIET_WAIT)) a b busy
	while :; do
		read -ra a </proc/stat
		sleep 1
		read -ra b </proc/stat
		local ta=0 tb=0 ia=$((a[4] + a[5])) ib=$((b[4] + b[5]))
		for v in "${a[@]:1:8}"; do ta=$((ta + v)); done
		for v in "${b[@]:1:8}"; do tb=$((tb + v)); done
		busy=$((100 * ((tb - ta) - (ib - ia)) / (tb - ta > 0 ? tb - ta : 1)))
		((busy < 10)) && return 0
		if ((SECONDS >= deadline)); then
			echo "note: the host is still $busy% busy; measuring anyway" >&2
			return 0
		fi
	done
}

declare -A FLAGS=(
	[saturation]="-count 200 -rate 20 -size 100"
	[latency]="-count 40 -rate 2 -size 100"
)
failed=0
for sc in $SCENARIOS; do
	for run in $(seq "$RUNS"); do
		start_server "$OUT/$TARGET-$sc-$run.server.log"
		wait_quiet
		echo "== $TARGET $sc run $run/$RUNS (server pid $SERVER_PID)" >&2
		# shellcheck disable=SC2086
		if ! bin/wsbench broadcast -target "$TARGET" -api-key "$KEY" -server-pid "$SERVER_PID" \
			-subs "$SUBS" ${FLAGS[$sc]} ${EXTRA:-} -json "$OUT/$TARGET-$sc-$run.json" | tee "$OUT/$TARGET-$sc-$run.txt"; then
			failed=1
		fi
		stop_server
	done
done
for sc in $SCENARIOS; do
	echo
	echo "== $sc"
	bin/wsbench broadcast-summary "$OUT/$TARGET-$sc-"*.json | tee "$OUT/$TARGET-$sc-summary.txt"
done
echo
echo "results in $OUT"
exit $failed
