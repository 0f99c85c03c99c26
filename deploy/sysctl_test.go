package deploy

import (
	"bytes"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The kernel profile and its tools, relative to the repository root.
const (
	sysctlProfile = "sysctl/99-wsd.conf"
	sysctlApply   = "sysctl/apply"
	sysctlNotrack = "sysctl/notrack.nft"
	sysctlLimits  = "sysctl/limits.conf"
	sysctlDropIn  = "sysctl/wsd-limits.conf"
)

// profileWant is the reference profile: other components (wsd doctor)
// check hosts against these very values, so a change here is deliberate.
var profileWant = map[string]string{
	"fs.file-max":                    "4194304",
	"fs.nr_open":                     "4194304",
	"net.core.somaxconn":             "65535",
	"net.ipv4.tcp_max_syn_backlog":   "65535",
	"net.core.netdev_max_backlog":    "65536",
	"net.ipv4.ip_local_port_range":   "1024 65535",
	"net.ipv4.tcp_rmem":              "4096 16384 4194304",
	"net.ipv4.tcp_wmem":              "4096 16384 4194304",
	"net.ipv4.tcp_mem":               "1572864 2097152 3145728",
	"net.ipv4.tcp_fin_timeout":       "15",
	"net.ipv4.tcp_tw_reuse":          "1",
	"net.ipv4.tcp_max_tw_buckets":    "2000000",
	"net.ipv4.tcp_max_orphans":       "262144",
	"net.netfilter.nf_conntrack_max": "2097152",
}

// raiseOnly are the keys sysctl/apply must never lower.
var raiseOnly = []string{"fs.file-max", "fs.nr_open", "net.core.somaxconn",
	"net.ipv4.tcp_max_syn_backlog", "net.core.netdev_max_backlog",
	"net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_max_orphans", "net.netfilter.nf_conntrack_max"}

// profileEntry is one setting of the profile and the comment line above it.
type profileEntry struct {
	key, value, comment string
}

func readProfile(t *testing.T) []profileEntry {
	t.Helper()
	var out []profileEntry
	prev := ""
	for i, l := range strings.Split(string(readFile(t, sysctlProfile)), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "":
			prev = ""
		case strings.HasPrefix(l, "#"):
			prev = l
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("%s:%d: not key = value: %q", sysctlProfile, i+1, l)
			}
			out = append(out, profileEntry{strings.TrimSpace(k), strings.Join(strings.Fields(v), " "), prev})
			prev = ""
		}
	}
	return out
}

// The profile holds exactly the reference values, each under a comment
// that says why and whether sysctl/apply may lower it.
func TestSysctlProfile(t *testing.T) {
	got := map[string]string{}
	for _, e := range readProfile(t) {
		if _, dup := got[e.key]; dup {
			t.Errorf("%s: %s set twice", sysctlProfile, e.key)
		}
		got[e.key] = e.value
		if len(e.comment) < 30 {
			t.Errorf("%s: %s has no one-line why comment above it", sysctlProfile, e.key)
		}
		raise := slices.Contains(raiseOnly, e.key)
		if raise != strings.Contains(e.comment, "(raise only)") {
			t.Errorf("%s: %s: raise only is %v, but its comment says %q", sysctlProfile, e.key, raise, e.comment)
		}
		if !raise && !strings.Contains(e.comment, "(set as given)") {
			t.Errorf("%s: %s: its comment should end with (set as given): %q", sysctlProfile, e.key, e.comment)
		}
	}
	if !maps.Equal(got, profileWant) {
		t.Errorf("%s holds\n%v\nwant\n%v", sysctlProfile, got, profileWant)
	}
	p := string(readFile(t, sysctlProfile))
	for _, s := range []string{"4 KiB", "idle", "notrack.nft"} {
		if !strings.Contains(p, s) {
			t.Errorf("%s does not mention %q", sysctlProfile, s)
		}
	}
}

// The limits for PAM sessions and the systemd drop-in give the profile's fs.nr_open.
func TestSysctlLimits(t *testing.T) {
	want := profileWant["fs.nr_open"]
	var rows []string
	for _, l := range strings.Split(string(readFile(t, sysctlLimits)), "\n") {
		if f := strings.Fields(l); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			rows = append(rows, strings.Join(f, " "))
		}
	}
	if wantRows := []string{"wsd soft nofile " + want, "wsd hard nofile " + want}; !slices.Equal(rows, wantRows) {
		t.Errorf("%s rows %q, want %q", sysctlLimits, rows, wantRows)
	}
	d := string(readFile(t, sysctlDropIn))
	if !regexp.MustCompile(`(?m)^\[Service\]$`).MatchString(d) || !regexp.MustCompile(`(?m)^LimitNOFILE=`+want+`$`).MatchString(d) {
		t.Errorf("%s is not a [Service] drop-in with LimitNOFILE=%s:\n%s", sysctlDropIn, want, d)
	}
}

// nft accepts the notrack rules (nft -c checks without loading them).
func TestSysctlNotrack(t *testing.T) {
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Skip("nft not found in PATH: install the Debian package nftables to check sysctl/notrack.nft")
	}
	out, err := exec.Command(nft, "-c", "-f", filepath.Join(root(t), sysctlNotrack)).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("Operation not permitted")) {
			t.Skipf("nft -c needs CAP_NET_ADMIN here: %s", out)
		}
		t.Fatalf("nft -c -f %s: %v\n%s", sysctlNotrack, err, out)
	}
	if f := string(readFile(t, sysctlNotrack)); !strings.Contains(f, "dport 8080 notrack") || !strings.Contains(f, "sport 8080 notrack") {
		t.Errorf("%s does not skip tracking for port 8080 in both directions", sysctlNotrack)
	}
}

// --- sysctl/apply against a fake /proc/sys -------------------------------------------

// fakeTree is a directory standing in for /proc/sys: key -> file content.
type fakeTree struct {
	dir string
}

func (f fakeTree) path(key string) string {
	return filepath.Join(f.dir, strings.ReplaceAll(key, ".", "/"))
}

func (f fakeTree) write(t *testing.T, key, content string) {
	t.Helper()
	p := f.path(key)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// snapshot reads every file of the tree.
func (f fakeTree) snapshot(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(f.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		m[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// applyRun is one run of sysctl/apply.
type applyRun struct {
	out, errOut string
	code        int
}

// runApply runs sysctl/apply with the WSD_SYSCTL_* variables of env only.
func runApply(t *testing.T, env []string, args ...string) applyRun {
	t.Helper()
	cmd := exec.Command(filepath.Join(root(t), sysctlApply), args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "WSD_SYSCTL_") && !strings.HasPrefix(e, "WSD_LIMITS_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := applyRun{out: o.String(), errOut: e.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	t.Logf("sysctl/apply %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.out, r.errOut)
	return r
}

func (r applyRun) must(t *testing.T, code int, lines ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit %d, want %d; stderr: %s", r.code, code, r.errOut)
	}
	have := strings.Split(r.out, "\n")
	for _, l := range lines {
		if !slices.Contains(have, l) {
			t.Errorf("no output line %q in:\n%s", l, r.out)
		}
	}
}

// The whole cycle on a fake tree: dry run, apply, apply again, drift, revert.
func TestSysctlApply(t *testing.T) {
	tree := fakeTree{t.TempDir()}
	state := filepath.Join(t.TempDir(), "lib", "sysctl.before")
	env := []string{"WSD_SYSCTL_ROOT=" + tree.dir, "WSD_SYSCTL_STATE=" + state}

	// Low values as the kernel prints them (tabs between fields, a newline);
	// fs.nr_open is already above the profile; conntrack is not loaded.
	orig := map[string]string{
		"fs.file-max":                  "1000\n",
		"fs.nr_open":                   "9000000\n",
		"net.core.somaxconn":           "4096\n",
		"net.ipv4.tcp_max_syn_backlog": "2048\n",
		"net.core.netdev_max_backlog":  "1000\n",
		"net.ipv4.ip_local_port_range": "32768\t60999\n",
		"net.ipv4.tcp_rmem":            "4096\t131072\t33554432\n",
		"net.ipv4.tcp_wmem":            "4096\t16384\t4194304\n", // already as given
		"net.ipv4.tcp_mem":             "287898\t383867\t575796\n",
		"net.ipv4.tcp_fin_timeout":     "60\n",
		"net.ipv4.tcp_tw_reuse":        "2\n",
		"net.ipv4.tcp_max_tw_buckets":  "131072\n",
		"net.ipv4.tcp_max_orphans":     "131072\n",
	}
	for k, v := range orig {
		tree.write(t, k, v)
	}
	before := tree.snapshot(t)
	changed := []string{"fs.file-max", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog",
		"net.core.netdev_max_backlog", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_rmem",
		"net.ipv4.tcp_mem", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_tw_reuse",
		"net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_max_orphans"}
	planned := []string{
		"fs.file-max: 1000 -> 4194304",
		"net.ipv4.ip_local_port_range: 32768 60999 -> 1024 65535",
		"net.ipv4.tcp_rmem: 4096 131072 33554432 -> 4096 16384 4194304", // set as given: lowered
		"net.ipv4.tcp_tw_reuse: 2 -> 1",
		"net.ipv4.tcp_wmem: ok",
		"fs.nr_open: ok (9000000, above the profile's 4194304: kept, raise only)",
		"net.netfilter.nf_conntrack_max: skipped (not on this kernel: " + tree.path("net.netfilter.nf_conntrack_max") + " missing)",
	}

	t.Run("dry run", func(t *testing.T) {
		r := runApply(t, env)
		r.must(t, 0, planned...)
		if n := strings.Count(r.out, " -> "); n != len(changed) {
			t.Errorf("%d changes listed, want %d", n, len(changed))
		}
		if !maps.Equal(tree.snapshot(t), before) {
			t.Error("the dry run changed the tree")
		}
		if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the dry run made the state file: %v", err)
		}
	})

	t.Run("apply", func(t *testing.T) {
		r := runApply(t, env, "--apply")
		r.must(t, 0, "fs.file-max: 1000 -> 4194304 (writing)", "net.ipv4.tcp_wmem: ok",
			"saved the previous value of 11 key(s) to "+state, "applied 11 change(s)")
		for k, want := range profileWant {
			b, err := os.ReadFile(tree.path(k))
			switch {
			case k == "net.netfilter.nf_conntrack_max":
				if err == nil {
					t.Errorf("%s was created", k)
				}
			case !slices.Contains(changed, k):
				if string(b) != orig[k] {
					t.Errorf("%s, which needed no change, was rewritten: %q", k, b)
				}
			case string(b) != want+"\n":
				t.Errorf("%s = %q after --apply, want %q", k, b, want+"\n")
			}
		}
		saved := string(mustRead(t, state))
		for _, k := range changed {
			if !strings.Contains(saved, "\n"+k+"\t"+strings.TrimSuffix(orig[k], "\n")+"\n") {
				t.Errorf("the state file does not hold %s's original %q:\n%s", k, orig[k], saved)
			}
		}
		for _, k := range []string{"fs.nr_open", "net.ipv4.tcp_wmem"} {
			if strings.Contains(saved, "\n"+k+"\t") {
				t.Errorf("the state file holds %s, which --apply did not change", k)
			}
		}
	})
	applied := tree.snapshot(t)
	savedOnce := mustRead(t, state)

	t.Run("apply again", func(t *testing.T) {
		r := runApply(t, env, "--apply")
		r.must(t, 0, "nothing to change: every key is at the profile's value (or above it, where raise only)")
		if strings.Contains(r.out, " -> ") {
			t.Error("the second --apply lists changes")
		}
		if !maps.Equal(tree.snapshot(t), applied) {
			t.Error("the second --apply changed the tree")
		}
		if !bytes.Equal(mustRead(t, state), savedOnce) {
			t.Error("the second --apply rewrote the state file")
		}
	})

	t.Run("drift", func(t *testing.T) {
		// Someone lowers a key wsd set: --apply sets it again, and the
		// state keeps the host's original, not the value found now.
		tree.write(t, "net.core.somaxconn", "1024\n")
		r := runApply(t, env, "--apply")
		r.must(t, 0, "net.core.somaxconn: 1024 -> 65535 (writing)",
			"previous values already saved in "+state+" (kept as they are)")
		if !bytes.Equal(mustRead(t, state), savedOnce) {
			t.Errorf("the state file changed:\n%s", mustRead(t, state))
		}
		if !maps.Equal(tree.snapshot(t), applied) {
			t.Error("the tree is not as after the first --apply")
		}
	})

	t.Run("revert", func(t *testing.T) {
		r := runApply(t, env, "--revert", "--dry-run")
		r.must(t, 0, "fs.file-max: 4194304 -> 1000")
		if !maps.Equal(tree.snapshot(t), applied) {
			t.Error("--revert --dry-run changed the tree")
		}
		r = runApply(t, env, "--revert")
		r.must(t, 0, "fs.file-max: 4194304 -> 1000 (restored)",
			"net.ipv4.ip_local_port_range: 1024 65535 -> 32768 60999 (restored)",
			"restored 11 saved value(s); removed "+state)
		if after := tree.snapshot(t); !maps.Equal(after, before) {
			for p, v := range before {
				if after[p] != v {
					t.Errorf("%s = %q after --revert, want %q", p, after[p], v)
				}
			}
		}
		if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the state file is still there after --revert: %v", err)
		}
		r = runApply(t, env, "--revert")
		r.must(t, 0, "nothing to revert: no saved values in "+state+" (sysctl/apply --apply saves them)")
	})
}

// --install copies the profile and the limits (dry run first); --revert
// removes the copies it made.
func TestSysctlInstall(t *testing.T) {
	tree := fakeTree{t.TempDir()}
	tree.write(t, "fs.file-max", "9999999\n") // above the profile: the boot would lower it
	etc := t.TempDir()
	sysctlD, limitsD := filepath.Join(etc, "sysctl.d"), filepath.Join(etc, "security", "limits.d")
	env := []string{"WSD_SYSCTL_ROOT=" + tree.dir, "WSD_SYSCTL_STATE=" + filepath.Join(etc, "state"),
		"WSD_SYSCTL_D=" + sysctlD, "WSD_LIMITS_D=" + limitsD}
	dstProfile, dstLimits := filepath.Join(sysctlD, "99-wsd.conf"), filepath.Join(limitsD, "wsd.conf")
	srcProfile, srcLimits := filepath.Join(root(t), sysctlProfile), filepath.Join(root(t), sysctlLimits)

	r := runApply(t, env, "--install")
	r.must(t, 0, dstProfile+": would be installed from "+srcProfile,
		dstLimits+": would be installed from "+srcLimits,
		"note: fs.file-max is 9999999 here, above the profile's 4194304: at boot "+dstProfile+" would lower it; edit that copy to keep 9999999")
	if _, err := os.Stat(sysctlD); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dry run made %s", sysctlD)
	}
	r = runApply(t, env, "--install", "--apply")
	r.must(t, 0, dstProfile+": installed from "+srcProfile, dstLimits+": installed from "+srcLimits)
	if !bytes.Equal(mustRead(t, dstProfile), readFile(t, sysctlProfile)) || !bytes.Equal(mustRead(t, dstLimits), readFile(t, sysctlLimits)) {
		t.Error("the installed copies differ from the sources")
	}
	runApply(t, env, "--install", "--apply").must(t, 0, dstProfile+": ok (installed)", dstLimits+": ok (installed)")
	runApply(t, env, "--revert").must(t, 0, dstProfile+": removed (installed copy of "+srcProfile+")")
	for _, p := range []string{dstProfile, dstLimits} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after --revert: %v", p, err)
		}
	}
}

// A profile line that is not key = value, or a key without a policy, is refused.
func TestSysctlApplyBadProfile(t *testing.T) {
	for name, body := range map[string]string{
		"not key = value": "# why (set as given)\nfs.file-max 5\n",
		"no policy":       "# why\nfs.file-max = 5\n",
	} {
		p := filepath.Join(t.TempDir(), "p.conf")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		r := runApply(t, []string{"WSD_SYSCTL_ROOT=" + t.TempDir(), "WSD_SYSCTL_PROFILE=" + p})
		if r.code != 2 || !strings.Contains(r.errOut, p+":2:") {
			t.Errorf("%s: exit %d, stderr %q; want 2 naming %s:2", name, r.code, r.errOut, p)
		}
	}
}

// Writing the real /proc/sys as anyone but root stops with a clear message
// before anything is written (the run drops to nobody with setpriv).
func TestSysctlApplyNeedsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to drop to another user with setpriv")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not found in PATH: install the Debian package util-linux")
	}
	// A profile asking for one more than the host has, so there is a change to make.
	cur, err := os.ReadFile("/proc/sys/fs/file-max")
	if err != nil {
		t.Skip(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(cur)), 10, 64)
	if err != nil || n == 1<<63-1 {
		t.Skipf("fs.file-max is %q: cannot ask for more", cur)
	}
	dir, err := os.MkdirTemp("", "wsd-sysctl-") // t.TempDir's parent is closed to others
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "p.conf")
	if err := os.WriteFile(p, []byte("# test (raise only)\nfs.file-max = "+strconv.FormatInt(n+1, 10)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
		filepath.Join(root(t), sysctlApply), "--apply")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "WSD_SYSCTL_PROFILE=" + p, "WSD_SYSCTL_STATE=" + state}
	out, err := cmd.CombinedOutput()
	t.Logf("as nobody: sysctl/apply --apply: %v\n%s", err, out)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1", err)
	}
	if !strings.Contains(string(out), "must run as root to write /proc/sys") {
		t.Errorf("no clear message: %s", out)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a state file was written: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// shellcheck finds nothing in sysctl/apply.
func TestSysctlApplyShellcheck(t *testing.T) {
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Skip("shellcheck not found in PATH: install the Debian package shellcheck to lint sysctl/apply")
	}
	if out, err := exec.Command(sc, filepath.Join(root(t), sysctlApply)).CombinedOutput(); err != nil {
		t.Errorf("shellcheck %s: %v\n%s", sysctlApply, err, out)
	}
}
