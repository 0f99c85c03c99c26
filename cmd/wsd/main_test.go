package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/testserver"
	"github.com/wsdproject/wsd/internal/wsdproc"
	"github.com/wsdproject/wsd/internal/wstest"
)

func startRun(t *testing.T, args ...string) (ws, admin string, stop func() int, stderr *testserver.SyncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [2]string, 1)
	done := make(chan int, 1)
	stderr = &testserver.SyncBuffer{}
	go func() {
		done <- run(ctx, args, io.Discard, stderr, func(s *engine.Server, a net.Addr) {
			ready <- [2]string{s.Addr().String(), a.String()}
		})
	}()
	select {
	case a := <-ready:
		ws, admin = a[0], a[1]
	case code := <-done:
		cancel()
		t.Fatalf("wsd exited with %d: %s", code, stderr)
	case <-time.After(10 * time.Second):
		t.Fatal("wsd did not start")
	}
	var stopped bool
	var code int
	stop = func() int {
		if !stopped {
			stopped = true
			cancel()
			code = <-done
		}
		return code
	}
	t.Cleanup(func() { stop() })
	return ws, admin, stop, stderr
}

func runArgs(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code := run(ctx, args, io.Discard, &stderr, nil)
	return code, stderr.String()
}

// Bad flags, values, environment and config files: one line on stderr and
// a non-zero exit, before anything listens.
func TestBadConfiguration(t *testing.T) {
	dir := t.TempDir()
	unknownKey := filepath.Join(dir, "unknown.toml")
	os.WriteFile(unknownKey, []byte("listen = \"127.0.0.1:0\"\nping_interval = \"1s\"\n"), 0o644)
	badValue := filepath.Join(dir, "bad.toml")
	os.WriteFile(badValue, []byte("ping-interval = \"soon\"\n"), 0o644)
	badPolicy := filepath.Join(dir, "policy.toml")
	os.WriteFile(badPolicy, []byte("slow-consumer = \"block\"\n"), 0o644)
	unitless := filepath.Join(dir, "unitless.toml")
	os.WriteFile(unitless, []byte("drain-timeout = 30\n"), 0o644)
	unreadable := filepath.Join(dir, "secret.toml")
	os.WriteFile(unreadable, []byte("loops = 1\n"), 0o000)
	cases := []struct {
		name string
		args []string
		env  [2]string
		want string
	}{
		{"unknown flag", []string{"--bogus"}, [2]string{}, "flag provided but not defined: -bogus"},
		{"bad duration", []string{"--ping-interval", "soon"}, [2]string{},
			`invalid value "soon" for flag -ping-interval: parse error (a duration such as 500ms, 20s or 1m)`},
		{"bad env duration", nil, [2]string{"WSD_CLOSE_TIMEOUT", "5"}, "WSD_CLOSE_TIMEOUT (--close-timeout): parse error (a duration such as"},
		{"out of range", []string{"--loops", "1000"}, [2]string{}, "loops must be 1 to 255"},
		{"bad env", nil, [2]string{"WSD_MAX_MESSAGE_BYTES", "lots"}, "WSD_MAX_MESSAGE_BYTES"},
		{"missing config", []string{"--config", filepath.Join(dir, "nope.toml")}, [2]string{}, "nope.toml"},
		{"unknown config key", []string{"--config", unknownKey}, [2]string{}, `unknown key "ping_interval"`},
		{"bad config value", []string{"--config", badValue}, [2]string{}, `key "ping-interval": parse error (a duration such as`},
		{"unitless config duration", []string{"--config", unitless}, [2]string{}, `key "drain-timeout": parse error (a duration such as`},
		{"bad policy", []string{"--slow-consumer", "wait"}, [2]string{}, `-slow-consumer: invalid slow-consumer policy "wait": want close or drop`},
		{"bad env policy", nil, [2]string{"WSD_SLOW_CONSUMER", "Drop"}, `WSD_SLOW_CONSUMER (--slow-consumer): invalid slow-consumer policy "Drop": want close or drop`},
		{"bad config policy", []string{"--config", badPolicy}, [2]string{}, `key "slow-consumer": invalid slow-consumer policy "block": want close or drop`},
		// The engine checks the range: proof the value reaches it.
		{"outbound mark too small", []string{"--max-outbound-bytes", "1000"}, [2]string{}, "max outbound bytes must be 1 KiB to 1 GiB, got 1000"},
		// An address that cannot be one is a configuration error, not a
		// failure to bind (exit 1).
		{"listen without port", []string{"--listen", "nonsense"}, [2]string{},
			`invalid --listen "nonsense": missing port in address; want host:port, e.g. :8080`},
		{"listen port not a number", nil, [2]string{"WSD_LISTEN", "localhost:http"}, `invalid --listen "localhost:http": port "http" is not a number from 0 to 65535`},
		{"listen port too big", []string{"--listen", ":65536"}, [2]string{}, `invalid --listen ":65536": port "65536"`},
		{"listen empty", []string{"--listen", ""}, [2]string{}, `invalid --listen ""`},
		{"admin without port", []string{"--admin", "nonsense"}, [2]string{}, `invalid --admin "nonsense": missing port in address`},
		{"admin empty port", []string{"--admin", "127.0.0.1:"}, [2]string{}, `invalid --admin "127.0.0.1:": port ""`},
		{"admin too many colons", []string{"--admin", "::1:9090"}, [2]string{}, `invalid --admin "::1:9090": too many colons`},
		{"bad log level", []string{"--log-level", "loud"}, [2]string{}, "invalid --log-level"},
		{"bad echo path", []string{"--echo-path", "echo"}, [2]string{}, "invalid --echo-path"},
		{"negative cap", []string{"--max-conns", "-1"}, [2]string{}, "invalid --max-conns -1: out of range"},
		{"zero ban window", []string{"--ban-window", "0s"}, [2]string{}, "invalid --ban-window 0s: out of range"},
		{"bad trusted proxy", []string{"--trusted-proxies", "10.0.0.0/8,proxy.example"}, [2]string{}, `"proxy.example" is not an address or CIDR prefix`},
		{"PROXY protocol from nobody", []string{"--proxy-protocol"}, [2]string{}, "--proxy-protocol needs --trusted-proxies"},
		{"origin without scheme", []string{"--allowed-origins", "app.example.com"}, [2]string{}, `invalid origin "app.example.com": want scheme://host[:port]`},
		{"message rate too high", []string{"--max-messages-per-sec", "5000"}, [2]string{}, "message rate must be 0 to 1000 per second, got 5000"},
		{"byte rate too low for the message size", []string{"--max-inbound-bytes-per-sec", "100"}, [2]string{},
			"max inbound bytes per second 100 is too low for max message bytes 1048576"},
		{"stray argument", []string{"serve"}, [2]string{}, `unexpected argument "serve"`},
		{"admin page without the API", []string{"--admin-ui"}, [2]string{}, "--admin-ui needs --admin and --api-key"},
		{"unknown broker", []string{"--broker", "kafka"}, [2]string{}, `invalid --broker "kafka": want memory or redis`},
		{"redis address without port", []string{"--redis-addr", "10.0.0.1:6379,redis"}, [2]string{}, `invalid --redis-addr "redis": missing port in address`},
		{"redis address empty", nil, [2]string{"WSD_REDIS_ADDR", " , "}, "invalid --redis-addr: no address"},
		{"redis prefix with a hash tag", []string{"--redis-prefix", "a{b}"}, [2]string{}, `invalid --redis-prefix "a{b}"`},
		{"redis prefix empty", []string{"--redis-prefix", ""}, [2]string{}, `invalid --redis-prefix ""`},
		{"presence ttl too short", []string{"--redis-presence-ttl", "10ms"}, [2]string{}, "invalid --redis-presence-ttl 10ms: at least 300ms (default 1m0s)"},
		{"node ttl zero", []string{"--redis-node-ttl", "0s"}, [2]string{}, "invalid --redis-node-ttl 0s: must be greater than 0 (default 15s)"},
		{"CA without TLS", []string{"--redis-tls-ca", "/etc/hostname"}, [2]string{}, "--redis-tls-ca needs --redis-tls"},
		{"CA not PEM", []string{"--redis-tls", "--redis-tls-ca", unitless}, [2]string{}, "no PEM certificate in it"},
		{"bad advertise address", []string{"--advertise-addr", "node-1"}, [2]string{}, `invalid --advertise-addr "node-1"`},
	}
	if os.Geteuid() != 0 { // root reads any file
		cases = append(cases, struct {
			name string
			args []string
			env  [2]string
			want string
		}{"unreadable config", []string{"--config", unreadable}, [2]string{}, "permission denied"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env[0] != "" {
				t.Setenv(tc.env[0], tc.env[1])
			}
			code, stderr := runArgs(t, tc.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (configuration error); stderr %q", code, stderr)
			}
			if lines := strings.Count(strings.TrimSpace(stderr), "\n") + 1; lines != 1 {
				t.Fatalf("%d lines on stderr, want one:\n%s", lines, stderr)
			}
			if !strings.HasPrefix(stderr, "wsd: ") || !strings.Contains(stderr, tc.want) {
				t.Fatalf("stderr %q, want it to mention %q", stderr, tc.want)
			}
		})
	}
}

// TestZeroRefused: the engine reads 0 as "the default"; wsd must refuse 0
// and negative values instead of passing them on, from a flag, a variable
// or the file. --loops 0 keeps its meaning, one loop per CPU.
func TestZeroRefused(t *testing.T) {
	for _, name := range []string{"ping-interval", "max-missed-pongs", "max-message-bytes", "handshake-timeout",
		"close-timeout", "max-handshake-bytes", "max-outbound-bytes", "max-broadcast-backlog", "drain-timeout", "redis-timeout"} {
		negative := "-1"
		if strings.HasSuffix(name, "-interval") || strings.HasSuffix(name, "-timeout") {
			negative = "-1s"
		}
		file := filepath.Join(t.TempDir(), "wsd.toml")
		os.WriteFile(file, []byte(name+" = 0\n"), 0o644)
		for _, tc := range []struct {
			how  string
			args []string
			env  string
		}{
			{"flag 0", []string{"--" + name, "0"}, ""},
			{"flag " + negative, []string{"--" + name + "=" + negative}, ""},
			{"env 0", nil, "0"},
			{"file 0", []string{"--config", file}, ""},
		} {
			t.Run(name+"/"+tc.how, func(t *testing.T) {
				if tc.env != "" {
					t.Setenv(envName(name), tc.env)
				}
				// Addresses of their own, in case the value is let through.
				code, stderr := runArgs(t, append([]string{"--listen", "127.0.0.1:0", "--admin", ""}, tc.args...)...)
				if code != 2 {
					t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
				}
				if strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.HasPrefix(stderr, "wsd: invalid --"+name+" ") ||
					!strings.Contains(stderr, "must be greater than 0 (default ") {
					t.Fatalf("stderr %q", stderr)
				}
			})
		}
	}
	c, err := parseConfig([]string{"--loops", "0"}, io.Discard)
	if err != nil {
		t.Fatalf("--loops 0: %v", err)
	}
	if c.engine.Loops != 0 {
		t.Fatalf("--loops 0 gave %d", c.engine.Loops)
	}
}

var versionRE = regexp.MustCompile(`^wsd \S+ \(commit \S+, \S+( unknown)?(, modified)?\) go\S+ \S+/\S+\n$`)

func TestVersion(t *testing.T) {
	t.Setenv("WSD_VERSION", "1.2.3") // not a setting: neither asks for the version nor is refused
	for _, args := range [][]string{{"--version"}, {"-version"}, {"--listen", "127.0.0.1:0", "--version"}, {"--version=true"}} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut, nil); code != 0 {
			t.Fatalf("%v: exit %d, stderr %q", args, code, errOut.String())
		}
		if !versionRE.MatchString(out.String()) || !strings.Contains(out.String(), runtime.GOOS+"/"+runtime.GOARCH) || errOut.Len() != 0 {
			t.Fatalf("%v: stdout %q, stderr %q", args, out.String(), errOut.String())
		}
	}
	// By the flag package's rules, here --version is the echo path's value.
	if wantsVersion([]string{"--echo-path", "--version"}) {
		t.Fatal("--echo-path --version asks for the version")
	}
	if _, err := parseConfig(nil, io.Discard); err != nil {
		t.Fatalf("with WSD_VERSION set: %v", err)
	}

	if testing.Short() {
		return
	}
	out, err := exec.Command(wsdproc.Binary(t), "--version").Output()
	if err != nil || !versionRE.Match(out) {
		t.Fatalf("wsd --version: %q, %v", out, err)
	}
}

func TestVersionLine(t *testing.T) {
	platform := " " + runtime.GOOS + "/" + runtime.GOARCH
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/wsdproject/wsd", Version: "v0.0.0-20261127100000-abc1234def56+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "-buildmode", Value: "exe"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "abc1234def5678901234567890abcdef12345678"},
			{Key: "vcs.time", Value: "2026-11-27T10:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	clean := *stamped
	clean.Settings = append([]debug.BuildSetting(nil), stamped.Settings...)
	clean.Settings[4].Value = "false"
	bare := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/wsdproject/wsd", Version: "(devel)"}}
	for _, tc := range []struct {
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{stamped, true, "wsd v0.0.0-20261127100000-abc1234def56+dirty (commit abc1234, 2026-11-27T10:00:00Z, modified) go1.26.8" + platform},
		{&clean, true, "wsd v0.0.0-20261127100000-abc1234def56+dirty (commit abc1234, 2026-11-27T10:00:00Z) go1.26.8" + platform},
		{bare, true, "wsd (devel) (commit unknown, time unknown) go1.26.8" + platform},
		{nil, false, "wsd unknown (commit unknown, time unknown) " + runtime.Version() + platform},
	} {
		if got := versionLine(tc.bi, tc.ok); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

func TestBusyPorts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := ln.Addr().String()
	for _, args := range [][]string{
		{"--listen", busy, "--admin", "127.0.0.1:0"},
		{"--listen", "127.0.0.1:0", "--admin", busy},
	} {
		code, stderr := runArgs(t, args...)
		if code != 1 || !strings.Contains(stderr, "address already in use") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Fatalf("%v: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	code := run(context.Background(), []string{"--help"}, &out, io.Discard, nil)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--listen", "WSD_LISTEN", "--ping-interval", "default 30s", "WSD_MAX_MESSAGE_BYTES", "default 1048576", "--echo-path", "--config"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "WSD_VERSION") {
		t.Error("--help offers WSD_VERSION; --version is not a setting")
	}
	// Each flag's own entry, so that a default or variable shown under
	// another flag does not count.
	for name, wants := range map[string][]string{
		"loops":                 {"0 means one per CPU", "(default 0; env WSD_LOOPS)"},
		"max-outbound-bytes":    {"(default 1048576; env WSD_MAX_OUTBOUND_BYTES)", "--slow-consumer"},
		"slow-consumer":         {"(default close; env WSD_SLOW_CONSUMER)", "close (", "drop (", "--max-outbound-bytes"},
		"max-broadcast-backlog": {"(default 67108864; env WSD_MAX_BROADCAST_BACKLOG)", "refused"},
		"version":               {"print the version"},
	} {
		entry := helpEntry(out.String(), name)
		if entry == "" {
			t.Errorf("--help has no entry for --%s", name)
			continue
		}
		for _, want := range wants {
			if !strings.Contains(entry, want) {
				t.Errorf("--help entry for --%s lacks %q:\n%s", name, want, entry)
			}
		}
	}
}

// helpEntry returns the lines --help gives the flag name: its own line and
// the indented ones below it.
func helpEntry(help, name string) string {
	_, rest, ok := strings.Cut(help, "\n  --"+name+"\n")
	if !ok {
		return ""
	}
	if i := strings.Index(rest, "\n  --"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// TestLogDurations: durations are logged as "30s" in both formats, at the
// top level and in groups, also when given as slog.Any.
func TestLogDurations(t *testing.T) {
	for format, want := range map[string][]string{
		"json": {`"drain_timeout":"30s"`, `"g":{"tick":"1.5ms"}`, `"any":"2m0s"`},
		"text": {`drain_timeout=30s`, `g.tick=1.5ms`, `any=2m0s`},
	} {
		var out bytes.Buffer
		log := newLogger(&out, format, slog.LevelInfo)
		log.Info("x", "drain_timeout", 30*time.Second, slog.Group("g", "tick", 1500*time.Microsecond), slog.Any("any", 2*time.Minute))
		for _, w := range want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: %q lacks %q", format, out.String(), w)
			}
		}
	}
}

// TestPrecedence: flags beat WSD_* variables, which beat the config file.
func TestPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "wsd.toml")
	os.WriteFile(file, []byte("ping-interval = \"7s\"\nmax-missed-pongs = 5\nloops = 3\nsubprotocols = [\"a\", \"b\"]\n"+
		"slow-consumer = \"drop\"\nmax-outbound-bytes = 4096\n"), 0o644)
	t.Setenv("WSD_MAX_MISSED_PONGS", "6")
	t.Setenv("WSD_LOOPS", "4")
	t.Setenv("WSD_MAX_OUTBOUND_BYTES", "8192")
	c, err := parseConfig([]string{"--config", file, "--loops", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.engine.PingInterval != 7*time.Second || c.engine.MaxMissedPongs != 6 || c.engine.Loops != 2 {
		t.Fatalf("got ping %v, missed %d, loops %d", c.engine.PingInterval, c.engine.MaxMissedPongs, c.engine.Loops)
	}
	if c.engine.SlowConsumer != engine.SlowConsumerDrop || c.engine.MaxOutboundBytes != 8192 {
		t.Fatalf("got slow consumer %v, max outbound bytes %d", c.engine.SlowConsumer, c.engine.MaxOutboundBytes)
	}
	c, err = parseConfig([]string{"--slow-consumer", "close", "--max-outbound-bytes", "2048", "--config", file}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.engine.SlowConsumer != engine.SlowConsumerClose || c.engine.MaxOutboundBytes != 2048 {
		t.Fatalf("flags: got slow consumer %v, max outbound bytes %d", c.engine.SlowConsumer, c.engine.MaxOutboundBytes)
	}
	if p := c.protocols(); len(p) != 2 || p[0] != "a" || p[1] != "b" {
		t.Fatalf("subprotocols %v", p)
	}
}

// TestSettingsLog: wsd logs every setting once, in one line, with the
// values in effect (engine defaults applied) and durations as text.
func TestSettingsLog(t *testing.T) {
	_, _, stop, stderr := startRun(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json",
		"--slow-consumer", "drop", "--max-outbound-bytes", "4096", "--close-timeout", "1500ms")
	stop()
	var lines []string
	for line := range strings.Lines(stderr.String()) {
		if strings.Contains(line, `"msg":"settings"`) {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d settings lines, want 1:\n%s", len(lines), stderr)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("%v: %s", err, lines[0])
	}
	if got["level"] != "INFO" {
		t.Errorf("level %v", got["level"])
	}
	delete(got, "time")
	delete(got, "level")
	delete(got, "msg")
	newFlagSet(&config{}).VisitAll(func(f *flag.Flag) {
		if _, ok := got[f.Name]; !ok {
			t.Errorf("no %q in the settings line", f.Name)
		}
		delete(got, f.Name)
	})
	if len(got) != 0 {
		t.Errorf("settings line has more than the flags: %v", got)
	}
	json.Unmarshal([]byte(lines[0]), &got)
	for k, want := range map[string]any{
		"loops":              float64(runtime.NumCPU()), // the engine's count, not the flag's 0
		"ping-interval":      "30s",
		"close-timeout":      "1.5s",
		"drain-timeout":      "10s",
		"slow-consumer":      "drop",
		"max-outbound-bytes": float64(4096),
		"listen":             "127.0.0.1:0",
		"admin":              "127.0.0.1:0",
		"compression":        false,
		"subprotocols":       "wsd.json,wsd.msgpack",
	} {
		if got[k] != want {
			t.Errorf("%s: got %#v, want %#v", k, got[k], want)
		}
	}
}

// TestSettingsSecrets: a setting whose name says it is a credential shows
// only whether it is set.
func TestSettingsSecrets(t *testing.T) {
	c, err := parseConfig(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c.flags.String("admin-token", "", "")
	c.flags.String("tls-key-password", "", "")
	c.flags.Set("admin-token", "hunter2")
	var out bytes.Buffer
	newLogger(&out, "text", slog.LevelInfo).LogAttrs(context.Background(), slog.LevelInfo, "settings", c.settings(engine.Defaults())...)
	if strings.Contains(out.String(), "hunter2") || !strings.Contains(out.String(), "admin-token=[masked]") ||
		!strings.Contains(out.String(), `tls-key-password=""`) {
		t.Fatalf("settings line: %s", out.String())
	}
}

func TestAdminAndShutdown(t *testing.T) {
	ws, admin, stop, _ := startRun(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--loops", "2", "--echo-path", "/echo")
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}
	c := wstest.Dial(t, ws, "/ws", wstest.Options{})
	c.Send(frame.OpText, []byte(`{"type":"echo","data":[1]}`))
	if _, got, err := c.ReadMessage(); err != nil || string(got) != `{"type":"echo_reply","data":[1]}` {
		t.Fatalf("/ws echo: %q %v", got, err)
	}
	e := wstest.Dial(t, ws, "/echo", wstest.Options{})
	e.Send(frame.OpBinary, []byte{1, 2, 3})
	if _, got, err := e.ReadMessage(); err != nil || !bytes.Equal(got, []byte{1, 2, 3}) {
		t.Fatalf("/echo: %v %v", got, err)
	}
	_, m := get("/metrics")
	for _, want := range []string{
		"wsd_connections_open 2", "wsd_handshakes_total 2", "wsd_messages_in_total 2", "wsd_messages_out_total 2",
		"wsd_bytes_in_total", "wsd_pings_sent_total 0", `wsd_handshake_failures_total{reason="not_found"} 0`,
		"go_goroutines", "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes",
		"\nprocess_open_fds ", "\nprocess_max_fds ", "\nwsd_go_heap_live_bytes ",
		"\n# TYPE process_open_fds gauge\n", "\n# TYPE process_max_fds gauge\n", "\n# TYPE go_goroutines gauge\n",
		"\n# HELP wsd_go_heap_live_bytes Bytes of Go heap objects", "\n# TYPE wsd_go_heap_live_bytes gauge\n",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// A second HELP or TYPE line for a family makes Prometheus reject the
	// scrape.
	seen := map[string]int{}
	for line := range strings.Lines(m) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && (f[1] == "HELP" || f[1] == "TYPE") {
			if seen[f[1]+" "+f[2]]++; seen[f[1]+" "+f[2]] == 2 {
				t.Errorf("/metrics: a second %s line for %s", f[1], f[2])
			}
		}
	}

	// Shutdown: every client gets 1001 and the exit code is 0.
	codeCh := make(chan int, 1)
	go func() { codeCh <- stop() }()
	for _, cl := range []*wstest.Client{c, e} {
		_, _, err := cl.ReadMessage()
		if fe, ok := err.(*frame.Error); !ok || fe.Code != frame.CloseGoingAway {
			t.Fatalf("want close 1001, got %v", err)
		}
		cl.Send(frame.OpClose, []byte{0x03, 0xe9})
	}
	if code := <-codeCh; code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestBinarySignals runs the real binary: SIGTERM closes clients with 1001
// and the process exits 0; /readyz turns 503 while it drains.
func TestBinarySignals(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := wsdproc.Binary(t)
	start := func(t *testing.T) (*exec.Cmd, string, string) {
		cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json",
			"--drain-timeout", "30s", "--close-timeout", "30s")
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		sc := bufio.NewScanner(stderr)
		var ws, admin string
		for (ws == "" || admin == "") && sc.Scan() {
			line := sc.Text()
			if strings.Contains(line, `"msg":"listening"`) {
				ws = jsonField(line, "addr")
			}
			if strings.Contains(line, `"msg":"admin listening"`) {
				admin = jsonField(line, "addr")
			}
		}
		go io.Copy(io.Discard, stderr)
		if ws == "" || admin == "" {
			t.Fatalf("no listening lines (ws %q admin %q)", ws, admin)
		}
		return cmd, ws, admin
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, ws, admin := start(t)
			c := wstest.Dial(t, ws, "/ws", wstest.Options{})
			cmd.Process.Signal(sig)
			_, _, err := c.ReadMessage()
			if fe, ok := err.(*frame.Error); !ok || fe.Code != frame.CloseGoingAway {
				t.Fatalf("want close 1001, got %v", err)
			}
			// The admin server stays up until the drain ends, which this
			// client holds open: /readyz must answer, and answer 503.
			resp, err := http.Get("http://" + admin + "/readyz")
			if err != nil {
				t.Fatalf("/readyz while draining: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				t.Fatalf("/readyz while draining: %d, want 503", resp.StatusCode)
			}
			c.Send(frame.OpClose, []byte{0x03, 0xe9})
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit: %v", err)
			}
		})
	}
	// A client that never answers would hold the drain for 30 s; a second
	// signal ends it at once.
	t.Run("second signal", func(t *testing.T) {
		cmd, ws, _ := start(t)
		c := wstest.Dial(t, ws, "/ws", wstest.Options{})
		cmd.Process.Signal(syscall.SIGTERM)
		if _, _, err := c.ReadMessage(); err == nil {
			t.Fatal("no close frame")
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		cmd.Process.Signal(syscall.SIGTERM) // a duplicate delivery: ignored
		select {
		case err := <-done:
			t.Fatalf("exited on a duplicate signal: %v", err)
		case <-time.After(1100 * time.Millisecond):
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("still draining 10 s after the second signal")
		}
	})
}

func TestMain(m *testing.M) {
	code := m.Run()
	wsdproc.Cleanup()
	os.Exit(code)
}

func jsonField(line, key string) string {
	i := strings.Index(line, `"`+key+`":"`)
	if i < 0 {
		return ""
	}
	rest := line[i+len(key)+4:]
	return rest[:strings.IndexByte(rest, '"')]
}

// TestPrintConfig: --print-config prints every setting as wsd would use it,
// as a TOML file that --config reads back to the same settings, with
// secrets left out.
func TestPrintConfig(t *testing.T) {
	print := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := run(context.Background(), append(args, "--print-config"), &out, &errOut, nil); code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
		return out.String()
	}
	first := print("--api-key", "hunter2", "--redis-password", "hunter3", "--broker", "redis", "--redis-addr", "10.0.0.1:6379, 10.0.0.2:6379", "--trusted-proxies", "10.0.0.0/8, 192.0.2.1", "--max-messages-per-sec", "50",
		"--allowed-origins", "https://*.example.com", "--namespace", "room:presence",
		"--token-cache", "500", "--token-cookie", "wsd_token")
	for _, want := range []string{
		"token-cache = 500\n", `token-cookie = "wsd_token"` + "\n", // named like secrets, but not: kept for the read-back
		"max-messages-per-sec = 50\n", "message-burst = 100\n", // the effective burst, not the 0 that means "default"
		`trusted-proxies = "10.0.0.0/8,192.0.2.1/32"` + "\n", `ping-interval = "30s"` + "\n",
		"# api-key = (set; masked)\n", "# redis-password = (set; masked)\n",
		`broker = "redis"` + "\n", `redis-addr = "10.0.0.1:6379, 10.0.0.2:6379"` + "\n", `redis-prefix = "wsd"` + "\n",
	} {
		if !strings.Contains(first, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, first)
		}
	}
	if strings.Contains(first, "hunter2") || strings.Contains(first, "hunter3") {
		t.Fatal("--print-config shows the API key or the Redis password")
	}
	if !regexp.MustCompile(`(?m)^max-conns = [1-9][0-9]*$`).MatchString(first) {
		t.Errorf("max-conns not resolved from the open-file limit:\n%s", first)
	}
	file := filepath.Join(t.TempDir(), "wsd.toml")
	if err := os.WriteFile(file, []byte(first), 0o600); err != nil {
		t.Fatal(err)
	}
	if again := print("--config", file, "--api-key", "hunter2", "--redis-password", "hunter3"); again != first {
		t.Fatalf("read back, the settings differ:\n%s\nthen:\n%s", first, again)
	}
}

// TestPprof: /debug/pprof/ is on the admin listener with --pprof only.
func TestPprof(t *testing.T) {
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, http.StatusNotFound},
		{[]string{"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--pprof"}, http.StatusOK},
	} {
		_, admin, stop, _ := startRun(t, c.args...)
		resp, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%v: /debug/pprof/goroutine %d, want %d", c.args, resp.StatusCode, c.want)
		}
		stop()
	}
}
