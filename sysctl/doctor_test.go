package sysctl

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The fixtures under testdata/ are each the host the project's profile
// makes (testdata/ready: 4 CPUs, 32 GiB, sysctl/apply --apply's values,
// conntrack not loaded) with one file changed.

var million = Plan{Conns: 1_000_000, Procs: 1}

func readFixture(t *testing.T, name string) Host {
	t.Helper()
	h, err := ReadHost(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func find(fs []Finding, key string) (Finding, bool) {
	for _, f := range fs {
		if f.Key == key {
			return f, true
		}
	}
	return Finding{}, false
}

// notOK lists the WARN and FAIL findings as "LEVEL key have | need".
func notOK(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		if f.Level != OK {
			out = append(out, fmt.Sprintf("%s %s %s | %s", f.Level, f.Key, f.Have, f.Need))
		}
	}
	return out
}

func TestReadHostFixture(t *testing.T) {
	h := readFixture(t, "ready")
	want := Host{
		Root:       filepath.Join("testdata", "ready"),
		NofileSoft: 1048576, NofileHard: 1048576,
		FileMax: 4194304, NrOpen: 4194304, FileAllocated: 2048,
		Somaxconn: 65535, TCPMaxSynBacklog: 65535, NetdevMaxBacklog: 65536,
		PortLow: 1024, PortHigh: 65535,
		TCPMem:      [3]int64{1572864, 2097152, 3145728},
		TCPMemInUse: 174, TCPFinTimeout: 60, TCPTwReuse: 2, TCPEhash: 4194304,
		PidMax: 4194304, ThreadsMax: 256000,
		MemTotal: 32 << 30, MemAvailable: 32 << 30,
		CgroupLimit: Unknown, CgroupUsage: Unknown,
		CPUs: 4,
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("ReadHost(testdata/ready):\n got %+v\nwant %+v", h, want)
	}

	h = readFixture(t, "conntrack-tracking")
	if !h.Conntrack || h.ConntrackMax != 262144 || h.ConntrackCount != 1200 {
		t.Errorf("conntrack: got loaded %v max %d count %d", h.Conntrack, h.ConntrackMax, h.ConntrackCount)
	}
	h = readFixture(t, "cgroup-v2")
	if h.CgroupLimit != 4<<30 || h.CgroupUsage != 1<<30 || h.Available() != 3<<30 {
		t.Errorf("cgroup v2: limit %d usage %d available %d", h.CgroupLimit, h.CgroupUsage, h.Available())
	}
	if h.CgroupPath != "/sys/fs/cgroup" {
		t.Errorf("cgroup v2 path %q", h.CgroupPath)
	}
	// The process's own cgroup (2 GiB, 512 MiB used) binds tighter than
	// its parent (8 GiB, 1 GiB used) and the unlimited root.
	h = readFixture(t, "cgroup-v1-nested")
	if h.CgroupLimit != 2<<30 || h.CgroupUsage != 512<<20 || h.Available() != 1536<<20 || h.CgroupPath != "/sys/fs/cgroup/memory/svc/wsd" {
		t.Errorf("cgroup v1 nested: limit %d usage %d available %d path %q", h.CgroupLimit, h.CgroupUsage, h.Available(), h.CgroupPath)
	}
	h = readFixture(t, "cgroup-v1-unlimited")
	if h.CgroupLimit != Unknown || h.Available() != 32<<30 {
		t.Errorf("cgroup v1 without a limit: limit %d available %d", h.CgroupLimit, h.Available())
	}
	h = readFixture(t, "unreadable")
	if h.NrOpen != Unknown || !reflect.DeepEqual(h.Missing, []string{"proc/sys/fs/nr_open"}) {
		t.Errorf("unreadable: nr_open %d, missing %q", h.NrOpen, h.Missing)
	}
	if _, err := ReadHost(t.TempDir()); err == nil {
		t.Error("ReadHost of a directory without proc/: no error")
	}
}

// Each fixture makes exactly its own line WARN or FAIL, with the numbers.
func TestCheckFixtures(t *testing.T) {
	local := Plan{Conns: 1_000_000, Procs: 1, LocalClients: true}
	for _, c := range []struct {
		fixture string
		plan    Plan
		want    []string // the WARN and FAIL findings, in order
		fix     string   // in the first one's fix
	}{
		{"ready", million, nil, ""},
		{"ready", local, nil, ""},
		{"ready", Plan{Conns: 2_000_000, Procs: 2}, nil, ""},
		{"nofile-hard", million, []string{"FAIL RLIMIT_NOFILE hard 65536 | ≥ 1000128 per process"},
			"or run --procs 16 wsd processes with --reuse-port (each then holds 62500 connections)"},
		{"nofile-hard", Plan{Conns: 1_000_000, Procs: 16}, nil, ""},
		{"nofile-soft", million, nil, ""},
		{"nr-open", million, []string{"FAIL fs.nr_open 524288 | ≥ 1000128 per process"},
			"sysctl/apply --apply (sets fs.nr_open to 4194304)"},
		{"file-max", million, []string{"FAIL fs.file-max 1000000 | ≥ 1070536"},
			"sysctl/apply --apply (sets fs.file-max to 4194304)"},
		// 786 B + 4.2 KiB a connection and 12 MiB: 4.7 GiB.
		{"memory", million, []string{"FAIL memory 4.0 GiB available | ≥ 5.6 GiB"}, "about 710651 fit"},
		{"memory-tight", million, []string{"WARN memory 5.7 GiB available | ≥ 5.6 GiB"}, "leave headroom"},
		{"cgroup-v2", million, []string{"FAIL memory 3.0 GiB left in cgroup | ≥ 5.6 GiB"}, "about 532466 fit"},
		{"cgroup-v1-nested", million, []string{"FAIL memory 1.5 GiB left in cgroup | ≥ 5.6 GiB"}, "about 265189 fit"},
		{"cgroup-v1-unlimited", million, nil, ""},
		{"conntrack-tracking", million, []string{"FAIL net.netfilter.nf_conntrack_max 262144 | ≥ 1001200"},
			"sysctl/apply --apply (sets net.netfilter.nf_conntrack_max to 2097152)"},
		{"conntrack-idle", million, []string{"WARN net.netfilter.nf_conntrack_max 262144 | ≥ 1000000"},
			"sysctl/apply --apply (sets net.netfilter.nf_conntrack_max to 2097152)"},
		{"conntrack-idle", Plan{Conns: 200_000, Procs: 1}, nil, ""},
		{"conntrack-big", million, nil, ""},
		{"somaxconn", million, []string{"WARN net.core.somaxconn 128 | ≥ 4096"},
			"sysctl/apply --apply (sets net.core.somaxconn to 65535)"},
		{"syn-backlog", million, []string{"WARN net.ipv4.tcp_max_syn_backlog 1024 | ≥ 4096"},
			"sysctl/apply --apply (sets net.ipv4.tcp_max_syn_backlog to 65535)"},
		{"netdev-backlog", million, []string{"WARN net.core.netdev_max_backlog 1000 | ≥ 4096"},
			"sysctl/apply --apply (sets net.core.netdev_max_backlog to 65536)"},
		{"port-range", million, nil, ""}, // no local clients: not their ports
		{"port-range", local, []string{"WARN net.ipv4.ip_local_port_range 50000 55000 | 200 source addresses"},
			"sysctl/apply --apply (sets net.ipv4.ip_local_port_range to 1024 65535)"},
		{"tcp-mem", million, []string{"WARN net.ipv4.tcp_mem 287898 383867 575796 | pressure > 1000000 pages"},
			"sysctl/apply --apply (sets net.ipv4.tcp_mem to 1572864 2097152 3145728)"},
		{"tcp-mem", Plan{Conns: 300_000, Procs: 1}, nil, ""},
		{"threads", million, []string{"FAIL kernel.threads-max 5 | ≥ 10"}, "sysctl -w kernel.threads-max=40"},
		{"tw-reuse", million, nil, ""},
		{"tw-reuse", local, []string{"WARN net.ipv4.tcp_tw_reuse 0 | 1 or 2"}, "sysctl/apply --apply (sets net.ipv4.tcp_tw_reuse to 1)"},
		{"ehash", million, []string{"WARN net.ipv4.tcp_ehash_entries 262144 | ≥ 500000"}, "thash_entries=1048576"},
		{"ehash", local, []string{"WARN net.ipv4.tcp_ehash_entries 262144 | ≥ 1000000"}, "tcp_child_ehash_entries=2097152"},
		{"ehash", Plan{Conns: 500_000, Procs: 30}, nil, ""},
		{"ehash-netns", local, nil, ""}, // a namespace's own table reads negative
		{"unreadable", million, []string{"WARN fs.nr_open ? | ?"}, "run wsd doctor on the host itself"},
	} {
		name := fmt.Sprintf("%s/%d/%d/local=%v", c.fixture, c.plan.Conns, c.plan.Procs, c.plan.LocalClients)
		t.Run(name, func(t *testing.T) {
			fs := Check(readFixture(t, c.fixture), c.plan)
			got := notOK(fs)
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("WARN and FAIL findings:\n got %q\nwant %q", got, c.want)
			}
			wantFail := len(c.want) > 0 && strings.HasPrefix(c.want[0], "FAIL")
			if Failed(fs) != wantFail {
				t.Errorf("Failed = %v, want %v", Failed(fs), wantFail)
			}
			if c.fix != "" {
				for _, f := range fs {
					if f.Level != OK {
						if !strings.Contains(f.Fix, c.fix) {
							t.Errorf("fix %q does not say %q", f.Fix, c.fix)
						}
						break
					}
				}
			}
		})
	}
}

// The OK lines say what they found too.
func TestCheckOKLines(t *testing.T) {
	fs := Check(readFixture(t, "nofile-soft"), million)
	soft, _ := find(fs, "RLIMIT_NOFILE soft")
	if soft.Level != OK || soft.Have != "1024" || !strings.Contains(soft.What, "Go runtime raises the soft limit to the hard one") {
		t.Errorf("soft limit below the need, hard above: %+v", soft)
	}
	fs = Check(readFixture(t, "ready"), Plan{Conns: 1_000_000, Procs: 1, LocalClients: true})
	pr, _ := find(fs, "net.ipv4.ip_local_port_range")
	if pr.Need != "16 source addresses" || !strings.Contains(pr.What, "127.0.0.1 to 127.0.0.16") {
		t.Errorf("port range: %+v", pr)
	}
	mem, _ := find(fs, "memory")
	// 1001 MB + 12 MiB wsd, 2M × 5025 B kernel, 1M × 1547 B clients.
	if mem.Need != "≥ 11.7 GiB" || !strings.Contains(mem.What, "kernel 9.4 GiB (4.9 KiB per socket × 2000000 sockets)") ||
		!strings.Contains(mem.What, "clients 1.4 GiB") {
		t.Errorf("memory with local clients: %+v", mem)
	}
	fm, _ := find(fs, "fs.file-max")
	if fm.Need != "≥ 2067584" {
		t.Errorf("file-max with local clients: need %q, want ≥ 2048 + 2000000 + 65536", fm.Need)
	}
	cl, _ := find(fs, "client processes")
	if cl.Need != "≥ 1 processes" {
		t.Errorf("client processes: %+v", cl)
	}
	ct, _ := find(Check(readFixture(t, "ready"), million), "net.netfilter.nf_conntrack_max")
	if ct.Level != OK || ct.Have != "not loaded" {
		t.Errorf("conntrack not loaded: %+v", ct)
	}
	b, err := JSON(fs)
	if err != nil {
		t.Fatal(err)
	}
	var back []Finding
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, fs) {
		t.Errorf("JSON round trip: %v\n%s", err, b)
	}
	if !strings.Contains(string(b), `"level": "OK"`) {
		t.Errorf("JSON levels are not words:\n%s", b)
	}
}

func TestPlanValidate(t *testing.T) {
	for _, p := range []Plan{{0, 1, false}, {-5, 1, false}, {10, 0, false}, {10, 11, false}, {MaxConns + 1, 1, false}} {
		if p.Validate() == nil {
			t.Errorf("%+v: valid", p)
		}
	}
	if err := (Plan{10, 10, true}).Validate(); err != nil {
		t.Error(err)
	}
	if got := (Plan{Conns: 1_000_000, Procs: 60}).NofileNeed(); got != 16667+FDReserve {
		t.Errorf("NofileNeed = %d", got)
	}
}

func readInt(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("%s: %v", path, err)
	}
	v, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// This host, read live: the findings carry the values read independently.
func TestCheckLiveHost(t *testing.T) {
	h, err := ReadHost("/")
	if err != nil {
		t.Skip(err)
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if h.NofileHard != int64(rl.Max) || h.NofileSoft != int64(rl.Cur) {
		t.Errorf("nofile: read %d/%d, getrlimit %d/%d", h.NofileSoft, h.NofileHard, rl.Cur, rl.Max)
	}
	fileMax := readInt(t, "/proc/sys/fs/file-max")
	nrOpen := readInt(t, "/proc/sys/fs/nr_open")
	somaxconn := readInt(t, "/proc/sys/net/core/somaxconn")
	cpus := int64(0)
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) == nil {
		cpus = int64(set.Count())
	}

	fs := Check(h, million)
	t.Logf("this host, 1M connections, 1 process: %q", notOK(fs))
	hard, _ := find(fs, "RLIMIT_NOFILE hard")
	if hard.Have != fmt.Sprint(rl.Max) || hard.Need != "≥ 1000128 per process" {
		t.Errorf("nofile line: %+v, getrlimit hard %d", hard, rl.Max)
	}
	if rl.Max < 1_000_128 {
		minK := (1_000_000 + rl.Max - 128 - 1) / (rl.Max - 128)
		if hard.Level != FAIL || !strings.Contains(hard.Fix, fmt.Sprintf("--procs %d ", minK)) {
			t.Errorf("hard limit %d < 1000128: %+v, want FAIL suggesting --procs %d", rl.Max, hard, minK)
		}
		if !Failed(fs) {
			t.Error("not Failed")
		}
		// That many processes fit.
		k := Plan{Conns: 1_000_000, Procs: int64(minK), LocalClients: true}
		if f, _ := find(Check(h, k), "RLIMIT_NOFILE hard"); f.Level != OK {
			t.Errorf("with --procs %d: %+v", minK, f)
		}
	} else if hard.Level != OK {
		t.Errorf("hard limit %d ≥ 1000128: %+v", rl.Max, hard)
	}
	if f, _ := find(fs, "fs.file-max"); f.Have != fmt.Sprint(fileMax) {
		t.Errorf("file-max line %+v, /proc/sys/fs/file-max %d", f, fileMax)
	}
	if f, _ := find(fs, "fs.nr_open"); f.Have != fmt.Sprint(nrOpen) || (f.Level == FAIL) != (nrOpen < 1_000_128) {
		t.Errorf("nr_open line %+v, /proc/sys/fs/nr_open %d", f, nrOpen)
	}
	if f, _ := find(fs, "net.core.somaxconn"); f.Have != fmt.Sprint(somaxconn) || (f.Level == WARN) != (somaxconn < BacklogMin) {
		t.Errorf("somaxconn line %+v, /proc/sys/net/core/somaxconn %d", f, somaxconn)
	}
	if f, _ := find(fs, "cpus"); cpus > 0 && f.Have != fmt.Sprint(cpus) {
		t.Errorf("cpus line %+v, sched_getaffinity %d", f, cpus)
	}
	ct, _ := find(fs, "net.netfilter.nf_conntrack_max")
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_max"); err != nil {
		if ct.Have != "not loaded" || ct.Level != OK {
			t.Errorf("conntrack not loaded: %+v", ct)
		}
	} else if max := readInt(t, "/proc/sys/net/netfilter/nf_conntrack_max"); ct.Have != fmt.Sprint(max) {
		t.Errorf("conntrack line %+v, nf_conntrack_max %d", ct, max)
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		total := int64(si.Totalram) * int64(si.Unit)
		if h.MemTotal != total {
			t.Errorf("MemTotal %d, sysinfo %d", h.MemTotal, total)
		}
	}
}

// The fix hints quote the profile; once sysctl/99-wsd.conf is here, they
// must quote what it sets.
func TestProfileMatchesConf(t *testing.T) {
	b, err := os.ReadFile("99-wsd.conf")
	if err != nil {
		t.Skipf("no profile to compare with: %v", err)
	}
	conf := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			conf[strings.TrimSpace(k)] = strings.Join(strings.Fields(v), " ")
		}
	}
	for k, v := range Profile {
		if got, ok := conf[k]; ok && got != v {
			t.Errorf("%s: the fix hints say %q, 99-wsd.conf sets %q", k, v, got)
		}
	}
}
