// Command wsbench measures wsd with real connections.
//
//	wsbench idle -n 19000 [-url ws://127.0.0.1:8080/ws] [-admin http://127.0.0.1:9090]
//
// opens N idle WebSocket connections against a running wsd, spread over
// several client processes (each from its own 127.0.0.x source address, so
// neither one process's file limit nor one address's ephemeral ports caps
// N), holds them, and prints what they cost: the server's RSS and Go heap
// growth and the host's kernel slab growth per connection, and the
// server's CPU use while they sit idle.
//
//	wsbench slow -n 5000 [-readers 10] [-size 16384] [-rate 200] [-duration 30s]
//
// opens N clients that never read, a few fast readers and a broadcaster,
// broadcasts for a while, and prints the server's RSS over time, what its
// slow-consumer policy did (when it exports those metrics), and whether the
// fast readers still got every broadcast.
//
//	wsbench broadcast -target wsd|centrifugo -api-key KEY [-subs 10000] [-rate 20] [-count 200] [-size 100]
//
// subscribes many clients to one channel of a running wsd or Centrifugo,
// publishes through the server's HTTP API, and prints what the fan-out
// cost the server (deliveries per server CPU-second) and how long it took
// (publish to last delivery).
//
//	wsbench connect -tokens tokens.txt [-n 10000] [-concurrency 64] [-rounds 2] [-token-in header|query]
//
// opens N connections, each presenting a token from the file (connection i
// the line i mod lines), holds them, closes them, and prints handshakes
// per second of wall time and per server CPU-second and the handshake
// latency; round 2 on presents the same tokens again (a reconnect storm).
//
//	wsbench echo [-url ws://127.0.0.1:8080/echo] [-n 1000] [-size 64] [-window 1] [-duration 10s]
//
// opens N connections to an echo endpoint (wsd's --echo-path, or the
// baseline bin/gnetecho), keeps -window messages in flight on each, and
// prints messages per second and per server CPU-second and the round-trip
// p50/p99/p999.
//
//	wsbench tokens -key private.pem [-n 10000] [-alg RS256] [-exp 1h] > tokens.txt
//
// signs N tokens (sub user0 … user<N-1>), one a line.
//
//	wsbench soak -api-key KEY [-n 10000] [-duration 10m] [-churn 1%/s] [-msg-rate 100] [-broadcast-rate 10]
//
// keeps N clients connected to a running wsd for a while, with churn,
// subscriptions, client messages and API publications, printing the
// server's RSS, heap, goroutines and fds every -interval; then closes
// every client, waits for the server to settle, and says whether it came
// back to its baseline (the exit status too).
//
//	wsbench storm [-n 20000] [-resident 1000] [-jitter 0] [-echo-interval 100ms] [-admin URL,URL]
//
// connects N storm clients and a few resident ones, then drops every storm
// client's connection at once and lets them all reconnect (honouring
// Retry-After, backing off on errors), and prints how long until all were
// back, the handshake latency, the refusals, the residents' echo latency
// before and during the storm, and the server's CPU time over it. See
// bench/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsdproject/wsd/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // the first signal stops the run cleanly; a second one kills at once
	}()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: wsbench idle|slow|broadcast|connect|echo|tokens|soak|storm|servers|smoke [flags]   (wsbench idle -h, … for the flags)\n       wsbench broadcast-summary RESULT.json…")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "idle":
		err = idle(ctx, os.Args[2:])
	case "slow":
		err = slow(ctx, os.Args[2:])
	case "broadcast":
		err = broadcast(ctx, os.Args[2:])
	case "broadcast-summary":
		err = broadcastSummary(os.Args[2:])
	case "connect":
		err = connect(ctx, os.Args[2:])
	case "tokens":
		err = tokens(os.Args[2:])
	case "soak":
		err = soak(ctx, os.Args[2:])
	case "storm":
		err = storm(ctx, os.Args[2:])
	case "servers":
		err = servers(ctx, os.Args[2:])
	case "smoke":
		err = smoke(ctx, os.Args[2:])
	case "echo":
		err = echo(ctx, os.Args[2:])
	case "storm-worker":
		err = bench.RunStormWorkerArgs(os.Args[2:], os.Stdout, os.Stdin) // ends when the coordinator closes its stdin
	case "idle-worker":
		err = idleWorker(ctx, os.Args[2:])
	case "broadcast-worker":
		err = broadcastWorker(ctx, os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "wsbench: unknown command %q (want idle, slow, broadcast, broadcast-summary, connect, echo, tokens, soak, storm, servers or smoke)\n", os.Args[1])
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "wsbench: %v\n", err)
		os.Exit(1)
	}
}

func idle(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench idle", flag.ContinueOnError)
	var o bench.IdleOptions
	var source, jsonOut, plotOut, admins string
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL of the running wsd (one process, or several sharing the port with --reuse-port)")
	fs.StringVar(&admins, "admin", "http://127.0.0.1:9090", "admin URL of each server process, comma-separated (their /metrics are read and summed)")
	fs.IntVar(&o.N, "n", 19000, "connections to open")
	fs.IntVar(&o.PerProcess, "per-process", defaultPerProcess(), "connections per client process (each needs one file descriptor per connection; default: this process's open-file limit less 2,000)")
	fs.StringVar(&source, "source", "127.0.0.2", "source address of the first client process; process i uses this address + i")
	fs.IntVar(&o.Concurrency, "concurrency", 32, "handshakes in flight per client process")
	fs.IntVar(&o.Loops, "loops", 1, "event loops per client process")
	fs.DurationVar(&o.Settle, "settle", 0, "wait after the last connection opens before measuring memory (0: 2 s + 1 s per 20,000 connections, at most 15 s)")
	fs.DurationVar(&o.Hold, "hold", 0, "then hold the connections this long, measuring the server's idle CPU (0: 1 s per 300 connections, 5 s to 60 s)")
	fs.DurationVar(&o.Timeout, "timeout", 0, "give up if the connections are not all open by then (0: 2 min + 1 s per 2,000 connections)")
	fs.Int64Var(&o.MaxFailed, "max-failed", 0, "dials or handshakes that may fail before the run gives up")
	fs.BoolVar(&o.NoPingCheck, "no-ping-check", false, "skip the final check that every connection answers a ping")
	fs.DurationVar(&o.Interval, "interval", 0, "sample period for the progress line, the curve and the plot (0: 1 s; 2 s with more than 8 servers)")
	fs.StringVar(&o.Subscribe, "subscribe", "", "subscribe each connection to this channel (wsd's JSON protocol) before it idles")
	fs.StringVar(&jsonOut, "json", "", "also write the result, with its samples, as JSON to this file")
	fs.StringVar(&plotOut, "plot", "", "also draw memory per connection and the probe's ping RTT against connections held to this .png or .svg file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.Source = net.ParseIP(source)
	if o.Source == nil || o.N < 1 || o.PerProcess < 1 || o.Concurrency < 1 {
		return fmt.Errorf("bad flags: -n, -per-process and -concurrency must be positive and -source an IP address")
	}
	for _, a := range strings.Split(admins, ",") {
		if a = strings.TrimSpace(a); a != "" {
			o.Admins = append(o.Admins, a)
		}
	}
	o.Progress = os.Stderr
	o.Terminal = isTerminal(os.Stderr)
	r, err := bench.RunIdle(ctx, o)
	if err != nil {
		return err
	}
	r.Print(os.Stdout)
	if err := writeJSON(jsonOut, r); err != nil {
		return err
	}
	if plotOut != "" {
		if err := bench.WriteIdlePlot(plotOut, r); err != nil {
			return err
		}
		fmt.Printf("plot                             %s\n", plotOut)
	}
	if v := r.Verdict(); v != "" {
		return errors.New(v)
	}
	return nil
}

// defaultPerProcess leaves 2,000 of the open-file limit to the process's
// own needs and the dup each enrolled connection briefly takes.
func defaultPerProcess() int {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) != nil || rl.Cur < 4000 {
		return 1000
	}
	return int(min(rl.Cur-2000, 100000))
}

func smoke(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench smoke", flag.ContinueOnError)
	var o bench.SmokeOptions
	var jsonOut, source string
	self, _ := os.Executable()
	dir := filepath.Dir(self)
	fs.StringVar(&o.Wsd, "wsd", filepath.Join(dir, "wsd"), "the wsd binary")
	fs.StringVar(&o.Baseline, "baseline", filepath.Join(dir, "gnetecho"), "the baseline server (gnet + gobwas/ws echo); empty: skip it")
	fs.StringVar(&o.Dir, "dir", "", "logs and results go here (default: a new temporary directory)")
	fs.IntVar(&o.Idle, "idle", 5000, "idle connections")
	fs.IntVar(&o.Connect, "connect", 5000, "handshakes")
	fs.IntVar(&o.Echo, "echo", 100, "echo connections")
	fs.DurationVar(&o.EchoTime, "echo-duration", 3*time.Second, "echo measurement")
	fs.StringVar(&source, "source", "127.0.0.2", "first source address; the modes use it and the next four")
	fs.StringVar(&jsonOut, "json", "", "also write the results as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.Source = net.ParseIP(source); o.Source == nil {
		return fmt.Errorf("bad -source %q", source)
	}
	if o.Dir == "" {
		var err error
		if o.Dir, err = os.MkdirTemp("", "wsbench-smoke-"); err != nil {
			return err
		}
	}
	o.Out = os.Stderr
	r, err := bench.RunSmoke(ctx, o)
	if err != nil {
		return err
	}
	r.Print(os.Stdout)
	if err := writeJSON(jsonOut, r); err != nil {
		return err
	}
	if v := r.Idle.Verdict(); v != "" {
		return errors.New("idle: " + v)
	}
	return nil
}

func servers(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench servers", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: wsbench servers -k K [flags] [-- wsd flags]\n\nStarts K wsd processes sharing one port (--reuse-port), each with its own admin port,\nwaits until all are ready, serves their summed /metrics, and drains them all on SIGINT/SIGTERM.\n\nFlags:")
		fs.PrintDefaults()
	}
	var o bench.ServersOptions
	self, _ := os.Executable()
	fs.IntVar(&o.K, "k", 2, "wsd processes")
	fs.StringVar(&o.Wsd, "wsd", filepath.Join(filepath.Dir(self), "wsd"), "the wsd binary")
	fs.StringVar(&o.Listen, "listen", ":8080", "the WebSocket address they share")
	fs.StringVar(&o.AdminHost, "admin-host", "127.0.0.1", "host of every admin listener")
	fs.IntVar(&o.AdminBase, "admin-base", 9100, "process i's admin port is this + i")
	fs.StringVar(&o.Aggregate, "aggregate", "127.0.0.1:9090", "serve the processes' summed /metrics and /readyz here (empty: off)")
	fs.StringVar(&o.NodePrefix, "node-prefix", "wsd", "process i runs with --node-id PREFIX-i")
	fs.StringVar(&o.LogDir, "logs", filepath.Join(os.TempDir(), "wsd-servers"), "process i writes its log to DIR/wsd-i.log")
	fs.DurationVar(&o.Stop, "stop-timeout", 30*time.Second, "after SIGTERM, how long to wait for the drains before SIGKILL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Args = fs.Args()
	s, err := bench.StartServers(ctx, o)
	if err != nil {
		return err
	}
	fmt.Printf("ready: %d wsd processes on %s, pids %v\n", o.K, o.Listen, s.PIDs)
	fmt.Printf("admin: %s\n", strings.Join(s.Admins, ","))
	if o.Aggregate != "" {
		fmt.Printf("aggregate: http://%s/metrics\n", o.Aggregate)
	}
	werr := s.Wait(ctx)
	fmt.Println("stopping: SIGTERM to every process (each drains)")
	serr := s.Stop()
	return errors.Join(werr, serr)
}

func slow(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench slow", flag.ContinueOnError)
	var o bench.SlowOptions
	var source, jsonOut string
	var maxRSS int
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL of the running wsd's JSON protocol endpoint")
	fs.StringVar(&o.Admin, "admin", "http://127.0.0.1:9090", "admin URL of the running wsd (its /metrics is read)")
	fs.IntVar(&o.N, "n", 5000, "clients that upgrade and then never read")
	fs.IntVar(&o.Readers, "readers", 10, "fast readers that read and count every broadcast")
	fs.IntVar(&o.Size, "size", 16384, "bytes of each broadcast's data (a JSON string)")
	fs.Float64Var(&o.Rate, "rate", 200, "broadcasts per second (0: as fast as -window allows)")
	fs.IntVar(&o.Window, "window", 16, "most broadcasts on their way back to the broadcaster (it reads its own copies)")
	fs.IntVar(&o.Count, "count", 0, "stop after this many broadcasts (0: only -duration stops)")
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "length of the broadcast phase")
	fs.DurationVar(&o.Interval, "interval", time.Second, "sample period")
	fs.DurationVar(&o.Timeout, "timeout", 3*time.Minute, "bound on the whole run")
	fs.IntVar(&maxRSS, "max-rss", 0, "stop broadcasting once the server's RSS, plus what the broadcasts in flight may add, passes this many MiB (0: half of this host's memory; -1: never)")
	fs.StringVar(&source, "source", "127.0.0.2", "source address; every further 10,000 connections use the next address")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "dials in flight while opening")
	fs.StringVar(&jsonOut, "json", "", "also write the result, with every sample, as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Source = net.ParseIP(source)
	if o.Source == nil {
		return fmt.Errorf("bad -source %q", source)
	}
	if maxRSS != 0 {
		o.MaxRSS = float64(maxRSS) * (1 << 20)
	}
	o.Progress = os.Stderr
	o.Terminal = isTerminal(os.Stderr)
	r, err := bench.RunSlow(ctx, o)
	if err != nil {
		return err
	}
	r.Print(os.Stdout)
	if err := writeJSON(jsonOut, r); err != nil {
		return err
	}
	// Stopping by -duration, -count or -max-rss is a run that went as
	// planned; anything else (a signal, -timeout, a broken broadcaster)
	// leaves partial figures and says so in the exit status.
	for _, ok := range []string{"duration", "count", "max-rss"} {
		if strings.HasPrefix(r.StoppedBy, ok) && !strings.Contains(r.StoppedBy, "; then ") {
			return nil
		}
	}
	return fmt.Errorf("the broadcast phase ended early (%s); the figures above are partial", r.StoppedBy)
}

// writeJSON writes a run's result to path as indented JSON ("": nowhere).
func writeJSON(path string, v any) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// isTerminal reports whether f is a terminal (a character device such as
// /dev/null is not).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func idleWorker(ctx context.Context, args []string) error {
	return bench.IdleWorkerMain(ctx, args, os.Stdout, os.Stdin)
}

func broadcast(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench broadcast", flag.ContinueOnError)
	var o bench.BroadcastOptions
	var source, jsonOut string
	fs.StringVar(&o.Target, "target", bench.TargetWsd, "the server: wsd or centrifugo (its client protocol and publish API)")
	fs.StringVar(&o.URL, "url", "", "WebSocket URL the subscribers connect to (default ws://127.0.0.1:8080/ws for wsd, ws://127.0.0.1:8000/connection/websocket for centrifugo); several, comma-separated: the nodes of a cluster, the subscribers spread evenly over them, -api on the first")
	fs.StringVar(&o.API, "api", "", "publish URL (default http://127.0.0.1:9090/api/publish for wsd, http://127.0.0.1:8000/api/publish for centrifugo)")
	fs.StringVar(&o.APIKey, "api-key", "", "the publish API's key (wsd: --api-key; Centrifugo: http_api.key)")
	fs.IntVar(&o.Subs, "subs", 10000, "subscribers")
	fs.StringVar(&o.Channel, "channel", "bench", "channel")
	fs.IntVar(&o.Size, "size", 100, "bytes of each publication's JSON data")
	fs.Float64Var(&o.Rate, "rate", 20, "publications per second (0: one after another)")
	fs.IntVar(&o.Count, "count", 200, "publications")
	fs.DurationVar(&o.Settle, "settle", 2*time.Second, "wait after the last subscription before publishing (the server's idle CPU is measured meanwhile)")
	fs.DurationVar(&o.Drain, "drain", 15*time.Second, "after the last publication, wait at most this long for the deliveries")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "bound on the whole run")
	fs.IntVar(&o.ServerPID, "server-pid", 0, "the server's process, whose CPU time is read from /proc (default: the process listening on -url's port)")
	fs.IntVar(&o.PerProcess, "per-process", 10000, "subscribers per client process (one file descriptor each)")
	fs.IntVar(&o.Loops, "loops", 2, "event loops per client process")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "subscriptions in flight per client process")
	fs.StringVar(&source, "source", "127.0.0.2", "source address; every further 10,000 subscribers use the next address")
	fs.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	var brokerPIDs string
	fs.StringVar(&brokerPIDs, "broker-pids", "", "processes of the broker between the nodes (Redis), comma-separated: their CPU counts as server CPU")
	self, _ := os.Executable()
	var no bench.NodesOptions
	fs.IntVar(&no.N, "nodes", 0, "start a cluster of this many wsd nodes and a redis-server of its own (--broker redis), run against it, and stop it (0: run against -url)")
	fs.StringVar(&no.Wsd, "wsd", filepath.Join(filepath.Dir(self), "wsd"), "with -nodes: the wsd binary")
	fs.StringVar(&no.Redis, "redis-server", "redis-server", "with -nodes: the redis-server binary")
	fs.IntVar(&no.Port, "node-port", 18400, "with -nodes: node i's WebSocket port is this + i")
	fs.IntVar(&no.AdminBase, "node-admin", 18500, "with -nodes: node i's admin port is this + i")
	fs.StringVar(&no.LogDir, "logs", filepath.Join(os.TempDir(), "wsbench-nodes"), "with -nodes: redis.log and wsd-i.log go here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	no.Args = fs.Args() // after --: more wsd flags for every node
	if len(no.Args) > 0 && no.N == 0 {
		return fmt.Errorf("unexpected arguments %q (wsd flags after -- need -nodes)", no.Args)
	}
	if o.URL != "" && strings.Contains(o.URL, ",") {
		o.URLs = strings.Split(o.URL, ",")
	}
	var err error
	if o.BrokerPIDs, err = parsePIDs("broker-pids", brokerPIDs); err != nil {
		return err
	}
	for _, pid := range o.BrokerPIDs {
		if pid <= 0 {
			return fmt.Errorf("bad -broker-pids %q", brokerPIDs)
		}
	}
	o.Source = net.ParseIP(source)
	o.Progress = os.Stderr
	o.Terminal = isTerminal(os.Stderr)
	if no.N > 0 {
		if o.Target != bench.TargetWsd || o.URL != "" || o.API != "" || len(o.BrokerPIDs) > 0 || o.ServerPID != 0 {
			return errors.New("-nodes starts its own wsd cluster: it goes without -target centrifugo, -url, -api, -server-pid and -broker-pids")
		}
		if o.APIKey == "" {
			o.APIKey = "wsbench-nodes"
		}
		no.Host, no.APIKey = "127.0.0.1", o.APIKey
		fmt.Fprintf(os.Stderr, "starting redis-server and %d wsd nodes (logs in %s)\n", no.N, no.LogDir)
		nodes, err := bench.StartNodes(ctx, no)
		if err != nil {
			return err
		}
		defer nodes.Stop()
		o.URLs, o.API, o.ServerPIDs, o.BrokerPIDs = nodes.URLs, nodes.APIs[0], nodes.PIDs, []int{nodes.RedisPID}
	}
	r, err := bench.RunBroadcast(ctx, o)
	if err != nil {
		return err
	}
	r.Print(os.Stdout)
	if err := writeJSON(jsonOut, r); err != nil {
		return err
	}
	if !r.Complete {
		return fmt.Errorf("not every subscriber got every publication once, in order (phase ended by %s)", r.StoppedBy)
	}
	return nil
}

func broadcastSummary(files []string) error {
	if len(files) == 0 {
		return errors.New("usage: wsbench broadcast-summary RESULT.json…")
	}
	var runs []*bench.BroadcastResult
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r bench.BroadcastResult
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		runs = append(runs, &r)
	}
	bench.BroadcastSummary(os.Stdout, runs)
	return nil
}

func broadcastWorker(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench broadcast-worker", flag.ContinueOnError)
	var w bench.BroadcastWorker
	var source string
	fs.StringVar(&w.Target, "target", "", "")
	fs.StringVar(&w.URL, "url", "", "")
	fs.StringVar(&w.Channel, "channel", "", "")
	fs.IntVar(&w.N, "n", 0, "")
	fs.IntVar(&w.Count, "count", 0, "")
	fs.StringVar(&source, "source", "", "")
	fs.IntVar(&w.Concurrency, "concurrency", 64, "")
	fs.IntVar(&w.Loops, "loops", 2, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	w.Source = net.ParseIP(source)
	return bench.RunBroadcastWorker(ctx, w, os.Stdout, os.Stdin)
}

func connect(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench connect", flag.ContinueOnError)
	var o bench.ConnectOptions
	var source, tokenFile, jsonOut string
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL of the running wsd")
	fs.IntVar(&o.N, "n", 10000, "connections a round (this process holds them all: one file descriptor each)")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "handshakes in flight")
	fs.IntVar(&o.Rounds, "rounds", 1, "rounds: after one, close every connection and open them again with the same tokens")
	fs.StringVar(&tokenFile, "tokens", "", "file of tokens, one a line; connection i presents line i mod lines (none: anonymous)")
	fs.StringVar(&o.TokenIn, "token-in", bench.TokenInHeader, "where the token goes: header (Authorization: Bearer) or query (?token=)")
	fs.StringVar(&source, "source", "127.0.0.2", "source address; every further -per-source connections, and every round, use the next address (\"\": any)")
	fs.IntVar(&o.PerSource, "per-source", 10000, "connections per source address")
	fs.IntVar(&o.ServerPID, "server-pid", 0, "the server's process, whose CPU time is read from /proc (default: every process listening on -url's port, summed; -1: do not measure)")
	fs.DurationVar(&o.Pause, "pause", 2*time.Second, "between rounds, after closing, for the server to finish the closes (and after opening -held)")
	fs.DurationVar(&o.Linger, "linger", 0, "keep each round's connections open this long after its last handshake before closing them (to profile the handshakes alone)")
	var heldSource string
	fs.IntVar(&o.Held, "held", 0, "first open this many connections from client processes of their own and hold them (pings answered) for the whole run")
	fs.IntVar(&o.HeldPerProcess, "held-per-process", 10000, "held connections per client process")
	fs.StringVar(&heldSource, "held-source", "127.0.0.200", "source address of the first held-connection process; process i uses this address + i")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "bound on the whole run")
	fs.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if source != "" {
		if o.Source = net.ParseIP(source); o.Source == nil {
			return fmt.Errorf("bad -source %q", source)
		}
	}
	if o.Held > 0 {
		if o.HeldSource = net.ParseIP(heldSource); o.HeldSource == nil {
			return fmt.Errorf("bad -held-source %q", heldSource)
		}
	}
	if tokenFile != "" {
		var err error
		if o.Tokens, err = bench.LoadTokens(tokenFile); err != nil {
			return err
		}
	}
	o.Progress = os.Stderr
	o.Terminal = isTerminal(os.Stderr)
	r, err := bench.RunConnect(ctx, o)
	if r != nil && len(r.Rounds) > 0 {
		r.Print(os.Stdout)
		if err := writeJSON(jsonOut, r); err != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	if n := r.Failed(); n > 0 {
		return fmt.Errorf("%d handshakes failed", n)
	}
	return nil
}

func echo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench echo", flag.ContinueOnError)
	var o bench.EchoOptions
	var source, jsonOut string
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8080/echo", "WebSocket URL of an echo endpoint (wsd --echo-path /echo, or bin/gnetecho)")
	fs.IntVar(&o.N, "n", 1000, "connections (this process holds them all: one file descriptor each)")
	fs.IntVar(&o.Size, "size", 64, "bytes a message (at least 8)")
	fs.IntVar(&o.Window, "window", 1, "messages in flight per connection")
	fs.DurationVar(&o.Warmup, "warmup", 2*time.Second, "echo this long before measuring")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "measure this long")
	fs.IntVar(&o.Loops, "loops", 1, "the client's event loops")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "dials in flight while opening")
	fs.StringVar(&source, "source", "127.0.0.2", "source address; every further 10,000 connections use the next address (\"\": any)")
	fs.IntVar(&o.ServerPID, "server-pid", 0, "the server's process (default: every process listening on -url's port, summed; -1: do not measure)")
	fs.DurationVar(&o.Timeout, "timeout", 2*time.Minute, "bound on opening the connections")
	fs.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if source != "" {
		if o.Source = net.ParseIP(source); o.Source == nil {
			return fmt.Errorf("bad -source %q", source)
		}
	}
	o.Progress = os.Stderr
	o.Terminal = isTerminal(os.Stderr)
	r, err := bench.RunEcho(ctx, o)
	if r != nil {
		r.Print(os.Stdout)
		if err := writeJSON(jsonOut, r); err != nil {
			return err
		}
	}
	return err
}

func tokens(args []string) error {
	fs := flag.NewFlagSet("wsbench tokens", flag.ContinueOnError)
	var o bench.TokenOptions
	var keyFile string
	fs.StringVar(&keyFile, "key", "", "PEM private key (RSA for RS*/PS*, ECDSA for ES*, Ed25519 for EdDSA)")
	fs.IntVar(&o.N, "n", 10000, "tokens; token i has sub user<i>")
	fs.StringVar(&o.Alg, "alg", "RS256", "signing algorithm")
	fs.DurationVar(&o.Exp, "exp", time.Hour, "expiry after now (0: no exp claim)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if keyFile == "" || fs.NArg() > 0 {
		return errors.New("usage: wsbench tokens -key private.pem [-n 10000] [-alg RS256] [-exp 1h] > tokens.txt")
	}
	var err error
	if o.Key, err = os.ReadFile(keyFile); err != nil {
		return err
	}
	o.Now = time.Now()
	return bench.GenerateTokens(os.Stdout, o)
}

func soak(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench soak", flag.ContinueOnError)
	var o bench.SoakOptions
	var source, churn, jsonOut string
	var rssTol, heapTol float64
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL of the running wsd's JSON protocol endpoint (127.0.0.0/8 only)")
	fs.StringVar(&o.Admin, "admin", "http://127.0.0.1:9090", "admin URL of the running wsd: /metrics is read, /api/publish posted to (127.0.0.0/8 only)")
	fs.StringVar(&o.APIKey, "api-key", "", "the HTTP API's key (wsd --api-key); needed unless -broadcast-rate 0")
	fs.IntVar(&o.N, "n", 10000, "clients kept connected (this process holds them all: one file descriptor each)")
	fs.IntVar(&o.Channels, "channels", 100, "channels; client k subscribes to <prefix>(k mod channels)")
	fs.StringVar(&o.ChannelPrefix, "channel-prefix", bench.SoakChannelPrefix, "channel names are this and a number")
	fs.StringVar(&churn, "churn", "1%/s", "share of the clients closed and reopened each second (1%/s, 0.01)")
	fs.Float64Var(&o.Vanish, "vanish", 0.5, "of the churned clients, the share that just close TCP (the rest send a close frame and wait for the answer)")
	fs.Float64Var(&o.MsgRate, "msg-rate", 100, "client messages per second, over all clients (each from a random client)")
	fs.Float64Var(&o.PublishShare, "publish-share", 0.5, "of the client messages, the share that are publishes to the client's channel (needs wsd --allow-client-publish); the rest are echoes")
	fs.Float64Var(&o.BroadcastRate, "broadcast-rate", 10, "publications per second through POST /api/publish, to the channels in turn (0: none)")
	fs.IntVar(&o.Size, "size", 100, "bytes of each message's JSON data")
	fs.DurationVar(&o.Duration, "duration", 10*time.Minute, "length of the traffic phase")
	fs.DurationVar(&o.Interval, "interval", 10*time.Second, "a line every interval")
	fs.DurationVar(&o.Drain, "drain", 10*time.Second, "after the traffic, wait at most this long for the answers and deliveries still on their way")
	fs.DurationVar(&o.Settle, "settle", 3*time.Minute, "after closing every client, wait at most this long for the server to return to its baseline (a Go server gone idle collects garbage within 2 min)")
	fs.DurationVar(&o.Timeout, "timeout", 0, "bound on the whole run (0: -duration + -settle + 10m)")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "dials in flight while opening the clients")
	fs.StringVar(&source, "source", "127.0.0.2", "source address; every further 10,000 clients use the next address (127.0.0.0/8)")
	fs.IntVar(&o.ServerPID, "server-pid", 0, "the server's process, whose RSS and fds are read from /proc (default: the process listening on -url's port; -1: from /metrics)")
	fs.IntVar(&o.GoroutineTolerance, "goroutine-tolerance", 5, "final server goroutines may exceed the baseline by this many")
	fs.IntVar(&o.FDTolerance, "fd-tolerance", 5, "final server open fds may exceed the baseline by this many")
	fs.Float64Var(&rssTol, "rss-tolerance", 32, "MiB: final RSS may exceed the baseline (and the channels' history) by this, or by -rss-growth-share of the peak growth if more; judged only when no GC ran after the close")
	fs.Float64Var(&o.RSSGrowthShare, "rss-growth-share", 0.1, "see -rss-tolerance")
	fs.Float64Var(&heapTol, "heap-tolerance", 8, "MiB: final heap live (after a GC that ran once every client had closed) may exceed the baseline (and the channels' history) by this, or by -heap-per-conn × the peak connections if more")
	fs.Float64Var(&o.HeapPerConn, "heap-per-conn", 1024, "bytes; see -heap-tolerance")
	fs.Int64Var(&o.MaxErrors, "max-errors", 0, "the run fails with more errors than this")
	fs.StringVar(&jsonOut, "json", "", "also write the result, with every sample, as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.Churn, err = bench.ParseChurn(churn); err != nil {
		return err
	}
	if o.Source = net.ParseIP(source); o.Source == nil {
		return fmt.Errorf("bad -source %q", source)
	}
	o.RSSTolerance, o.HeapTolerance = rssTol*(1<<20), heapTol*(1<<20)
	o.Out = os.Stdout
	o.Progress = os.Stderr
	o.Terminal = isTerminal(os.Stderr)
	r, err := bench.RunSoak(ctx, o)
	if err != nil {
		return err
	}
	r.Print(os.Stdout)
	if err := writeJSON(jsonOut, r); err != nil {
		return err
	}
	if !r.Verdict.Pass {
		return fmt.Errorf("soak failed: %s", r.Verdict.FailedBecause)
	}
	return nil
}

func storm(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench storm", flag.ContinueOnError)
	var o bench.StormOptions
	var source, admins, pids, jsonOut string
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL of the running wsd's JSON protocol endpoint (127.0.0.0/8 only)")
	fs.StringVar(&admins, "admin", "", "comma-separated admin URLs (http://127.0.0.1:9090,…) whose /metrics are read before and after the storm (empty: none)")
	fs.IntVar(&o.N, "n", 20000, "storm clients: they connect, then all drop their connection at once and reconnect")
	fs.IntVar(&o.Resident, "resident", 1000, "resident clients: connected first, they send echoes for the whole run (in a client process of their own)")
	fs.IntVar(&o.PerProcess, "per-process", 10000, "storm clients per client process (one file descriptor each; at most 19,000)")
	fs.StringVar(&source, "source", "127.0.0.2", "first source address (127.0.0.0/8): the residents', then each storm process's (10,000 clients to an address, fresh addresses for the reconnects)")
	fs.IntVar(&o.Concurrency, "concurrency", 64, "warm-up dials in flight per client process")
	fs.Float64Var(&o.WarmupRate, "warmup-rate", 0, "warm-up opens per second over all client processes (0: as fast as -concurrency allows); keep it under the server's pace")
	fs.IntVar(&o.Loops, "loops", 1, "event loops per storm client process (they hold the connections and answer pings)")
	fs.DurationVar(&o.EchoInterval, "echo-interval", 100*time.Millisecond, "each resident sends an echo this often")
	fs.DurationVar(&o.Baseline, "baseline", 5*time.Second, "the residents' echoes are measured this long before the storm")
	fs.DurationVar(&o.After, "after", 2*time.Second, "and this long after every storm client is back")
	fs.DurationVar(&o.Split, "split", 500*time.Millisecond, "also report the residents' echoes during the storm in two parts: up to this long after the trigger (the drops) and after it (0: not)")
	fs.StringVar(&o.Trigger, "trigger", bench.TriggerClose, "how the connections drop: close (each storm client closes its own TCP connection)")
	fs.DurationVar(&o.Jitter, "jitter", 0, "each storm client waits a random 0..jitter before its first reconnect attempt")
	fs.DurationVar(&o.Timeout, "timeout", 2*time.Minute, "bound on the warm-up, and on the storm: clients not back by then give up")
	fs.StringVar(&pids, "server-pids", "", "comma-separated server processes whose CPU time is read from /proc (default: every process listening on -url's port; -1: do not measure)")
	fs.StringVar(&jsonOut, "json", "", "also write the result, with the curve, as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.Source = net.ParseIP(source); o.Source == nil {
		return fmt.Errorf("bad -source %q", source)
	}
	for a := range strings.SplitSeq(admins, ",") {
		if a = strings.TrimSpace(a); a != "" {
			o.Admins = append(o.Admins, a)
		}
	}
	var err error
	if o.ServerPIDs, err = parsePIDs("server-pids", pids); err != nil {
		return err
	}
	o.Progress = os.Stderr
	o.Terminal = isTerminal(os.Stderr)
	r, err := bench.RunStorm(ctx, o)
	if r != nil {
		r.Print(os.Stdout)
		if err := writeJSON(jsonOut, r); err != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	if !r.Complete {
		return fmt.Errorf("%d of %d storm clients were not back when the storm ended (%s)", r.Clients-int(r.Back), r.Clients, r.StoppedBy)
	}
	return nil
}

// parsePIDs reads flag name's comma-separated list of process ids (blanks
// ignored); the caller checks their values.
func parsePIDs(name, list string) ([]int, error) {
	var pids []int
	for p := range strings.SplitSeq(list, ",") {
		if p = strings.TrimSpace(p); p != "" {
			v, err := strconv.Atoi(p)
			if err != nil {
				return nil, fmt.Errorf("bad -%s %q", name, list)
			}
			pids = append(pids, v)
		}
	}
	return pids, nil
}
