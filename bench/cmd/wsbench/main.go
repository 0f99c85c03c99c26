// Command wsbench measures wsd with real connections.
//
//	wsbench idle -n 19000 [-url ws://127.0.0.1:8080/ws] [-admin http://127.0.0.1:9090]
//
// opens N idle WebSocket connections against a running wsd, spread over
// several client processes (each from its own 127.0.0.x source address, so
// neither one process's file limit nor one address's ephemeral ports caps
// N), holds them, and prints what they cost: the server's RSS and Go heap
// growth and the host's kernel slab growth per connection, and the
// server's CPU use while they sit idle. See bench/README.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wsdproject/wsd/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: wsbench idle [flags]   (wsbench idle -h for the flags)")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "idle":
		err = idle(ctx, os.Args[2:])
	case "idle-worker":
		err = idleWorker(ctx, os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "wsbench: unknown command %q (want idle)\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "wsbench: %v\n", err)
		os.Exit(1)
	}
}

func idle(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench idle", flag.ContinueOnError)
	var o bench.IdleOptions
	var source, jsonOut string
	fs.StringVar(&o.URL, "url", "ws://127.0.0.1:8080/ws", "WebSocket URL of the running wsd")
	fs.StringVar(&o.Admin, "admin", "http://127.0.0.1:9090", "admin URL of the running wsd (its /metrics is read)")
	fs.IntVar(&o.N, "n", 19000, "connections to open")
	fs.IntVar(&o.PerProcess, "per-process", 10000, "connections per client process (each process needs one file descriptor per connection)")
	fs.StringVar(&source, "source", "127.0.0.2", "source address of the first client process; process i uses this address + i")
	fs.IntVar(&o.Concurrency, "concurrency", 32, "handshakes in flight per client process")
	fs.IntVar(&o.Loops, "loops", 1, "event loops per client process")
	fs.DurationVar(&o.Settle, "settle", 15*time.Second, "wait after the last connection opens before measuring memory")
	fs.DurationVar(&o.Hold, "hold", 60*time.Second, "then hold the connections this long, measuring the server's idle CPU")
	fs.DurationVar(&o.Timeout, "timeout", 5*time.Minute, "give up if the connections are not all open by then")
	fs.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Source = net.ParseIP(source)
	if o.Source == nil || o.N < 1 || o.PerProcess < 1 || o.Concurrency < 1 {
		return fmt.Errorf("bad flags: -n, -per-process and -concurrency must be positive and -source an IP address")
	}
	o.Progress = os.Stderr
	r, err := bench.RunIdle(ctx, o)
	if err != nil {
		return err
	}
	r.Print(os.Stdout)
	if jsonOut != "" {
		b, _ := json.MarshalIndent(r, "", "  ")
		if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func idleWorker(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wsbench idle-worker", flag.ContinueOnError)
	rawURL := fs.String("url", "", "")
	n := fs.Int("n", 0, "")
	source := fs.String("source", "", "")
	concurrency := fs.Int("concurrency", 32, "")
	loops := fs.Int("loops", 1, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*rawURL)
	if err != nil {
		return err
	}
	path := u.RequestURI()
	return bench.RunIdleWorker(ctx, u.Host, path, *n, net.ParseIP(*source), *concurrency, *loops, os.Stdout, os.Stdin)
}
