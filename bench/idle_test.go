package bench

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wsdproc"
)

// TestMain lets this test binary serve as its own client processes: the
// coordinator re-executes os.Executable() with "idle-worker".
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "idle-worker" {
		if err := workerMain(os.Args[2:]); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	code := m.Run()
	wsdproc.Cleanup() // the binary startWsd built
	os.Exit(code)
}

func workerMain(args []string) error {
	var url, source string
	var n, conc, loops int
	var subscribe string
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "-url":
			url = args[i+1]
		case "-source":
			source = args[i+1]
		case "-n":
			n = atoi(args[i+1])
		case "-concurrency":
			conc = atoi(args[i+1])
		case "-loops":
			loops = atoi(args[i+1])
		case "-subscribe":
			subscribe = args[i+1]
		}
	}
	host := url[len("ws://"):]
	path := "/"
	for i := range host {
		if host[i] == '/' {
			host, path = host[:i], host[i:]
			break
		}
	}
	return RunIdleWorker(context.Background(), host, path, n, net.ParseIP(source), conc, loops, subscribe, os.Stdout, os.Stdin)
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

// TestIdleRun runs a small idle measurement end to end: two client
// processes from two source addresses, pings answered, figures reported.
func TestIdleRun(t *testing.T) {
	srv := testserver.Start(t, engine.Config{PingInterval: 300 * time.Millisecond}, testserver.Route{Path: "/echo", Handler: engine.Echo{}})
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.WriteMetrics(w)
		metrics.WritePrometheus(w, true)
	}))
	defer admin.Close()

	r, err := RunIdle(context.Background(), IdleOptions{
		URL: "ws://" + srv.Addr().String() + "/echo", Admin: admin.URL,
		N: 300, PerProcess: 150, Source: net.ParseIP("127.0.0.2"), Concurrency: 8, Loops: 1,
		Settle: 300 * time.Millisecond, Hold: 1500 * time.Millisecond, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Print(io.Discard)
	if r.Connections != 300 || r.Processes != 2 || r.Failed != 0 || r.Dropped != 0 {
		t.Fatalf("result %+v", r)
	}
	if r.PingsDuringHold < 300 {
		t.Fatalf("%.0f pings during a 1.5 s hold with a 300 ms ping interval", r.PingsDuringHold)
	}
	if r.After.Open != 300 {
		t.Fatalf("the server had %.0f connections at the end of the hold; the clients' pongs should have kept all 300", r.After.Open)
	}
}
