// Command wsd is the wsd WebSocket server.
//
//	wsd [flags]          (wsd --help lists them with their WSD_* variables)
//	wsd --version
//	wsd doctor --conns N [--procs K] [--local-clients]   (is this host ready for N connections?)
//
// It serves the JSON protocol on /ws (channels, presence, history, JWT
// authentication), an optional echo endpoint, and an admin HTTP server
// with /metrics, /healthz, /readyz and the HTTP API (/api/*, with
// --api-key). SIGINT or SIGTERM
// stops accepting, closes every connection with 1001 and exits 0.
//
// Exit status: 0 after a clean drain, --help or --version; 2 for a
// configuration error, reported in one line on stderr before anything
// listens; 1 if a port cannot be bound, the drain fails, or a second
// signal cuts it short.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	runtimemetrics "runtime/metrics"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/protocol"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// run is wsd's whole life; it returns the exit code. ready, if not nil,
// receives the server once it listens (for tests).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, ready func(*engine.Server, net.Addr)) int {
	if len(args) > 0 && args[0] == "doctor" {
		return runDoctor(args[1:], stdout, stderr)
	}
	if wantsVersion(args) {
		fmt.Fprintln(stdout, versionLine(debug.ReadBuildInfo()))
		return 0
	}
	cfg, err := parseConfig(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 2
	}
	level, _ := parseLevel(cfg.logLevel)
	log := newLogger(stderr, cfg.logFormat, level)
	cfg.engine.Logger = log
	// /metrics then has # HELP and # TYPE lines for the Go and process
	// metrics, which VictoriaMetrics writes only when asked (process-wide).
	metrics.ExposeMetadata(true)

	srv, err := engine.New(cfg.engine)
	if err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 2
	}
	if cfg.printConfig {
		writeConfig(stdout, cfg.settings(srv.Config()))
		return 0
	}
	verifier, err := cfg.verifier()
	if err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 2
	}
	if cfg.nodeID == "" {
		cfg.nodeID = newNodeID()
	}
	brk, err := cfg.newBrokers(log, srv)
	if err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 1
	}
	defer brk.broker().Close()
	h, err := hub.New(hub.Options{
		Server:           srv,
		Broker:           brk.broker(),
		Channel:          cfg.namespaces.resolve(cfg.defaults),
		MaxSubscriptions: cfg.maxSubscriptions,
		MaxChannels:      cfg.maxChannels,
		NodeID:           cfg.nodeID,
		Logger:           log,
		PublishLatency:   brokerLatency(),
	})
	if err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 1
	}
	handler := protocol.New(protocol.Options{Hub: h, Verifier: verifier, Policy: hub.Policy{ClientPublish: cfg.allowClientPublish},
		MaxMessageBytes: int(srv.Config().MaxMessageBytes), Logger: log})
	wsOpts := engine.RouteOptions{
		Subprotocols: cfg.protocols(),
		Authenticate: protocol.Authenticator(verifier, cfg.tokenCookie, cfg.allowAnonymous || verifier == nil),
	}
	if slices.Contains(wsOpts.Subprotocols, protocol.SubprotocolMsgpack) {
		wsOpts.Alternate = protocol.MsgpackAlternate()
	}
	if err := srv.Handle("/ws", handler, wsOpts); err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 2
	}
	if cfg.echoPath != "" {
		if err := srv.Handle(cfg.echoPath, engine.Echo{}, engine.RouteOptions{}); err != nil {
			fmt.Fprintf(stderr, "wsd: %v\n", err)
			return 2
		}
	}

	// Bind the admin port first: both failures are reported before anything runs.
	var adminLn net.Listener
	if cfg.admin != "" {
		adminLn, err = net.Listen("tcp", cfg.admin)
		if err != nil {
			fmt.Fprintf(stderr, "wsd: admin listener: %v\n", err)
			return 1
		}
		defer adminLn.Close()
	}
	if err := srv.Start(); err != nil {
		fmt.Fprintf(stderr, "wsd: %v\n", err)
		return 1
	}
	// Once both ports are bound: a failure to bind stays a one-line error.
	log.LogAttrs(context.Background(), slog.LevelInfo, "settings", cfg.settings(srv.Config())...)
	switch {
	case verifier == nil:
		log.Warn("no JWT key set (--jwt-secret-file, --jwt-public-keys): every client is anonymous and may use public channels only")
	case cfg.allowAnonymous:
		log.Info("clients without a token are admitted (--allow-anonymous) to public channels")
	}
	if cfg.apiKey == "" {
		log.Info("HTTP API off: set --api-key to publish from a backend")
	}
	if brk.redis != nil {
		log.Info("broker: redis", "node", cfg.nodeID, "addr", cfg.cluster.redisAddresses, "prefix", cfg.cluster.redisPrefix, "sharded_pubsub", brk.redis.Sharded())
	}
	var admin *http.Server
	if adminLn != nil {
		mux := adminMux(srv, &api{hub: h, srv: srv, brokers: brk, key: cfg.apiKey, maxData: int(cfg.engine.MaxMessageBytes), log: log})
		if cfg.adminUI {
			serveAdminUI(mux)
			log.Info("admin page on the admin listener", "path", "/")
		}
		if cfg.pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
			log.Info("pprof on the admin listener", "path", "/debug/pprof/")
		}
		admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
		go func() {
			if err := admin.Serve(limitListener(adminLn, maxAdminConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server stopped", "err", err)
			}
		}()
		log.Info("admin listening", "addr", adminLn.Addr().String())
	}
	if ready != nil {
		var a net.Addr
		if adminLn != nil {
			a = adminLn.Addr()
		}
		ready(srv, a)
	}

	<-ctx.Done()
	// A second SIGINT or SIGTERM during the drain means "now". One that
	// comes within a second of the first is the same request delivered
	// twice (to the process group and forwarded by a parent such as make),
	// not an operator's second press.
	again := make(chan os.Signal, 4)
	signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(again)
	first := time.Now()
	go func() {
		for range again {
			if time.Since(first) >= time.Second {
				log.Warn("second signal: exiting without waiting for the drain")
				os.Exit(1)
			}
		}
	}()
	log.Info("shutting down: closing connections with 1001", "open", srv.OpenConnections(), "drain_timeout", cfg.drainTimeout)
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.drainTimeout)
	defer cancel()
	code := 0
	if err := srv.Shutdown(drainCtx); err != nil {
		log.Error("shutdown", "err", err)
		code = 1
	}
	if admin != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = admin.Shutdown(shutCtx)
		cancel()
	}
	log.Info("stopped")
	return code
}

// brokerLatency records how long the broker takes to accept a publication
// (wsd_broker_publish_seconds, with the engine's latency buckets).
func brokerLatency() func(time.Duration) {
	h := metrics.GetOrCreatePrometheusHistogramExt("wsd_broker_publish_seconds",
		[]float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1})
	return func(d time.Duration) { h.Update(d.Seconds()) }
}

// newLogger returns the logger for --log-format and --log-level.
func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationText}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// durationText writes a time.Duration as Go writes it ("30s", "1.5ms").
// The JSON handler would write nanoseconds, a bare number whose unit a
// reader of the log, or of a query over it, has to know; the text handler
// already writes "30s", and this keeps the two the same.
func durationText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// writeRuntimeMetrics adds the heap the last GC found live: the figure
// that tells what connections cost, without the garbage heap_inuse counts.
// Its HELP and TYPE are written here: VictoriaMetrics' would have no text.
func writeRuntimeMetrics(w io.Writer) {
	live := []runtimemetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	runtimemetrics.Read(live)
	if live[0].Value.Kind() == runtimemetrics.KindUint64 {
		fmt.Fprintf(w, "# HELP wsd_go_heap_live_bytes Bytes of Go heap objects the last garbage collection found live (runtime/metrics /gc/heap/live:bytes).\n"+
			"# TYPE wsd_go_heap_live_bytes gauge\nwsd_go_heap_live_bytes %d\n", live[0].Value.Uint64())
	}
}

// adminMux serves the admin endpoints and the HTTP API.
func adminMux(srv *engine.Server, a *api) *http.ServeMux {
	mux := http.NewServeMux()
	a.register(mux)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		// Every family writes its own HELP and TYPE once: the engine's with
		// text, VictoriaMetrics' (ExposeMetadata) without.
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		srv.WriteMetrics(w)
		a.writeMetrics(w)
		writeRuntimeMetrics(w)
		metrics.WritePrometheus(w, true)
		// Each connection holds a descriptor, so open against allowed is
		// how near wsd is to refusing connections. Counting them reads
		// /proc/self/fd, an entry per connection: fine once per scrape.
		metrics.WriteFDMetrics(w)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ok, why := srv.Ready(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		// Without its broker the node serves only what stays on it: a load
		// balancer should send new clients elsewhere.
		if err := a.brokers.ready(); err != nil {
			http.Error(w, "broker: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

// maxAdminConns bounds the admin listener's connections: its descriptors
// come out of FDReserve, which --max-conns leaves for everything but
// WebSocket clients.
const maxAdminConns = 64

// limitListener accepts at most n connections at once; the next waits in
// the kernel's backlog until one closes.
func limitListener(ln net.Listener, n int) net.Listener {
	return &limitedListener{Listener: ln, sem: make(chan struct{}, n)}
}

type limitedListener struct {
	net.Listener
	sem chan struct{}
}

func (l *limitedListener) Accept() (net.Conn, error) {
	l.sem <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
