#!/usr/bin/env bash
# bench/run-1m.sh: hold N idle WebSocket connections (default 1,000,000) on
# this host for HOLD, check that every one answers a ping at the end, and
# report what they cost: server user space and kernel bytes per
# connection, the ramp, and a plot.
#
# Layout: K wsd processes share one port (--reuse-port; `wsbench
# servers`), each holding about PER_SERVER connections, so no process needs
# more file descriptors than a default-tuned host gives it; the clients are
# ceil(N / PER_CLIENT) event-driven processes, process i dialing from
# SOURCE + i (127.0.0.2, .3, …: one ephemeral port range each).
#
#   bench/run-1m.sh                    # N=1000000; checks the host first with `wsd doctor`
#   TUNE=1 bench/run-1m.sh             # as root: apply sysctl/99-wsd.conf first (sysctl/apply --apply)
#   N=100000 HOLD=30s bench/run-1m.sh  # smaller
#
# Settings (environment): N, PER_SERVER (17000), PER_CLIENT (18000), K
# (ceil(N/PER_SERVER)), LISTEN (127.0.0.1:8080), ADMIN_BASE (9100: process
# i's admin port is ADMIN_BASE+i), SOURCE (127.0.0.2), HOLD (60s), LOOPS
# (event loops per wsd process, 1), OUT (bench/out/1m-DATE), TUNE (0),
# FORCE (1: run even when the doctor says the host is not ready), NETNS
# (auto), PING_INTERVAL (2m), WSD_ARGS (more wsd flags).
#
# PING_INTERVAL: wsd pings a connection after this long without traffic
# (its default is 30 s). A million connections at 30 s are 33,000 ping
# round trips a second; on this 2-core test host, which also runs the
# million clients, that took both cores and the ramp collapsed to 400
# connections a second at 890,000 (measured; see the README). 2 minutes
# is 8,300 a second. On a host with more cores, or clients elsewhere, set
# PING_INTERVAL=30s.
#
# NETNS: every packet of a connection is looked up in the kernel's
# established-connection hash, which the kernel sizes at boot from memory
# (262,144 buckets on a 24 GiB host: chains of 8 at 2M sockets, and 17% of
# the CPU in the lookup). On a host you can reboot, boot with
# thash_entries=2097152. Without a reboot, a network namespace created
# after `sysctl net.ipv4.tcp_child_ehash_entries=N` gets a table of its own
# of N buckets (Linux 6.1+): NETNS=1 runs the servers and clients in such a
# namespace (loopback up, sysctl/ applied inside it too), NETNS=0 never,
# NETNS=auto (the default) when root, the kernel can, and the host's table
# has fewer buckets than half the sockets.
#
# Everything it starts is stopped by PID when it ends (the wsd processes
# also die with their supervisor); the run is bounded by wsbench idle's
# -timeout (2 min + 1 s per 2,000 connections).
set -euo pipefail

self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/.."
N=${N:-1000000}
PER_SERVER=${PER_SERVER:-17000}
PER_CLIENT=${PER_CLIENT:-18000}
K=${K:-$(((N + PER_SERVER - 1) / PER_SERVER))}
LISTEN=${LISTEN:-127.0.0.1:8080}
ADMIN_BASE=${ADMIN_BASE:-9100}
SOURCE=${SOURCE:-127.0.0.2}
HOLD=${HOLD:-60s}
LOOPS=${LOOPS:-1}
TUNE=${TUNE:-0}
FORCE=${FORCE:-0}
PING_INTERVAL=${PING_INTERVAL:-2m}
WSD_ARGS=${WSD_ARGS:-}
OUT=${OUT:-bench/out/1m-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

echo "== build"
make -s build

if [ "$TUNE" = 1 ] && [ -z "${WSD_RUN_1M_IN_NETNS:-}" ]; then
	echo "== tune the host: sysctl/apply --apply (sysctl/apply --revert undoes it)"
	sysctl/apply --apply | tee "$OUT/sysctl-apply.txt"
fi

sockets=$((2 * N))
buckets=$(cat /proc/sys/net/ipv4/tcp_ehash_entries 2>/dev/null || echo 0)
buckets=${buckets#-}
NETNS=${NETNS:-auto}
if [ "$NETNS" = auto ]; then
	NETNS=0
	if [ "$(id -u)" = 0 ] && [ -w /proc/sys/net/ipv4/tcp_child_ehash_entries ] && [ "$buckets" -lt $((sockets / 2)) ]; then
		NETNS=1
	fi
fi
if [ "$NETNS" = 1 ] && [ -z "${WSD_RUN_1M_IN_NETNS:-}" ]; then
	want=1
	while [ "$want" -lt "$sockets" ] && [ "$want" -lt $((1 << 24)) ]; do want=$((want * 2)); done
	ns=wsd1m-$$
	old_child=$(cat /proc/sys/net/ipv4/tcp_child_ehash_entries)
	echo "== network namespace $ns with an established-connection hash of $want buckets (the host's: $buckets)"
	sysctl -qw net.ipv4.tcp_child_ehash_entries="$want"
	ip netns add "$ns"
	sysctl -qw net.ipv4.tcp_child_ehash_entries="$old_child"
	# shellcheck disable=SC2317 # run by the trap
	cleanup_ns() { ip netns del "$ns" 2>/dev/null || true; }
	trap cleanup_ns EXIT
	ip netns exec "$ns" ip link set lo up
	# The net.* keys are the namespace's own; fs.* are the host's (TUNE=1 set them).
	if [ "$TUNE" = 1 ]; then
		echo "== tune the namespace: sysctl/apply --apply inside it"
		ip netns exec "$ns" env WSD_SYSCTL_STATE="$OUT/sysctl-netns.before" sysctl/apply --apply >"$OUT/sysctl-netns.txt"
	fi
	status=0
	ip netns exec "$ns" env WSD_RUN_1M_IN_NETNS=1 NETNS=0 TUNE=0 N="$N" K="$K" PER_SERVER="$PER_SERVER" PER_CLIENT="$PER_CLIENT" \
		LISTEN="$LISTEN" ADMIN_BASE="$ADMIN_BASE" SOURCE="$SOURCE" HOLD="$HOLD" LOOPS="$LOOPS" FORCE="$FORCE" OUT="$OUT" \
		PING_INTERVAL="$PING_INTERVAL" WSD_ARGS="$WSD_ARGS" \
		bash "$self" || status=$?
	exit "$status"
fi

echo "== check the host: wsd doctor --conns $N --procs $K --local-clients"
if ! bin/wsd doctor --conns "$N" --procs "$K" --local-clients | tee "$OUT/doctor.txt"; then
	if [ "$FORCE" != 1 ]; then
		echo "run-1m: the host is not ready for $N connections (see above; TUNE=1 applies sysctl/, FORCE=1 runs anyway)" >&2
		exit 1
	fi
	echo "run-1m: FORCE=1: running anyway"
fi

admins=""
for ((i = 0; i < K; i++)); do
	admins+="${admins:+,}http://127.0.0.1:$((ADMIN_BASE + i))"
done

echo "== start $K wsd processes on $LISTEN (logs in $OUT/servers)"
# WSD_ARGS is split into words on purpose: several flags.
bin/wsbench servers -k "$K" -listen "$LISTEN" -admin-base "$ADMIN_BASE" -aggregate "" -logs "$OUT/servers" \
	-- --loops "$LOOPS" --pprof --log-level warn --ping-interval "$PING_INTERVAL" ${WSD_ARGS:+$WSD_ARGS} >"$OUT/servers.txt" 2>&1 &
servers=$!
stop_servers() {
	if kill -0 "$servers" 2>/dev/null; then
		kill -TERM "$servers" 2>/dev/null || true
		wait "$servers" 2>/dev/null || true
	fi
}
trap stop_servers EXIT
for ((t = 0; t < 600; t++)); do
	grep -q '^ready:' "$OUT/servers.txt" && break
	if ! kill -0 "$servers" 2>/dev/null; then
		cat "$OUT/servers.txt" >&2
		exit 1
	fi
	sleep 0.2
done
grep '^ready:' "$OUT/servers.txt" || { echo "run-1m: the servers did not become ready" >&2; exit 1; }

echo "== $N idle connections from $(((N + PER_CLIENT - 1) / PER_CLIENT)) client processes, held $HOLD"
status=0
bin/wsbench idle -url "ws://$LISTEN/ws" -admin "$admins" -n "$N" -per-process "$PER_CLIENT" -source "$SOURCE" \
	-hold "$HOLD" -json "$OUT/idle.json" -plot "$OUT/idle.png" | tee "$OUT/idle.txt" || status=$?

echo "== stop the servers (each drains)"
stop_servers
trap - EXIT
cat "$OUT/servers.txt"
echo "results: $OUT/idle.txt, $OUT/idle.json, $OUT/idle.png"
exit "$status"
