package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/wsdproject/wsd/sysctl"
)

// doctorUsage is the top of wsd doctor -h.
const doctorUsage = `Usage: wsd doctor --conns N [--procs K] [--local-clients] [--json]

wsd doctor reads this host's limits (open-file rlimits, fs.file-max,
fs.nr_open, memory and the memory cgroup, tcp_mem, listen backlogs,
conntrack, the ephemeral port range, threads) and says line by line what N
concurrent WebSocket connections would hit, with the memory they take by
the per-connection figures wsd was measured at. Run it as the user, and in
the container, wsd will run as.

Exit status: 0 when the host is ready (WARN lines alone included), 1 when
a line is FAIL, 2 for a usage error.

Flags:
`

// flagValueError is flag's message for a value that does not parse.
var flagValueError = regexp.MustCompile(`^invalid value "(.*)" for flag -(\S+): parse error$`)

// runDoctor is wsd doctor; it returns the exit code.
func runDoctor(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wsd doctor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var p sysctl.Plan
	var asJSON bool
	var root string
	fs.Int64Var(&p.Conns, "conns", 0, "concurrent WebSocket connections to check for, all wsd processes together (required)")
	fs.Int64Var(&p.Procs, "procs", 1, "wsd processes sharing the connections on one port (--reuse-port)")
	fs.BoolVar(&p.LocalClients, "local-clients", false, "the clients run on this host too (a loopback benchmark): twice the sockets, and their ports")
	fs.BoolVar(&asJSON, "json", false, "print the findings as JSON")
	fs.StringVar(&root, "root", "/", "read the host from this directory instead of / (its proc/ and sys/; for tests)")
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		io.WriteString(stdout, doctorUsage)
		fs.VisitAll(func(f *flag.Flag) {
			def := ""
			if f.DefValue != "0" && f.DefValue != "false" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(stdout, "  --%s\n        %s%s\n", f.Name, f.Usage, def)
		})
		return 0
	}
	if err != nil {
		msg := err.Error()
		if m := flagValueError.FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("invalid --%s %q: want a whole number", m[2], m[1])
		}
		if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
			msg = "unknown flag --" + name
		}
		fmt.Fprintf(stderr, "wsd doctor: %s (see wsd doctor -h)\n", msg)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsd doctor: unexpected argument %q (see wsd doctor -h)\n", fs.Arg(0))
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["conns"] {
		fmt.Fprintln(stderr, "wsd doctor: --conns N is required: the connections to check for (see wsd doctor -h)")
		return 2
	}
	if err := p.Validate(); err != nil {
		fmt.Fprintf(stderr, "wsd doctor: %v\n", err)
		return 2
	}
	h, err := sysctl.ReadHost(root)
	if err != nil {
		fmt.Fprintf(stderr, "wsd doctor: %v\n", err)
		return 1
	}
	findings := sysctl.Check(h, p)
	code := 0
	if sysctl.Failed(findings) {
		code = 1
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(struct {
			Conns        int64            `json:"conns"`
			Procs        int64            `json:"procs"`
			LocalClients bool             `json:"local_clients"`
			Root         string           `json:"root"`
			Ready        bool             `json:"ready"`
			Memory       sysctl.Memory    `json:"memory_bytes"`
			Unread       []string         `json:"unread,omitempty"`
			Findings     []sysctl.Finding `json:"findings"`
		}{p.Conns, p.Procs, p.LocalClients, root, code == 0, sysctl.EstimateMemory(p), h.Missing, findings})
		return code
	}
	writeDoctor(stdout, h, p, findings)
	return code
}

// writeDoctor writes the report: a header, a line per finding (with what
// it is and, for WARN and FAIL, the fix under it), a summary.
func writeDoctor(w io.Writer, h sysctl.Host, p sysctl.Plan, findings []sysctl.Finding) {
	where := "one wsd process"
	if p.Procs > 1 {
		where = fmt.Sprintf("%d wsd processes (%d each)", p.Procs, p.PerProc())
	}
	clients := "clients elsewhere"
	if p.LocalClients {
		clients = "clients on this host too"
	}
	fmt.Fprintf(w, "wsd doctor: %d WebSocket connections, %s, %s; host read from %s\n", p.Conns, where, clients, h.Root)
	fmt.Fprintf(w, "per connection: wsd %s idle (%s subscribed to a channel), kernel %s per TCP socket, a local client %s; %s per wsd process\n",
		sysctl.Bytes(sysctl.ServerBytesPerConn), sysctl.Bytes(sysctl.ServerBytesPerSubscribedConn), sysctl.Bytes(sysctl.KernelBytesPerSocket),
		sysctl.Bytes(sysctl.ClientBytesPerConn), sysctl.Bytes(sysctl.ProcessBaseBytes))
	fmt.Fprintln(w, "not seen from here: limits of whatever starts wsd (a systemd unit's LimitNOFILE=, another container's),")
	fmt.Fprintln(w, "  firewall rules that would make conntrack track, memory other programs will take, NIC and load balancer limits")
	if h.CgroupLimit != sysctl.Unknown {
		fmt.Fprintf(w, "memory cgroup %s: limit %s, %s used (page cache included)\n", h.CgroupPath, sysctl.Bytes(h.CgroupLimit), sysctl.Bytes(h.CgroupUsage))
	}
	if len(h.Missing) > 0 {
		fmt.Fprintf(w, "could not read: %s\n", strings.Join(h.Missing, ", "))
	}
	fmt.Fprintln(w)
	kw, hw := 0, 0
	for _, f := range findings {
		kw = max(kw, len([]rune(f.Key)))
		hw = max(hw, len([]rune(f.Have)))
	}
	for _, f := range findings {
		fmt.Fprintf(w, "%-4s  %s  %s  need %s\n", f.Level, pad(f.Key, kw), pad(f.Have, hw), f.Need)
		fmt.Fprintf(w, "      %s\n", f.What)
		if f.Fix != "" && f.Level != sysctl.OK {
			fmt.Fprintf(w, "      fix: %s\n", f.Fix)
		}
	}
	fmt.Fprintln(w)
	nf, nw := sysctl.Count(findings, sysctl.FAIL), sysctl.Count(findings, sysctl.WARN)
	if nf > 0 {
		fmt.Fprintf(w, "not ready for %d connections: %d FAIL, %d WARN\n", p.Conns, nf, nw)
	} else {
		fmt.Fprintf(w, "ready for %d connections: 0 FAIL, %d WARN\n", p.Conns, nw)
	}
}

func pad(s string, n int) string {
	return s + strings.Repeat(" ", max(n-len([]rune(s)), 0))
}
