// Package sysctl reads the limits of a Linux host that decide how many
// WebSocket connections it can hold (open-file limits, sysctls, memory,
// port ranges, conntrack, listen backlogs) and checks them against a plan:
// N connections served by K wsd processes, the clients possibly on the
// same host. wsd doctor prints the findings.
//
// The host is read from a root directory ("/" for the live host), so that
// tests can point it at a fixture tree under testdata/<case>/.
package sysctl

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Unknown marks a value that could not be read.
const Unknown int64 = -1

// Host is what ReadHost found. A field it could not read is Unknown (the
// file is missing or unreadable, say in a container) and Missing names
// its file.
type Host struct {
	Root string // where it was read from

	NofileSoft, NofileHard int64 // /proc/self/limits "Max open files"

	FileMax       int64 // fs.file-max
	NrOpen        int64 // fs.nr_open
	FileAllocated int64 // fs.file-nr, first field: file handles allocated now

	Somaxconn         int64 // net.core.somaxconn
	TCPMaxSynBacklog  int64 // net.ipv4.tcp_max_syn_backlog
	NetdevMaxBacklog  int64 // net.core.netdev_max_backlog
	PortLow, PortHigh int64 // net.ipv4.ip_local_port_range
	TCPMem            [3]int64
	TCPMemInUse       int64 // /proc/net/sockstat "TCP: ... mem", pages
	TCPFinTimeout     int64 // net.ipv4.tcp_fin_timeout, seconds
	TCPTwReuse        int64 // net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only
	// TCPEhash is the buckets of this network namespace's established-
	// connection hash (net.ipv4.tcp_ehash_entries, its sign dropped: a
	// namespace sharing the host's table reads negative), Unknown on a
	// kernel before 6.1, which does not say.
	TCPEhash int64

	// Conntrack is false when /proc/sys/net/netfilter has no
	// nf_conntrack_max: the module is not loaded and tracks nothing.
	Conntrack                    bool
	ConntrackMax, ConntrackCount int64

	PidMax, ThreadsMax int64 // kernel.pid_max, kernel.threads-max

	MemTotal, MemAvailable int64 // bytes, /proc/meminfo
	// CgroupLimit is the memory cgroup's limit in bytes (memory.max, or
	// memory.limit_in_bytes on cgroup v1), Unknown when there is none;
	// CgroupUsage is its usage now, Unknown if not read; CgroupPath is
	// the cgroup's directory, e.g. /sys/fs/cgroup/system.slice/wsd.service.
	CgroupLimit, CgroupUsage int64
	CgroupPath               string

	CPUs int64 // cpuN lines in /proc/stat

	Missing []string // files that could not be read, relative to Root
}

// ReadHost reads a Host from the tree under root: root "/" is the live
// host. Files it cannot read leave their fields Unknown and are listed in
// Missing; it fails only when root has no proc directory at all.
func ReadHost(root string) (Host, error) {
	if _, err := os.Stat(filepath.Join(root, "proc")); err != nil {
		return Host{}, fmt.Errorf("no proc directory under %s: %w", root, err)
	}
	r := &reader{root: root}
	h := Host{Root: root}
	h.NofileSoft, h.NofileHard = r.nofile()
	h.FileMax = r.int("proc/sys/fs/file-max")
	h.NrOpen = r.int("proc/sys/fs/nr_open")
	h.FileAllocated = r.field("proc/sys/fs/file-nr", 0)
	h.Somaxconn = r.int("proc/sys/net/core/somaxconn")
	h.TCPMaxSynBacklog = r.int("proc/sys/net/ipv4/tcp_max_syn_backlog")
	h.NetdevMaxBacklog = r.int("proc/sys/net/core/netdev_max_backlog")
	h.PortLow = r.field("proc/sys/net/ipv4/ip_local_port_range", 0)
	h.PortHigh = r.field("proc/sys/net/ipv4/ip_local_port_range", 1)
	for i := range h.TCPMem {
		h.TCPMem[i] = r.field("proc/sys/net/ipv4/tcp_mem", i)
	}
	h.TCPMemInUse = r.sockstatTCPMem()
	h.TCPFinTimeout = r.int("proc/sys/net/ipv4/tcp_fin_timeout")
	h.TCPTwReuse = r.int("proc/sys/net/ipv4/tcp_tw_reuse")
	if _, err := os.Stat(filepath.Join(root, "proc/sys/net/ipv4/tcp_ehash_entries")); err == nil {
		h.TCPEhash = r.int("proc/sys/net/ipv4/tcp_ehash_entries")
		if h.TCPEhash < 0 && h.TCPEhash != Unknown {
			h.TCPEhash = -h.TCPEhash
		}
	} else {
		h.TCPEhash = Unknown
	}
	if _, err := os.Stat(filepath.Join(root, "proc/sys/net/netfilter/nf_conntrack_max")); err == nil {
		h.Conntrack = true
		h.ConntrackMax = r.int("proc/sys/net/netfilter/nf_conntrack_max")
		h.ConntrackCount = r.int("proc/sys/net/netfilter/nf_conntrack_count")
	}
	h.PidMax = r.int("proc/sys/kernel/pid_max")
	h.ThreadsMax = r.int("proc/sys/kernel/threads-max")
	h.MemTotal, h.MemAvailable = r.meminfo()
	h.CgroupLimit, h.CgroupUsage, h.CgroupPath = r.cgroup()
	h.CPUs = r.cpus()
	h.Missing = r.missing
	return h, nil
}

type reader struct {
	root    string
	missing []string
}

func (r *reader) read(rel string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(r.root, rel))
	if err != nil {
		r.missing = append(r.missing, rel)
		return "", false
	}
	return string(b), true
}

// field returns the i-th whitespace-separated number of the file.
func (r *reader) field(rel string, i int) int64 {
	s, ok := r.read(rel)
	if !ok {
		return Unknown
	}
	f := strings.Fields(s)
	if i >= len(f) {
		r.missing = append(r.missing, rel)
		return Unknown
	}
	v, err := strconv.ParseInt(f[i], 10, 64)
	if err != nil {
		r.missing = append(r.missing, rel)
		return Unknown
	}
	return v
}

func (r *reader) int(rel string) int64 { return r.field(rel, 0) }

// nofile reads "Max open files" from proc/self/limits: for the live host
// that is this process's limit, the same one unix.Getrlimit gives.
func (r *reader) nofile() (soft, hard int64) {
	const rel = "proc/self/limits"
	s, ok := r.read(rel)
	if !ok {
		return Unknown, Unknown
	}
	for _, line := range strings.Split(s, "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) >= 2 {
			return limitValue(f[0]), limitValue(f[1])
		}
	}
	r.missing = append(r.missing, rel)
	return Unknown, Unknown
}

func limitValue(s string) int64 {
	if s == "unlimited" {
		return 1 << 62
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return Unknown
	}
	return v
}

// sockstatTCPMem reads the pages TCP sockets hold now ("TCP: ... mem N").
func (r *reader) sockstatTCPMem() int64 {
	const rel = "proc/net/sockstat"
	s, ok := r.read(rel)
	if !ok {
		return Unknown
	}
	for _, line := range strings.Split(s, "\n") {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				if v, err := strconv.ParseInt(f[i+1], 10, 64); err == nil {
					return v
				}
			}
		}
	}
	r.missing = append(r.missing, rel)
	return Unknown
}

// meminfo returns MemTotal and MemAvailable in bytes.
func (r *reader) meminfo() (total, avail int64) {
	const rel = "proc/meminfo"
	total, avail = Unknown, Unknown
	s, ok := r.read(rel)
	if !ok {
		return
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 2 && f[2] == "kB" {
			v *= 1024
		}
		switch f[0] {
		case "MemTotal:":
			total = v
		case "MemAvailable:":
			avail = v
		}
	}
	if total == Unknown || avail == Unknown {
		r.missing = append(r.missing, rel)
	}
	return
}

// cgroup reads the memory limit and usage of this process's memory
// cgroup, its path taken from proc/self/cgroup: cgroup v2 (memory.max,
// memory.current under sys/fs/cgroup) or v1 (memory.limit_in_bytes,
// memory.usage_in_bytes under sys/fs/cgroup/memory). It walks from the
// cgroup up to the mount's root and keeps the limit leaving the least
// memory: a parent's limit binds its children. "max", or a v1 limit near
// 2^63, is no limit. Its absence is not noted in Missing: most hosts have
// no limit.
func (r *reader) cgroup() (limit, usage int64, path string) {
	limit, usage, path = Unknown, Unknown, ""
	v1, v2 := "/", "/"
	if b, err := os.ReadFile(filepath.Join(r.root, "proc/self/cgroup")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.SplitN(line, ":", 3)
			if len(f) != 3 {
				continue
			}
			switch {
			case f[0] == "0" && f[1] == "":
				v2 = f[2]
			case slices.Contains(strings.Split(f[1], ","), "memory"):
				v1 = f[2]
			}
		}
	}
	left := int64(1<<63 - 1)
	for _, h := range []struct{ mount, dir, limit, usage string }{
		{"sys/fs/cgroup", v2, "memory.max", "memory.current"},
		{"sys/fs/cgroup/memory", v1, "memory.limit_in_bytes", "memory.usage_in_bytes"},
	} {
		for dir := filepath.Clean("/" + h.dir); ; dir = filepath.Dir(dir) {
			d := filepath.Join(r.root, h.mount, dir)
			if l, ok := readLimit(filepath.Join(d, h.limit)); ok {
				u, ok := readLimit(filepath.Join(d, h.usage))
				if !ok {
					u = Unknown
				}
				if l-max(u, 0) < left {
					left = l - max(u, 0)
					limit, usage, path = l, u, filepath.Join("/", h.mount, dir)
				}
			}
			if dir == "/" {
				break
			}
		}
	}
	return limit, usage, path
}

// readLimit reads a cgroup's byte count; false if absent or no limit.
func readLimit(file string) (int64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || v >= 1<<62 {
		return 0, false
	}
	return v, true
}

// cpus counts the cpuN lines of proc/stat: the CPUs online.
func (r *reader) cpus() int64 {
	const rel = "proc/stat"
	s, ok := r.read(rel)
	if !ok {
		return Unknown
	}
	var n int64
	for _, line := range strings.Split(s, "\n") {
		if len(line) > 3 && strings.HasPrefix(line, "cpu") && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return n
}
