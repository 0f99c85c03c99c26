package sysctl

import (
	"encoding/json"
	"fmt"
	"strings"
)

// What one connection costs, in one place: measured on the project's
// test host (2 CPUs, 24 GiB, Linux 6.18), 2026-11-27, by
// `TUNE=1 bench/run-1m.sh` (1,000,000 idle connections over 59 wsd
// processes; bench/results/1m-2026-11-27) unless said otherwise. Change
// them here and every estimate follows.
const (
	// ServerBytesPerConn is wsd's user-space memory (RSS growth) per idle
	// connection at about 17,000 connections per process. (One process
	// with 19,000: 786 B, `bin/wsbench idle -n 19000`.)
	ServerBytesPerConn = 1001
	// ServerBytesPerSubscribedConn is the same for a connection
	// subscribed to one channel (`bin/wsbench idle -n 19000 -subscribe
	// news`: 1069 B, one process; plus the same per-process share as
	// above).
	ServerBytesPerSubscribedConn = 1069 + (1001 - 786)
	// KernelBytesPerSocket is the kernel's memory per idle TCP socket
	// (struct sock, inode, dentry, file, epoll entry): /proc/meminfo's
	// Slab growth, 10,051 B per loopback connection (two sockets), halved.
	KernelBytesPerSocket = 10051 / 2
	// ClientBytesPerConn is a load-generating client's user-space memory
	// per connection when the clients run on this host: wsbench's RSS
	// (its event-driven idle clients, runtimes included), 1,547 B.
	ClientBytesPerConn = 1547
	// ProcessBaseBytes is the RSS of one wsd process before any
	// connection (runtime, event loops, metrics): 12.2 MiB measured
	// (722.6 MiB over 59 processes).
	ProcessBaseBytes = 12 << 20

	// FDReserve is the descriptors wsd keeps for everything but clients:
	// its default --max-conns is the open-file soft limit minus this.
	FDReserve = 128
	// ThreadsPerProc is about how many threads one wsd process runs.
	ThreadsPerProc = 10
	// FileMaxMargin is file handles left for everything else on the host
	// above the connections and what is allocated now.
	FileMaxMargin = 65536
	// BacklogMin is the least somaxconn, tcp_max_syn_backlog and
	// netdev_max_backlog that ride out a reconnect storm's accept burst.
	BacklogMin = 4096
	// EhashChainMax is the most sockets per established-hash bucket, on
	// average, not warned about.
	EhashChainMax = 2
	// PortRangeMin is the narrowest ephemeral port range not warned about.
	PortRangeMin = 10000
	// PageBytes is the size of the pages tcp_mem counts in.
	PageBytes = 4096
	// MaxConns is the most connections a plan may ask about (the
	// estimates stay far from overflowing).
	MaxConns = 1_000_000_000
	// MemoryWarnFraction: more than this share of the available memory
	// needed is a warning.
	MemoryWarnFraction = 0.8
)

// Profile is what the project's sysctl profile (sysctl/99-wsd.conf,
// installed by sysctl/apply --apply) sets; the fix hints quote it.
var Profile = map[string]string{
	"net.core.somaxconn":             "65535",
	"net.ipv4.tcp_max_syn_backlog":   "65535",
	"net.core.netdev_max_backlog":    "65536",
	"fs.file-max":                    "4194304",
	"fs.nr_open":                     "4194304",
	"net.ipv4.ip_local_port_range":   "1024 65535",
	"net.netfilter.nf_conntrack_max": "2097152",
	"net.ipv4.tcp_mem":               "1572864 2097152 3145728",
	"net.ipv4.tcp_tw_reuse":          "1",
}

// applyHint is the fix for a sysctl the profile sets.
func applyHint(key string) string {
	return fmt.Sprintf("sysctl/apply --apply (sets %s to %s)", key, Profile[key])
}

// Level is how a finding stands.
type Level int

const (
	OK Level = iota
	WARN
	FAIL
)

func (l Level) String() string {
	switch l {
	case OK:
		return "OK"
	case WARN:
		return "WARN"
	case FAIL:
		return "FAIL"
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// MarshalText writes the level as OK, WARN or FAIL (in JSON too).
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads OK, WARN or FAIL.
func (l *Level) UnmarshalText(b []byte) error {
	for _, v := range []Level{OK, WARN, FAIL} {
		if string(b) == v.String() {
			*l = v
			return nil
		}
	}
	return fmt.Errorf("unknown level %q", b)
}

// Finding is one line of the doctor's report.
type Finding struct {
	Level Level  `json:"level"`
	Key   string `json:"key"`           // the sysctl or limit, e.g. fs.nr_open
	Have  string `json:"have"`          // its value on the host
	Need  string `json:"need"`          // what the plan needs of it
	What  string `json:"what"`          // what it is and why it matters here
	Fix   string `json:"fix,omitempty"` // how to fix it, for WARN and FAIL
}

// Plan is what the host is checked for.
type Plan struct {
	Conns        int64 // concurrent WebSocket connections, all processes together
	Procs        int64 // wsd processes sharing them (--reuse-port), at least 1
	LocalClients bool  // the clients run on this host too (a loopback benchmark)
}

// Validate says what is wrong with the plan, if anything.
func (p Plan) Validate() error {
	if p.Conns < 1 {
		return fmt.Errorf("--conns %d: want 1 or more connections", p.Conns)
	}
	if p.Conns > MaxConns {
		return fmt.Errorf("--conns %d: at most %d", p.Conns, MaxConns)
	}
	if p.Procs < 1 {
		return fmt.Errorf("--procs %d: want 1 or more wsd processes", p.Procs)
	}
	if p.Procs > p.Conns {
		return fmt.Errorf("--procs %d is more than --conns %d", p.Procs, p.Conns)
	}
	return nil
}

// PerProc is the connections one wsd process holds: N/K rounded up.
func (p Plan) PerProc() int64 { return ceilDiv(p.Conns, p.Procs) }

// NofileNeed is the open-file limit one wsd process needs: its
// connections and the FDReserve.
func (p Plan) NofileNeed() int64 { return p.PerProc() + FDReserve }

// Sockets is the TCP sockets on this host: one per connection, two with
// the clients here as well.
func (p Plan) Sockets() int64 {
	if p.LocalClients {
		return 2 * p.Conns
	}
	return p.Conns
}

// Memory is the estimate of what the plan takes, in bytes.
type Memory struct {
	Server  int64 `json:"server"`  // wsd's user space: connections and K process bases
	Kernel  int64 `json:"kernel"`  // the kernel's sockets
	Clients int64 `json:"clients"` // the clients' user space, when local
}

// Total is the sum.
func (m Memory) Total() int64 { return m.Server + m.Kernel + m.Clients }

// EstimateMemory is what the plan takes by the per-connection figures.
func EstimateMemory(p Plan) Memory {
	m := Memory{
		Server: p.Conns*ServerBytesPerConn + p.Procs*ProcessBaseBytes,
		Kernel: p.Sockets() * KernelBytesPerSocket,
	}
	if p.LocalClients {
		m.Clients = p.Conns * ClientBytesPerConn
	}
	return m
}

// Available is the memory the plan may use: MemAvailable, or what the
// memory cgroup has left if that is less. Unknown if neither was read.
func (h Host) Available() int64 {
	avail := h.MemAvailable
	if h.CgroupLimit != Unknown {
		left := h.CgroupLimit - max(h.CgroupUsage, 0)
		if avail == Unknown || left < avail {
			avail = max(left, 0)
		}
	}
	return avail
}

// Failed reports whether any finding is a FAIL.
func Failed(fs []Finding) bool {
	for _, f := range fs {
		if f.Level == FAIL {
			return true
		}
	}
	return false
}

// Count returns how many findings have level l.
func Count(fs []Finding, l Level) int {
	n := 0
	for _, f := range fs {
		if f.Level == l {
			n++
		}
	}
	return n
}

// JSON is the findings as the --json output writes them.
func JSON(fs []Finding) ([]byte, error) { return json.MarshalIndent(fs, "", "  ") }

// Check says, limit by limit, what the plan would hit on the host. The
// plan must be valid (Plan.Validate).
func Check(h Host, p Plan) []Finding {
	var out []Finding
	add := func(f Finding) { out = append(out, f) }
	n, k := p.Conns, p.Procs

	// Open files per process.
	need := p.NofileNeed()
	switch {
	case h.NofileHard == Unknown:
		add(unread("RLIMIT_NOFILE hard", "proc/self/limits"))
	case h.NofileHard < need:
		fix := fmt.Sprintf("raise the hard limit to ≥ %d, at most fs.nr_open (LimitNOFILE= in the unit: deploy/systemd/wsd.service sets it, sysctl/wsd-limits.conf is a drop-in for others; sysctl/limits.conf for login sessions)", need)
		if h.NofileHard > FDReserve {
			minK := ceilDiv(n, h.NofileHard-FDReserve)
			fix += fmt.Sprintf(", or run --procs %d wsd processes with --reuse-port (each then holds %d connections)", minK, ceilDiv(n, minK))
		}
		add(Finding{FAIL, "RLIMIT_NOFILE hard", itoa(h.NofileHard), fmt.Sprintf("≥ %d per process", need),
			fmt.Sprintf("open files one process may have: each of %d connections per process is a descriptor, plus %d wsd keeps in reserve", p.PerProc(), FDReserve), fix})
	default:
		add(Finding{OK, "RLIMIT_NOFILE hard", itoa(h.NofileHard), fmt.Sprintf("≥ %d per process", need),
			fmt.Sprintf("open files one process may have: %d connections per process plus %d in reserve", p.PerProc(), FDReserve), ""})
	}
	switch {
	case h.NofileSoft == Unknown || h.NofileHard == Unknown || h.NofileHard < need:
		// Said above.
	case h.NofileSoft < need:
		add(Finding{OK, "RLIMIT_NOFILE soft", itoa(h.NofileSoft), fmt.Sprintf("≥ %d per process", need),
			fmt.Sprintf("below the need, but wsd's is its hard limit (%d): the Go runtime raises the soft limit to the hard one at start (wsd itself does not call setrlimit); --max-conns defaults to it minus %d, and if set must be ≥ %d", h.NofileHard, FDReserve, p.PerProc()), ""})
	default:
		add(Finding{OK, "RLIMIT_NOFILE soft", itoa(h.NofileSoft), fmt.Sprintf("≥ %d per process", need),
			fmt.Sprintf("wsd's --max-conns defaults to it minus %d, and if set must be ≥ %d (the Go runtime raises the soft limit to the hard one at start; wsd does not call setrlimit)", FDReserve, p.PerProc()), ""})
	}
	if p.LocalClients && h.NofileHard != Unknown && h.NofileHard > FDReserve {
		cp := ceilDiv(n, h.NofileHard-FDReserve)
		add(Finding{OK, "client processes", itoa(h.NofileHard), fmt.Sprintf("≥ %d processes", cp),
			fmt.Sprintf("the local clients hold %d descriptors too: at this hard limit (if theirs is the same) that takes at least %d client processes", n, cp), ""})
	}

	// fs.nr_open caps any process's open-file limit.
	switch {
	case h.NrOpen == Unknown:
		add(unread("fs.nr_open", "proc/sys/fs/nr_open"))
	case h.NrOpen < need:
		fix := applyHint("fs.nr_open")
		if need > 4194304 {
			fix = fmt.Sprintf("set fs.nr_open ≥ %d, or use more --procs", need)
		}
		add(Finding{FAIL, "fs.nr_open", itoa(h.NrOpen), fmt.Sprintf("≥ %d per process", need),
			"the most any process's open-file limit may be raised to", fix})
	default:
		add(Finding{OK, "fs.nr_open", itoa(h.NrOpen), fmt.Sprintf("≥ %d per process", need),
			"the most any process's open-file limit may be raised to", ""})
	}

	// fs.file-max caps the file handles of the whole host.
	switch {
	case h.FileMax == Unknown || h.FileAllocated == Unknown:
		add(unread("fs.file-max", "proc/sys/fs/file-max, proc/sys/fs/file-nr"))
	default:
		fneed := h.FileAllocated + p.Sockets() + FileMaxMargin
		what := fmt.Sprintf("file handles on the whole host: %d allocated now + %d sockets + %d margin", h.FileAllocated, p.Sockets(), FileMaxMargin)
		if h.FileMax < fneed {
			add(Finding{FAIL, "fs.file-max", itoa(h.FileMax), fmt.Sprintf("≥ %d", fneed), what, applyHint("fs.file-max")})
		} else {
			add(Finding{OK, "fs.file-max", itoa(h.FileMax), fmt.Sprintf("≥ %d", fneed), what, ""})
		}
	}

	// Memory.
	m := EstimateMemory(p)
	avail := h.Available()
	split := fmt.Sprintf("wsd user space %s (%d B per idle connection, %d B subscribed; %d × %s per process), kernel %s (%s per socket × %d sockets)",
		Bytes(m.Server), ServerBytesPerConn, ServerBytesPerSubscribedConn, k, Bytes(ProcessBaseBytes),
		Bytes(m.Kernel), Bytes(KernelBytesPerSocket), p.Sockets())
	if p.LocalClients {
		split += fmt.Sprintf(", clients %s (%s per connection)", Bytes(m.Clients), Bytes(ClientBytesPerConn))
	}
	have := Bytes(avail) + " available"
	if h.CgroupLimit != Unknown && avail != h.MemAvailable {
		have = Bytes(avail) + " left in cgroup"
	}
	switch {
	case avail == Unknown:
		add(unread("memory", "proc/meminfo"))
	case avail < m.Total():
		add(Finding{FAIL, "memory", have, "≥ " + Bytes(m.Total()), split,
			fmt.Sprintf("fewer connections (about %d fit), or a host with more memory", fitConns(p, avail))})
	case float64(m.Total()) > MemoryWarnFraction*float64(avail):
		add(Finding{WARN, "memory", have, "≥ " + Bytes(m.Total()), split + fmt.Sprintf("; more than %.0f%% of what is available", MemoryWarnFraction*100),
			"leave headroom: message buffers, broadcasts and the page cache need memory too"})
	default:
		add(Finding{OK, "memory", have, "≥ " + Bytes(m.Total()), split, ""})
	}

	// tcp_mem: idle sockets hold no buffers, a broadcast does.
	switch {
	case h.TCPMem[1] == Unknown:
		add(unread("net.ipv4.tcp_mem", "proc/sys/net/ipv4/tcp_mem"))
	default:
		have := fmt.Sprintf("%d %d %d", h.TCPMem[0], h.TCPMem[1], h.TCPMem[2])
		inUse := ""
		if h.TCPMemInUse != Unknown {
			inUse = fmt.Sprintf(" (%d pages in use now)", h.TCPMemInUse)
		}
		if n > h.TCPMem[1] {
			add(Finding{WARN, "net.ipv4.tcp_mem", have, fmt.Sprintf("pressure > %d pages", n),
				fmt.Sprintf("pages of TCP buffers%s: idle sockets hold none, but a broadcast that queues one %d-byte page on every connection at once takes %d pages, past the pressure threshold tcp_mem[1] = %d (%s), where the kernel shrinks buffers, and past tcp_mem[2] = %d it drops", inUse, PageBytes, n, h.TCPMem[1], Bytes(h.TCPMem[1]*PageBytes), h.TCPMem[2]),
				applyHint("net.ipv4.tcp_mem")})
		} else {
			add(Finding{OK, "net.ipv4.tcp_mem", have, fmt.Sprintf("pressure > %d pages", n),
				fmt.Sprintf("pages of TCP buffers%s: a broadcast queuing one page on every connection (%d pages) stays under the pressure threshold", inUse, n), ""})
		}
	}

	// Listen and receive backlogs.
	for _, b := range []struct {
		key, file, what string
		v               int64
	}{
		{"net.core.somaxconn", "proc/sys/net/core/somaxconn", "cap of a listen backlog: a reconnect storm's accept burst past it overflows the queue and the kernel drops SYNs (clients retry after 1 s, 3 s, …)", h.Somaxconn},
		{"net.ipv4.tcp_max_syn_backlog", "proc/sys/net/ipv4/tcp_max_syn_backlog", "half-open connections queued per listener: past it during a reconnect storm SYNs are dropped (or answered with cookies)", h.TCPMaxSynBacklog},
		{"net.core.netdev_max_backlog", "proc/sys/net/core/netdev_max_backlog", "packets queued per CPU before the stack takes them: a burst of SYNs past it is dropped", h.NetdevMaxBacklog},
	} {
		switch {
		case b.v == Unknown:
			add(unread(b.key, b.file))
		case b.v < BacklogMin:
			add(Finding{WARN, b.key, itoa(b.v), fmt.Sprintf("≥ %d", BacklogMin), b.what, applyHint(b.key)})
		default:
			add(Finding{OK, b.key, itoa(b.v), fmt.Sprintf("≥ %d", BacklogMin), b.what, ""})
		}
	}

	// The established-connection hash: every packet of a connection is
	// looked up in it, walking its bucket's chain. The kernel sizes it at
	// boot from memory (262,144 buckets on a 24 GiB host), far under a
	// million connections; measured on such a host at 1.2M sockets,
	// __inet_lookup_established took 17% of all CPU time.
	if h.TCPEhash > 0 {
		const key = "net.ipv4.tcp_ehash_entries"
		sockets := p.Sockets()
		want := int64(1)
		for want < sockets && want < 1<<24 {
			want <<= 1
		}
		what := fmt.Sprintf("established-connection hash buckets: %d sockets make chains of %.1f that every packet walks", sockets, float64(sockets)/float64(h.TCPEhash))
		if sockets > EhashChainMax*h.TCPEhash {
			add(Finding{WARN, key, itoa(h.TCPEhash), fmt.Sprintf("≥ %d", ceilDiv(sockets, EhashChainMax)), what,
				fmt.Sprintf("boot with thash_entries=%d on the kernel command line, or run wsd (and local clients) in a network namespace created after sysctl -w net.ipv4.tcp_child_ehash_entries=%d (bench/run-1m.sh does with NETNS=1)", want, want)})
		} else {
			add(Finding{OK, key, itoa(h.TCPEhash), fmt.Sprintf("≥ %d", ceilDiv(sockets, EhashChainMax)), what, ""})
		}
	}

	// Conntrack: each tracked connection is an entry, and past the table's
	// max the kernel drops new ones.
	const ctKey = "net.netfilter.nf_conntrack_max"
	switch {
	case !h.Conntrack:
		add(Finding{OK, ctKey, "not loaded", fmt.Sprintf("≥ %d if loaded", n),
			"connection tracking is not loaded: connections are not tracked", ""})
	case h.ConntrackMax == Unknown || h.ConntrackCount == Unknown:
		add(unread(ctKey, "proc/sys/net/netfilter/nf_conntrack_max, nf_conntrack_count"))
	case h.ConntrackCount == 0 && h.ConntrackMax < n:
		add(Finding{WARN, ctKey, itoa(h.ConntrackMax), fmt.Sprintf("≥ %d", n),
			fmt.Sprintf("conntrack is loaded but tracking nothing now (nf_conntrack_count 0): a firewall rule that matches these connections (state/conntrack match, NAT, Docker) would track every one, and past %d the kernel drops new connections (\"nf_conntrack: table full, dropping packet\")", h.ConntrackMax),
			applyHint(ctKey) + ", or exempt wsd's port: nft -f sysctl/notrack.nft (not where the port is reached through DNAT)"})
	case h.ConntrackCount > 0 && h.ConntrackMax < n+h.ConntrackCount:
		add(Finding{FAIL, ctKey, itoa(h.ConntrackMax), fmt.Sprintf("≥ %d", n+h.ConntrackCount),
			fmt.Sprintf("conntrack is tracking connections now (nf_conntrack_count %d): each of %d more is an entry, and past %d the kernel drops new connections (\"nf_conntrack: table full, dropping packet\")", h.ConntrackCount, n, h.ConntrackMax),
			applyHint(ctKey) + ", or exempt wsd's port: nft -f sysctl/notrack.nft (not where the port is reached through DNAT)"})
	default:
		add(Finding{OK, ctKey, itoa(h.ConntrackMax), fmt.Sprintf("≥ %d", n+max(h.ConntrackCount, 0)),
			fmt.Sprintf("conntrack is loaded (nf_conntrack_count %d); the table fits every connection", h.ConntrackCount), ""})
	}

	// The clients' ports, when they are here.
	if p.LocalClients {
		const key = "net.ipv4.ip_local_port_range"
		switch {
		case h.PortLow == Unknown || h.PortHigh == Unknown:
			add(unread(key, "proc/sys/net/ipv4/ip_local_port_range"))
		default:
			size := max(h.PortHigh-h.PortLow+1, 1)
			src := ceilDiv(n, size)
			have := fmt.Sprintf("%d %d", h.PortLow, h.PortHigh)
			what := fmt.Sprintf("ephemeral ports: each (source IP, server IP:port) pair gives at most %d connections, so the clients need %d source addresses (127.0.0.1 to 127.0.0.%d on loopback) for one server IP:port", size, src, src)
			if size < PortRangeMin {
				add(Finding{WARN, key, have, fmt.Sprintf("%d source addresses", src), what + fmt.Sprintf("; a range under %d ports", PortRangeMin), applyHint(key)})
			} else {
				add(Finding{OK, key, have, fmt.Sprintf("%d source addresses", src), what, ""})
			}
		}
	}

	// Threads and processes: cheap to check, rarely short.
	tneed := k * ThreadsPerProc
	for _, t := range []struct {
		key, file, what string
		v               int64
	}{
		{"kernel.threads-max", "proc/sys/kernel/threads-max", fmt.Sprintf("threads on the host: %d wsd processes × about %d threads", k, ThreadsPerProc), h.ThreadsMax},
		{"kernel.pid_max", "proc/sys/kernel/pid_max", fmt.Sprintf("process and thread ids: %d wsd processes × about %d threads", k, ThreadsPerProc), h.PidMax},
	} {
		switch {
		case t.v == Unknown:
			add(unread(t.key, t.file))
		case t.v < tneed:
			add(Finding{FAIL, t.key, itoa(t.v), fmt.Sprintf("≥ %d", tneed), t.what, fmt.Sprintf("sysctl -w %s=%d", t.key, 4*tneed)})
		default:
			add(Finding{OK, t.key, itoa(t.v), fmt.Sprintf("≥ %d", tneed), t.what, ""})
		}
	}

	// For reconnect storms: information.
	if h.TCPFinTimeout != Unknown {
		add(Finding{OK, "net.ipv4.tcp_fin_timeout", itoa(h.TCPFinTimeout) + " s", "any",
			"how long a connection wsd closed stays in FIN_WAIT_2 when the client never closes its side (TIME_WAIT is a fixed 60 s)", ""})
	}
	if h.TCPTwReuse != Unknown {
		what := "whether new outgoing connections may reuse a port in TIME_WAIT (0 no, 1 yes, 2 on loopback only); only clients' ports are in question"
		if p.LocalClients && h.TCPTwReuse == 0 {
			add(Finding{WARN, "net.ipv4.tcp_tw_reuse", "0", "1 or 2", what + ": local clients reconnecting in a storm wait 60 s for their ports",
				applyHint("net.ipv4.tcp_tw_reuse")})
		} else {
			add(Finding{OK, "net.ipv4.tcp_tw_reuse", itoa(h.TCPTwReuse), "any", what, ""})
		}
	}
	if h.CPUs != Unknown {
		what := "wsd runs one event loop per CPU (--loops 0)"
		if k > h.CPUs {
			what += fmt.Sprintf("; with %d processes on %d CPUs, --loops 1 each is enough", k, h.CPUs)
		}
		add(Finding{OK, "cpus", itoa(h.CPUs), "any", what, ""})
	}
	return out
}

// fitConns is about how many connections the memory avail holds.
func fitConns(p Plan, avail int64) int64 {
	per := EstimateMemory(Plan{Conns: 1, Procs: 0, LocalClients: p.LocalClients}).Total()
	left := avail - p.Procs*ProcessBaseBytes
	if left <= 0 || per <= 0 {
		return 0
	}
	return left / per
}

func unread(key, file string) Finding {
	return Finding{WARN, key, "?", "?", "could not read " + file,
		"run wsd doctor on the host itself, as the user wsd runs as (a container may hide /proc/sys)"}
}

func ceilDiv(a, b int64) int64 {
	if b <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

func itoa(v int64) string { return fmt.Sprint(v) }

// Bytes writes b in B (below 2 KiB), KiB, MiB or GiB, with a decimal in KiB
// and GiB.
func Bytes(b int64) string {
	switch {
	case b < 0:
		return "?"
	case b < 2048:
		return fmt.Sprintf("%d B", b)
	case b < 1<<20:
		s := fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
		return strings.Replace(s, ".0 ", " ", 1)
	case b < 1<<30:
		return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}
