package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/wsdproject/wsd/internal/wsdproc"
)

const systemdUnit = "deploy/systemd/wsd.service"

// unitFile is a systemd unit: section -> key -> values in order (keys such
// as SystemCallFilter may repeat).
type unitFile map[string]map[string][]string

// parseUnit reads a unit file as systemd does: comments, sections,
// key=value, and lines continued with a trailing backslash.
func parseUnit(t *testing.T, text string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		for strings.HasSuffix(l, `\`) && i+1 < len(lines) {
			i++
			l = strings.TrimSuffix(l, `\`) + " " + strings.TrimSpace(lines[i])
		}
		if l[0] == '[' {
			section = strings.Trim(l, "[]")
			u[section] = map[string][]string{}
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: cannot read %q", systemdUnit, i+1, l)
		}
		k = strings.TrimSpace(k)
		u[section][k] = append(u[section][k], strings.TrimSpace(v))
	}
	return u
}

// one returns the only value of a key, failing if it is missing or repeated.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Errorf("%s: [%s] %s has %d values %q, want one", systemdUnit, section, key, len(v), v)
		return ""
	}
	return v[0]
}

// effectiveConfig runs the real wsd with args and --print-config and
// returns the configuration it would run with.
func effectiveConfig(t *testing.T, args ...string) map[string]any {
	t.Helper()
	return effectiveConfigEnv(t, nil, args...)
}

// effectiveConfigEnv is effectiveConfig with env (KEY=VALUE) set, and no
// other WSD_* variable.
func effectiveConfigEnv(t *testing.T, env []string, args ...string) map[string]any {
	t.Helper()
	cmd := exec.Command(wsdproc.Binary(t), append(slices.Clone(args), "--print-config")...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wsd %s --print-config: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	cfg := map[string]any{}
	if err := toml.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("wsd --print-config printed no TOML: %v\n%s", err, out)
	}
	return cfg
}

// durationKey reads a duration from an effective configuration.
func durationKey(t *testing.T, cfg map[string]any, key string) time.Duration {
	t.Helper()
	s, _ := cfg[key].(string)
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("effective %s = %v: %v", key, cfg[key], err)
	}
	return d
}

// adminShutdown is how long wsd gives its admin listener after the drain
// (cmd/wsd/main.go): a stop must allow the drain and this.
const adminShutdown = 2 * time.Second

// systemd-analyze verify accepts the unit without a single warning, with
// ExecStart pointing at a real wsd (verify checks that it exists).
func TestSystemdVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found in PATH: install the Debian package systemd to verify " + systemdUnit)
	}
	text := string(readFile(t, systemdUnit))
	if !strings.Contains(text, "ExecStart=/usr/local/bin/wsd ") {
		t.Fatalf("%s: ExecStart does not run /usr/local/bin/wsd", systemdUnit)
	}
	dir := t.TempDir()
	unit := filepath.Join(dir, "wsd.service")
	text = strings.Replace(text, "ExecStart=/usr/local/bin/wsd ", "ExecStart="+wsdproc.Binary(t)+" ", 1)
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// verify exits 0 on an unknown key or an unparsable value, printing a
	// warning: any line at all about the unit fails the test.
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "wsd.service") || strings.Contains(l, unit) {
			t.Errorf("systemd-analyze verify: %s", l)
		}
	}
	t.Logf("systemd-analyze verify: %q", out)

	// The offline security score (systemd 250+): 0 is locked down, 10 is exposed.
	out, err = exec.Command(sa, "security", "--offline=true", unit).CombinedOutput()
	if err != nil {
		t.Logf("systemd-analyze security --offline not available here: %v\n%s", err, out)
		return
	}
	m := regexp.MustCompile(`Overall exposure level for wsd\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
		t.Errorf("exposure level %.1f, want at most 2.0: a hardening option went missing", level)
	}
	t.Logf("systemd-analyze security: exposure %s", m[1])
}

// The unit's settings: the file limit of the profile, a stop that outlasts
// the drain, the hardening options, and flags the real wsd accepts.
func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, string(readFile(t, systemdUnit)))
	want := map[string]string{
		"Type":                    "simple", // wsd does not speak sd_notify
		"LimitNOFILE":             profileWant["fs.nr_open"],
		"KillSignal":              "SIGTERM",
		"Restart":                 "on-failure",
		"User":                    "wsd",
		"EnvironmentFile":         "-/etc/wsd/wsd.env",
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectControlGroups":    "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"RestrictNamespaces":      "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"SystemCallArchitectures": "native",
		"CapabilityBoundingSet":   "",
	}
	for k, v := range want {
		if got := u.one(t, "Service", k); got != v {
			t.Errorf("%s: %s=%q, want %q", systemdUnit, k, got, v)
		}
	}
	if u["Install"]["WantedBy"] == nil {
		t.Errorf("%s: no [Install] WantedBy", systemdUnit)
	}

	exec := strings.Fields(u.one(t, "Service", "ExecStart"))
	if len(exec) == 0 || exec[0] != "/usr/local/bin/wsd" {
		t.Fatalf("%s: ExecStart %q", systemdUnit, exec)
	}
	cfg := effectiveConfig(t, exec[1:]...)
	drain := durationKey(t, cfg, "drain-timeout")
	stop, err := time.ParseDuration(u.one(t, "Service", "TimeoutStopSec"))
	if err != nil {
		t.Fatalf("%s: TimeoutStopSec: %v", systemdUnit, err)
	}
	if stop <= drain+adminShutdown {
		t.Errorf("%s: TimeoutStopSec=%v does not outlast --drain-timeout %v plus the admin shutdown %v",
			systemdUnit, stop, drain, adminShutdown)
	}
	if a, _ := cfg["admin"].(string); !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("%s: the admin listener (%q) is not loopback-only: it serves /metrics and the API", systemdUnit, a)
	}
	t.Logf("ExecStart's drain-timeout %v, TimeoutStopSec %v", drain, stop)
}
