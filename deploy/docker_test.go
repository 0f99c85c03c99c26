package deploy

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

const (
	dockerfile  = "deploy/docker/Dockerfile"
	composeFile = "deploy/docker/compose.yaml"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// stage is one FROM and what follows it.
type stage struct {
	from, name string
	ins        []instruction
}

// parseDockerfile reads the instructions, stage by stage.
func parseDockerfile(t *testing.T, text string) []stage {
	t.Helper()
	var stages []stage
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if l == "" || l[0] == '#' {
			continue
		}
		n := i + 1
		for strings.HasSuffix(l, `\`) && i+1 < len(lines) {
			i++
			next := strings.TrimSpace(lines[i])
			if strings.HasPrefix(next, "#") {
				continue // comments inside a continued instruction are dropped
			}
			l = strings.TrimSuffix(l, `\`) + " " + next
		}
		cmd, args, _ := strings.Cut(l, " ")
		in := instruction{line: n, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				continue
			}
			t.Fatalf("%s:%d: %s before FROM", dockerfile, n, in.cmd)
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	return stages
}

// all returns the stage's instructions of one kind.
func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// env is the stage's ENV, as KEY=VALUE (the KEY=VALUE form only).
func (s stage) env(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, in := range s.all("ENV") {
		for _, w := range shellWords(t, in.args) {
			if !strings.Contains(w, "=") {
				t.Fatalf("%s:%d: ENV %q: use the KEY=VALUE form", dockerfile, in.line, in.args)
			}
			out = append(out, w)
		}
	}
	return out
}

// shellWords splits a command line as sh would for the plain words, single
// and double quotes, and backslashes this file uses; anything sh would
// expand ($, `, globs, ;, |, &) is refused, so what the test runs is what
// the image build runs.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				t.Fatalf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				if strings.IndexByte("$`\\", s[j]) >= 0 {
					t.Fatalf("shell expansion in %q: the test cannot replay it", s)
				}
			}
			if j == len(s) {
				t.Fatalf("unterminated \" in %q", s)
			}
			cur.WriteString(s[i+1 : j])
			i = j
			inWord = true
		case strings.IndexByte("$`\\;|&<>*?()", c) >= 0:
			t.Fatalf("shell syntax %q in %q: the test cannot replay it", c, s)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// execForm reads a JSON-array (exec form) CMD or ENTRYPOINT.
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.args), &v); err != nil {
		t.Fatalf("%s:%d: %s is not in exec (JSON array) form: distroless has no shell: %v", dockerfile, in.line, in.cmd, err)
	}
	return v
}

// goBuild finds the stage's RUN go build and returns its words.
func goBuild(t *testing.T, s stage) ([]string, instruction) {
	t.Helper()
	for _, in := range s.all("RUN") {
		if w := shellWords(t, in.args); len(w) > 1 && w[0] == "go" && w[1] == "build" {
			return w, in
		}
	}
	t.Fatalf("%s: no RUN go build in stage %s", dockerfile, s.name)
	return nil, instruction{}
}

// flagValue returns the value of -name in words (-name v or -name=v).
func flagValue(words []string, name string) (string, int, bool) {
	for i, w := range words {
		if w == name && i+1 < len(words) {
			return words[i+1], i + 1, true
		}
		if v, ok := strings.CutPrefix(w, name+"="); ok {
			return v, i, true
		}
	}
	return "", -1, false
}

// The Dockerfile, read: a Go builder matching go.mod, a static build, a
// distroless or scratch final stage as a non-root user, the ports, the
// admin listener on 0.0.0.0 in a CMD the real wsd accepts, no HEALTHCHECK.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, string(readFile(t, dockerfile)))
	if len(stages) < 2 {
		t.Fatalf("%s: %d stages, want a builder and a final stage", dockerfile, len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	// The builder's Go is go.mod's (major.minor).
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(readFile(t, "go.mod"))
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "golang:" + string(goVersion[1]); build.from != want && !strings.HasPrefix(build.from, want+"-") && !strings.HasPrefix(build.from, want+"@") {
		t.Errorf("%s: the builder is %s, want %s (go.mod says go %s)", dockerfile, build.from, want, goVersion[1])
	}
	if !slices.Contains(build.env(t), "CGO_ENABLED=0") {
		t.Errorf("%s: the builder does not set ENV CGO_ENABLED=0", dockerfile)
	}
	words, run := goBuild(t, build)
	for _, f := range []string{"-trimpath"} {
		if !slices.Contains(words, f) {
			t.Errorf("%s:%d: go build without %s", dockerfile, run.line, f)
		}
	}
	if ld, _, _ := flagValue(words, "-ldflags"); !slices.Contains(strings.Fields(ld), "-s") || !slices.Contains(strings.Fields(ld), "-w") {
		t.Errorf("%s:%d: go build -ldflags %q, want -s -w", dockerfile, run.line, ld)
	}
	out, _, ok := flagValue(words, "-o")
	if !ok || words[len(words)-1] != "./cmd/wsd" {
		t.Fatalf("%s:%d: go build %q: want -o PATH ... ./cmd/wsd", dockerfile, run.line, words)
	}

	// The final stage: no shell, not root, runs the binary the builder made.
	if final.from != "scratch" && !strings.HasPrefix(final.from, "gcr.io/distroless/static") {
		t.Errorf("%s: the final stage is FROM %s, want gcr.io/distroless/static… or scratch", dockerfile, final.from)
	}
	users := final.all("USER")
	if len(users) == 0 {
		t.Fatalf("%s: the final stage sets no USER: it would run as root", dockerfile)
	}
	user := users[len(users)-1].args
	uid, gid, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("%s: USER %s: want a numeric non-zero uid (Kubernetes' runAsNonRoot cannot check a name)", dockerfile, user)
	}
	if gid == "0" || gid == "root" {
		t.Errorf("%s: USER %s: group root", dockerfile, user)
	}
	copied := false
	for _, c := range final.all("COPY") {
		f := strings.Fields(c.args)
		if len(f) == 3 && f[0] == "--from="+build.name && f[1] == out {
			copied = true
		}
	}
	if !copied {
		t.Errorf("%s: the final stage does not COPY --from=%s %s", dockerfile, build.name, out)
	}
	var entry, cmd []string
	for _, in := range final.all("ENTRYPOINT") {
		entry = execForm(t, in)
	}
	for _, in := range final.all("CMD") {
		cmd = execForm(t, in)
	}
	if len(entry) != 1 || !strings.HasSuffix(entry[0], "/wsd") {
		t.Errorf("%s: ENTRYPOINT %q, want the wsd binary alone (flags in CMD)", dockerfile, entry)
	}
	var ports []string
	for _, in := range final.all("EXPOSE") {
		ports = append(ports, strings.Fields(in.args)...)
	}
	if !slices.Equal(ports, []string{"8080", "9090"}) {
		t.Errorf("%s: EXPOSE %q, want 8080 9090", dockerfile, ports)
	}
	if hc := final.all("HEALTHCHECK"); len(hc) > 0 {
		t.Errorf("%s:%d: HEALTHCHECK cannot run in a distroless image (no shell, no curl)", dockerfile, hc[0].line)
	}
	cfg := effectiveConfig(t, cmd...)
	if cfg["admin"] != "0.0.0.0:9090" || cfg["listen"] != ":8080" {
		t.Errorf("%s: CMD %q gives admin %v and listen %v, want 0.0.0.0:9090 and :8080", dockerfile, cmd, cfg["admin"], cfg["listen"])
	}
}

// The Dockerfile's go build, run here with the stage's ENV, makes a static
// binary: no program interpreter and no dynamic section, stripped, and it runs.
func TestDockerfileBuildIsStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds wsd with the Dockerfile's flags")
	}
	stages := parseDockerfile(t, string(readFile(t, dockerfile)))
	build := stages[0]
	words, run := goBuild(t, build)
	_, i, _ := flagValue(words, "-o")
	bin := filepath.Join(t.TempDir(), "wsd")
	words = slices.Clone(words)
	if strings.HasPrefix(words[i], "-o=") {
		words[i] = "-o=" + bin
	} else {
		words[i] = bin
	}
	cmd := exec.Command(words[0], words[1:]...)
	cmd.Dir = root(t)
	cmd.Env = append(os.Environ(), build.env(t)...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s:%d: %s: %v\n%s", dockerfile, run.line, strings.Join(words, " "), err, out)
	}
	t.Logf("%s with %q: %v", strings.Join(words, " "), build.env(t), time.Since(start).Round(time.Millisecond))

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header: it is dynamically linked", p.Type)
		}
	}
	if s := f.Section(".dynamic"); s != nil {
		t.Error("the binary has a .dynamic section")
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs %q", libs)
	}
	if s := f.Section(".symtab"); s != nil {
		t.Error("the binary has a symbol table: -ldflags -s did not apply")
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "wsd ") {
		t.Errorf("%s --version: %v %q", bin, err, out)
	}
	t.Logf("%s", out)
}

// --- compose -----------------------------------------------------------------------

// composeSpec is the part of the Compose specification the file uses;
// UnmarshalStrict refuses any other key, so a misspelt one fails here
// (add a field when the file needs a new key).
type composeSpec struct {
	Name     string                    `json:"name"`
	Services map[string]composeService `json:"services"`
}

type composeService struct {
	Build *struct {
		Context    string `json:"context"`
		Dockerfile string `json:"dockerfile"`
	} `json:"build"`
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Ports   []string `json:"ports"`
	Ulimits map[string]struct {
		Soft int `json:"soft"`
		Hard int `json:"hard"`
	} `json:"ulimits"`
	Sysctls         map[string]string `json:"sysctls"`
	StopSignal      string            `json:"stop_signal"`
	StopGracePeriod string            `json:"stop_grace_period"`
	ReadOnly        bool              `json:"read_only"`
	SecurityOpt     []string          `json:"security_opt"`
	CapDrop         []string          `json:"cap_drop"`
	DependsOn       map[string]struct {
		Condition string `json:"condition"`
	} `json:"depends_on"`
	Healthcheck *struct {
		Test     []string `json:"test"`
		Interval string   `json:"interval"`
		Timeout  string   `json:"timeout"`
		Retries  int      `json:"retries"`
	} `json:"healthcheck"`
	Restart string `json:"restart"`
}

// The compose file: wsd built from the Dockerfile with flags the real wsd
// accepts, the admin port on the host's loopback only, a stop that
// outlasts the drain, no shell health check for the distroless image, and
// Redis healthy (redis-cli ping, exec form) before wsd starts.
func TestCompose(t *testing.T) {
	var c composeSpec
	if err := yaml.UnmarshalStrict(readFile(t, composeFile), &c); err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	wsd, ok := c.Services["wsd"]
	if !ok {
		t.Fatalf("%s: no service wsd", composeFile)
	}
	redis, ok := c.Services["redis"]
	if !ok {
		t.Fatalf("%s: no service redis", composeFile)
	}

	if wsd.Build == nil {
		t.Fatalf("%s: wsd has no build", composeFile)
	}
	if ctx := filepath.Join(root(t), filepath.Dir(composeFile), wsd.Build.Context); ctx != root(t) {
		t.Errorf("%s: build context %s is not the repository root", composeFile, wsd.Build.Context)
	}
	if wsd.Build.Dockerfile != dockerfile {
		t.Errorf("%s: dockerfile %s, want %s (relative to the context)", composeFile, wsd.Build.Dockerfile, dockerfile)
	}

	cfg := effectiveConfig(t, wsd.Command...)
	_, adminPort, _ := strings.Cut(cfg["admin"].(string), ":")
	_, wsPort, _ := strings.Cut(cfg["listen"].(string), ":")
	if !slices.Contains(wsd.Ports, wsPort+":"+wsPort) {
		t.Errorf("%s: wsd does not publish its WebSocket port %s: %q", composeFile, wsPort, wsd.Ports)
	}
	if !slices.Contains(wsd.Ports, "127.0.0.1:"+adminPort+":"+adminPort) {
		t.Errorf("%s: the admin port %s is not published on 127.0.0.1 only: %q", composeFile, adminPort, wsd.Ports)
	}
	for _, p := range wsd.Ports {
		if strings.HasSuffix(p, ":"+adminPort) && !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("%s: %q publishes the admin port beyond loopback", composeFile, p)
		}
	}
	drain := durationKey(t, cfg, "drain-timeout")
	if g, err := time.ParseDuration(wsd.StopGracePeriod); err != nil || g <= drain+adminShutdown {
		t.Errorf("%s: stop_grace_period %q does not outlast the drain %v + %v", composeFile, wsd.StopGracePeriod, drain, adminShutdown)
	}
	if wsd.StopSignal != "" && wsd.StopSignal != "SIGTERM" {
		t.Errorf("%s: stop_signal %s: wsd drains on SIGTERM", composeFile, wsd.StopSignal)
	}
	if wsd.Healthcheck != nil {
		t.Errorf("%s: wsd has a healthcheck, which the distroless image cannot run", composeFile)
	}
	nrOpen, _ := strconv.Atoi(profileWant["fs.nr_open"])
	if n := wsd.Ulimits["nofile"]; n.Soft == 0 || n.Soft > n.Hard || n.Hard > nrOpen {
		t.Errorf("%s: ulimits nofile %+v: want 0 < soft <= hard <= fs.nr_open %d", composeFile, n, nrOpen)
	}
	for k := range wsd.Sysctls {
		if !strings.HasPrefix(k, "net.") {
			t.Errorf("%s: sysctl %s is not in the container's network namespace", composeFile, k)
		}
	}
	if !slices.Contains(wsd.CapDrop, "ALL") || !wsd.ReadOnly {
		t.Errorf("%s: wsd should drop all capabilities and run read-only", composeFile)
	}
	if d, ok := wsd.DependsOn["redis"]; !ok || d.Condition != "service_healthy" {
		t.Errorf("%s: wsd does not wait for redis to be healthy: %+v", composeFile, wsd.DependsOn)
	}

	if redis.Image != "redis:7" && !strings.HasPrefix(redis.Image, "redis:7.") {
		t.Errorf("%s: redis image %q, want redis:7", composeFile, redis.Image)
	}
	if redis.Healthcheck == nil || !slices.Equal(redis.Healthcheck.Test, []string{"CMD", "redis-cli", "ping"}) {
		t.Errorf("%s: redis healthcheck %+v, want [CMD redis-cli ping]", composeFile, redis.Healthcheck)
	}
	for _, p := range redis.Ports {
		if !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("%s: redis port %q is published beyond loopback", composeFile, p)
		}
	}
}
