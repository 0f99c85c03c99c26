package deploy

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wsdproc"
	"github.com/wsdproject/wsd/internal/wstest"
)

// The files under test, relative to the repository root.
const (
	alertsFile    = "deploy/prometheus/wsd-alerts.yml"
	alertsTest    = "deploy/prometheus/wsd-alerts_test.yml"
	promConfig    = "deploy/prometheus/prometheus.yml"
	dashboardFile = "deploy/grafana/wsd-dashboard.json"
)

// family describes a metric family for the name and label checks.
type family struct {
	histogram bool // used as name_bucket{le}, name_sum, name_count
	// labels maps each label to its values; nil values: any value.
	labels map[string][]string
}

// planned lists the metric families the rules and the dashboard use that wsd
// does not expose yet: planned, not yet exposed. Delete an entry when its
// metric lands in /metrics; from then on the real scrape is what its name and
// label values are checked against (the test logs the entries it no longer
// needs). Any other name that /metrics lacks fails the test.
var planned = map[string]family{}

// synthetic are the series Prometheus adds to every target.
var synthetic = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped",
	"scrape_samples_post_metric_relabeling", "scrape_series_added"}

// targetLabels are attached by Prometheus, not exposed by wsd.
var targetLabels = map[string]bool{"job": true, "instance": true}

// root is the repository root (tests run in the package directory).
func root(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// --- promtool -------------------------------------------------------------------------

// promtool returns the path of promtool, or skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found in PATH: install the Debian package prometheus " +
			"(apt-get install prometheus, which provides /usr/bin/promtool) to run this check")
	}
	return p
}

// runPromtool runs promtool with args from the repository root and fails the
// test with its output if it does not succeed.
func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = root(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

func TestPromtoolCheckRules(t *testing.T) {
	out := runPromtool(t, "check", "rules", alertsFile)
	// promtool counts the rules it parsed; the line reader below must see as many.
	m := regexp.MustCompile(`SUCCESS: (\d+) rules found`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rule count in promtool's output")
	}
	if n, _ := strconv.Atoi(m[1]); n != len(readRules(t)) {
		t.Errorf("promtool found %d rules, the test's reader %d", n, len(readRules(t)))
	}
}

func TestPromtoolTestRules(t *testing.T) {
	runPromtool(t, "test", "rules", alertsTest)
}

// The config names its rule file relative to its own directory, so the check
// passes from any working directory (here the repository root).
func TestPromtoolCheckConfig(t *testing.T) {
	out := runPromtool(t, "check", "config", promConfig)
	if !strings.Contains(out, "1 rule files found") {
		t.Errorf("prometheus.yml does not load the rule file:\n%s", out)
	}
}

// Every PromQL expression of the dashboard parses: they are checked by
// promtool as recording rules, Grafana's variables replaced by values.
func TestPromtoolDashboardQueries(t *testing.T) {
	promtool(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, q := range dashboardQueries(t) {
		expr := grafanaVars.ReplaceAllStringFunc(q.expr, func(v string) string {
			if strings.Contains(v, "__rate_interval") || strings.Contains(v, "__interval") || strings.Contains(v, "__range") {
				return "5m"
			}
			return "x"
		})
		j, _ := json.Marshal(expr)
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, j)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, "check", "rules", f)
}

// --- the rule file ------------------------------------------------------------------

// rule is one alerting rule, read line by line: the module has no YAML
// dependency, so the reader knows the shapes the file uses (inline scalars
// and | / > block scalars); promtool is the judge of the YAML itself.
type rule struct {
	alert  string
	line   int
	fields map[string]string // expr, for, severity, summary, description
}

var ruleKeys = []string{"expr", "for", "severity", "summary", "description"}

func readRules(t *testing.T) []rule {
	t.Helper()
	lines := strings.Split(string(readFile(t, alertsFile)), "\n")
	start := regexp.MustCompile(`^(\s*)- (alert|record):\s*(\S+)\s*$`)
	var rules []rule
	for i := 0; i < len(lines); i++ {
		m := start.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		if m[2] == "record" {
			t.Fatalf("%s:%d: recording rules are not expected", alertsFile, i+1)
		}
		end := i + 1
		for end < len(lines) && (blank(lines[end]) || indent(lines[end]) > len(m[1])) {
			end++
		}
		r := rule{alert: m[3], line: i + 1, fields: map[string]string{}}
		for _, k := range ruleKeys {
			if v, ok := yamlField(lines[i+1:end], k); ok {
				r.fields[k] = v
			}
		}
		rules = append(rules, r)
		i = end - 1
	}
	return rules
}

func blank(s string) bool {
	s = strings.TrimSpace(s)
	return s == "" || strings.HasPrefix(s, "#")
}

func indent(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }

// yamlField returns the value of the first key in lines: an inline scalar
// (unquoted) or a block scalar (| joined by newlines, > by spaces).
func yamlField(lines []string, key string) (string, bool) {
	re := regexp.MustCompile(`^(\s*)(?:- )?` + regexp.QuoteMeta(key) + `:(?:\s+(.*))?$`)
	for i, l := range lines {
		m := re.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		v := strings.TrimSpace(m[2])
		if v == "" || v[0] != '|' && v[0] != '>' {
			return unquote(v), true
		}
		sep := "\n"
		if v[0] == '>' {
			sep = " "
		}
		var body []string
		for _, b := range lines[i+1:] {
			if strings.TrimSpace(b) != "" && indent(b) <= len(m[1]) {
				break
			}
			body = append(body, strings.TrimSpace(b))
		}
		return strings.TrimSpace(strings.Join(body, sep)), true
	}
	return "", false
}

func unquote(v string) string {
	switch {
	case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
		if u, err := strconv.Unquote(v); err == nil {
			return u
		}
	case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
		return strings.ReplaceAll(v[1:len(v)-1], "''", "'")
	}
	return v
}

// Every alert has an expression, a for, a known severity, and a summary and
// a description that use the alert's labels or value; the description ends
// with a runbook hint.
func TestAlertRules(t *testing.T) {
	rules := readRules(t)
	if len(rules) < 20 {
		t.Fatalf("read %d alerts from %s, expected the whole set", len(rules), alertsFile)
	}
	seen := map[string]bool{}
	for _, r := range rules {
		where := fmt.Sprintf("%s:%d %s", alertsFile, r.line, r.alert)
		if seen[r.alert] {
			t.Errorf("%s: alert name used twice", where)
		}
		seen[r.alert] = true
		for _, k := range ruleKeys {
			if r.fields[k] == "" {
				t.Errorf("%s: no %s", where, k)
			}
		}
		if d, err := time.ParseDuration(r.fields["for"]); err != nil || d <= 0 {
			t.Errorf("%s: for %q is not a positive duration", where, r.fields["for"])
		}
		if s := r.fields["severity"]; s != "critical" && s != "warning" && s != "info" {
			t.Errorf("%s: severity %q, want critical, warning or info", where, s)
		}
		for _, k := range []string{"summary", "description"} {
			if strings.HasPrefix(r.fields["expr"], "absent(") {
				break // no labels, and a value of 1
			}
			if v := r.fields[k]; !strings.Contains(v, "$labels") && !strings.Contains(v, "$value") {
				t.Errorf("%s: %s uses neither $labels nor $value: %q", where, k, v)
			}
		}
		if !strings.Contains(r.fields["description"], "Runbook:") {
			t.Errorf("%s: the description has no \"Runbook:\" hint", where)
		}
	}
}

// --- the dashboard ------------------------------------------------------------------

// query is one PromQL expression of the dashboard, and where it is.
type query struct {
	where string
	expr  string
}

// grafanaVars matches Grafana's variable forms: $var, ${var}, ${var:fmt}, [[var]].
var grafanaVars = regexp.MustCompile(`\$\{[^}]*\}|\$\w+|\[\[\w+\]\]`)

type panel struct {
	ID         int                 `json:"id"`
	Type       string              `json:"type"`
	Title      string              `json:"title"`
	Datasource *json.RawMessage    `json:"datasource"`
	GridPos    *struct{ H, W int } `json:"gridPos"`
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
	Inputs []struct {
		Name string `json:"name"`
	} `json:"__inputs"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(readFile(t, dashboardFile)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// labelValues matches Grafana's label_values(selector, label).
var labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*\w+\s*\)\s*$`)

// dashboardQueries returns every PromQL expression of the dashboard: panel
// targets, annotation queries, and the selectors of query variables.
func dashboardQueries(t *testing.T) []query {
	t.Helper()
	d := readDashboard(t)
	var qs []query
	for _, p := range allPanels(d.Panels) {
		for _, tg := range p.Targets {
			qs = append(qs, query{fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID), tg.Expr})
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			qs = append(qs, query{fmt.Sprintf("annotation %q", a.Name), a.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		var obj struct{ Query string }
		if json.Unmarshal(v.Query, &q) != nil {
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Fatalf("variable %s: query: %v", v.Name, err)
			}
			q = obj.Query
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Fatalf("variable %s: query %q is not label_values(selector, label)", v.Name, q)
		}
		qs = append(qs, query{fmt.Sprintf("variable %s", v.Name), m[1]})
	}
	return qs
}

// The dashboard's structure: a recent schema, a datasource variable (or a
// DS_PROMETHEUS input) and job and instance variables; every panel placed,
// with a datasource and queries; every query filtered by $instance.
func TestDashboard(t *testing.T) {
	d := readDashboard(t)
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want 36 or later", d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both needed", d.UID, d.Title)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	hasInput := false
	for _, in := range d.Inputs {
		hasInput = hasInput || in.Name == "DS_PROMETHEUS"
	}
	if vars["datasource"] != "datasource" && !hasInput {
		t.Errorf("no datasource variable and no DS_PROMETHEUS input")
	}
	for _, name := range []string{"job", "instance"} {
		if vars[name] != "query" {
			t.Errorf("no %s query variable", name)
		}
	}
	ids := map[int]bool{}
	n := 0
	for _, p := range allPanels(d.Panels) {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %d %q: no gridPos", p.ID, p.Title)
		}
		if p.Type == "row" {
			continue
		}
		n++
		if p.Datasource == nil || !strings.Contains(string(*p.Datasource), "$") {
			t.Errorf("panel %d %q: datasource is not the dashboard's variable", p.ID, p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %d %q: no queries", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %d %q target %s: empty expr", p.ID, p.Title, tg.RefID)
			}
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %d %q target %s: not filtered by $instance: %s", p.ID, p.Title, tg.RefID, tg.Expr)
			}
		}
	}
	if n < 20 {
		t.Errorf("%d panels, expected the whole set", n)
	}
}

// --- PromQL selectors ---------------------------------------------------------------

// selector is a metric name in an expression with its label matchers.
type selector struct {
	metric   string
	matchers []matcher
}

type matcher struct{ label, op, value string }

// Words that are not metric names where they stand without a parenthesis.
var promqlWords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "nan": true,
	// aggregations, which may be followed by by/without before their parenthesis
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true,
	"stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true,
	"quantile": true, "limitk": true, "limit_ratio": true,
}

// Words followed by a list of label names.
var labelListWords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// selectors returns the metric selectors of a PromQL expression and the
// labels its by, without, on, ignoring and group_* lists name. It is a
// lexer, not a parser (promtool checks the syntax): it skips strings,
// ranges, numbers, Grafana variables, function and aggregation names, and
// takes every other identifier for a metric name.
func selectors(expr string) (out []selector, grouping []string, err error) {
	s := expr
	skipSpace := func(i int) int {
		for i < len(s) && strings.ContainsRune(" \t\r\n", rune(s[i])) {
			i++
		}
		return i
	}
	closing := func(i int, open, close byte) (int, error) { // i at open; returns index after close
		depth := 0
		for j := i; j < len(s); j++ {
			switch s[j] {
			case open:
				depth++
			case close:
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unclosed %q at %d", open, i)
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			_, n, err := readString(s[i:])
			if err != nil {
				return nil, nil, err
			}
			i += n
		case c == '$':
			m := grafanaVars.FindStringIndex(s[i:])
			if m == nil || m[0] != 0 {
				return nil, nil, fmt.Errorf("stray $ at %d", i)
			}
			i += m[1]
		case c == '[':
			j, err := closing(i, '[', ']')
			if err != nil {
				return nil, nil, err
			}
			i = j
		case c == '{':
			return nil, nil, fmt.Errorf("selector without a metric name at %d", i)
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.' ||
				(s[i] == '+' || s[i] == '-') && (s[i-1] == 'e' || s[i-1] == 'E')) {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word := s[i:j]
			k := skipSpace(j)
			lower := strings.ToLower(word)
			switch {
			case labelListWords[lower]:
				if k < len(s) && s[k] == '(' {
					end, err := closing(k, '(', ')')
					if err != nil {
						return nil, nil, err
					}
					for _, l := range strings.Split(s[k+1:end-1], ",") {
						if l = strings.TrimSpace(l); l != "" {
							grouping = append(grouping, l)
						}
					}
					j = end
				}
			case promqlWords[lower], k < len(s) && s[k] == '(':
				// an operator, an aggregation or a function
			default:
				sel := selector{metric: word}
				if k < len(s) && s[k] == '{' {
					ms, n, err := readMatchers(s[k:])
					if err != nil {
						return nil, nil, fmt.Errorf("%s: %v", word, err)
					}
					sel.matchers = ms
					j = k + n
				}
				out = append(out, sel)
			}
			i = j
		default:
			i++
		}
	}
	return out, grouping, nil
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == ':'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// readString reads a PromQL string at the start of s: its value and length.
func readString(s string) (string, int, error) {
	q := s[0]
	for j := 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			raw := s[:j+1]
			if q == '`' {
				return raw[1 : len(raw)-1], j + 1, nil
			}
			if q == '\'' {
				raw = `"` + strings.ReplaceAll(raw[1:len(raw)-1], `"`, `\"`) + `"`
			}
			v, err := strconv.Unquote(raw)
			return v, j + 1, err
		}
	}
	return "", 0, fmt.Errorf("unclosed string")
}

// readMatchers reads {label op "value", ...} at the start of s.
func readMatchers(s string) ([]matcher, int, error) {
	re := regexp.MustCompile(`^[\s,]*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*`)
	var ms []matcher
	i := 1
	for {
		for i < len(s) && strings.ContainsRune(" \t\r\n,", rune(s[i])) {
			i++
		}
		if i < len(s) && s[i] == '}' {
			return ms, i + 1, nil
		}
		m := re.FindStringSubmatch(s[i:])
		if m == nil || i+len(m[0]) >= len(s) {
			return nil, 0, fmt.Errorf("bad label matcher: %.40q", s[i:])
		}
		i += len(m[0])
		v, n, err := readString(s[i:])
		if err != nil {
			return nil, 0, err
		}
		i += n
		ms = append(ms, matcher{m[1], m[2], v})
	}
}

func TestSelectors(t *testing.T) {
	for _, tc := range []struct {
		expr     string
		want     []string
		grouping []string
	}{
		{`up{job="wsd"} == 0`, []string{`up{job="wsd"}`}, nil},
		{`sum by (job, instance, reason) (rate(a_total{reason!="x"}[5m])) / on(job, instance) group_left sum by (job, instance) (rate(b_total[5m])) > 0.1`,
			[]string{`a_total{reason!="x"}`, `b_total`}, []string{"job", "instance", "reason", "job", "instance", "job", "instance"}},
		{`histogram_quantile(0.99, sum by (le) (rate(h_bucket{instance=~"$instance"}[$__rate_interval])))`,
			[]string{`h_bucket{instance=~"$instance"}`}, []string{"le"}},
		{`x > 1.5 * (x offset 1h) and y < 9e18 unless on(job) group_left() z == 1`, []string{"x", "x", "y", "z"}, []string{"job"}},
		{`count(r{a='b', c=~"d|e"} == 0) or vector(0)`, []string{`r{a="b",c=~"d|e"}`}, nil},
		{`sum(m) without (le) > bool 1e+3 # comment n`, []string{"m"}, []string{"le"}},
	} {
		sels, grouping, err := selectors(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		var got []string
		for _, s := range sels {
			str := s.metric
			if len(s.matchers) > 0 {
				var ms []string
				for _, m := range s.matchers {
					ms = append(ms, m.label+m.op+strconv.Quote(m.value))
				}
				str += "{" + strings.Join(ms, ",") + "}"
			}
			got = append(got, str)
		}
		if !slices.Equal(got, tc.want) || !slices.Equal(grouping, tc.grouping) {
			t.Errorf("%s:\n got %q %q\nwant %q %q", tc.expr, got, grouping, tc.want, tc.grouping)
		}
	}
	for _, bad := range []string{`{__name__="x"}`, `x{a="b"`, `x{a=b}`, `rate(x[5m)`, `sum by (a (x)`} {
		if _, _, err := selectors(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// --- the real wsd -------------------------------------------------------------------

func TestMain(m *testing.M) {
	code := m.Run()
	wsdproc.Cleanup()
	os.Exit(code)
}

// startWsd runs the wsd binary on free loopback ports with the HTTP API on
// (key apiKey) and returns its WebSocket and admin addresses.
func startWsd(t *testing.T, apiKey string) (ws, admin string) {
	t.Helper()
	p := wsdproc.Start(t, "--api-key", apiKey)
	return p.WS, p.Admin
}

// exposition is what /metrics says: for each sample name, its labels and
// their values.
type exposition map[string]map[string]map[string]bool

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+`)

func scrape(t *testing.T, admin string) exposition {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	exp := exposition{}
	for _, l := range strings.Split(string(body), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		m := sampleLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("/metrics: cannot read %q", l)
		}
		if exp[m[1]] == nil {
			exp[m[1]] = map[string]map[string]bool{}
		}
		if m[2] != "" {
			ms, _, err := readMatchers("{" + m[2] + "}")
			if err != nil {
				t.Fatalf("/metrics: %q: %v", l, err)
			}
			for _, lm := range ms {
				if exp[m[1]][lm.label] == nil {
					exp[m[1]][lm.label] = map[string]bool{}
				}
				exp[m[1]][lm.label][lm.value] = true
			}
		}
	}
	return exp
}

// exercise gives wsd some traffic, so that series that appear only once
// something happened (per-loop series, observed histograms) are there: a
// client subscribes to a channel, a publication reaches it through the HTTP
// API, and the client closes.
func exercise(t *testing.T, ws, admin, apiKey string) {
	t.Helper()
	c := wstest.Dial(t, ws, "/ws", wstest.Options{})
	if err := c.Send(frame.OpText, []byte(`{"type":"subscribe","id":1,"channel":"news"}`)); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || !bytes.Contains(msg, []byte(`"ack"`)) {
		t.Fatalf("subscribe: %s %v", msg, err)
	}
	req, _ := http.NewRequest("POST", "http://"+admin+"/api/publish",
		strings.NewReader(`{"channel":"news","data":{"hello":1}}`))
	req.Header.Set("Authorization", "apikey "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/publish: %d", resp.StatusCode)
	}
	if _, msg, err := c.ReadMessage(); err != nil || !bytes.Contains(msg, []byte(`"message"`)) {
		t.Fatalf("publication: %s %v", msg, err)
	}
	if err := c.Send(frame.OpClose, binary.BigEndian.AppendUint16(nil, uint16(frame.CloseNormal))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ReadMessage(); err == nil {
		t.Fatal("no close reply")
	}
	c.ExpectEOF(t)
}

// source is a file and the PromQL expressions it holds.
type source struct {
	file  string
	exprs []query
}

// The names the rules, their tests and the dashboard use are all exposed by
// a real wsd on /metrics, or added by Prometheus, or planned; and each label
// matcher names a label the metric has and, where the value is literal,
// values it takes.
func TestMetricNames(t *testing.T) {
	const apiKey = "deploy-test"
	ws, admin := startWsd(t, apiKey)
	exercise(t, ws, admin, apiKey)
	exp := scrape(t, admin)
	if exp["wsd_connections_open"] == nil {
		t.Fatalf("/metrics has no wsd_connections_open: not wsd?")
	}

	// known: what /metrics has, then what Prometheus adds, then planned
	// families not exposed yet.
	type known struct {
		labels  map[string]map[string]bool // nil set: any value
		planned bool
	}
	names := map[string]known{}
	for name, labels := range exp {
		names[name] = known{labels: labels}
	}
	for _, n := range synthetic {
		names[n] = known{labels: map[string]map[string]bool{}}
	}
	var nowExposed, stillPlanned []string
	for fam, f := range planned {
		series := map[string]map[string][]string{fam: f.labels}
		if f.histogram {
			withLe := map[string][]string{"le": nil}
			for k, v := range f.labels {
				withLe[k] = v
			}
			series = map[string]map[string][]string{fam + "_bucket": withLe, fam + "_sum": f.labels, fam + "_count": f.labels}
		}
		exposed := false
		for name := range series {
			if _, ok := exp[name]; ok {
				exposed = true
			}
		}
		if exposed {
			nowExposed = append(nowExposed, fam)
			continue
		}
		stillPlanned = append(stillPlanned, fam)
		for name, labels := range series {
			k := known{labels: map[string]map[string]bool{}, planned: true}
			for l, vs := range labels {
				if vs == nil {
					k.labels[l] = nil
					continue
				}
				k.labels[l] = map[string]bool{}
				for _, v := range vs {
					k.labels[l][v] = true
				}
			}
			names[name] = k
		}
	}
	sort.Strings(stillPlanned)
	sort.Strings(nowExposed)
	t.Logf("planned, not yet exposed (allowed): %s", strings.Join(stillPlanned, ", "))
	if len(nowExposed) > 0 {
		t.Errorf("planned but now exposed by wsd: remove from the planned list: %s",
			strings.Join(nowExposed, ", "))
	}

	// The expressions of every file.
	var rulesExprs, testExprs []query
	for _, r := range readRules(t) {
		rulesExprs = append(rulesExprs, query{"alert " + r.alert, r.fields["expr"]})
	}
	testLines := strings.Split(string(readFile(t, alertsTest)), "\n")
	for i := range testLines {
		for _, k := range []string{"series", "expr"} {
			if v, ok := yamlField(testLines[i:i+1], k); ok {
				testExprs = append(testExprs, query{fmt.Sprintf("line %d", i+1), v})
			}
		}
	}
	sources := []source{
		{alertsFile, rulesExprs},
		{alertsTest, testExprs},
		{dashboardFile, dashboardQueries(t)},
	}

	used := map[string]bool{}
	for _, src := range sources {
		if len(src.exprs) == 0 {
			t.Errorf("%s: no expressions found", src.file)
		}
		for _, q := range src.exprs {
			sels, grouping, err := selectors(q.expr)
			if err != nil {
				t.Errorf("%s, %s: %v in %s", src.file, q.where, err, q.expr)
				continue
			}
			if len(sels) == 0 {
				t.Errorf("%s, %s: no metric in %s", src.file, q.where, q.expr)
			}
			// A label grouped or matched on is one of the expression's metrics'.
			for _, l := range grouping {
				found := targetLabels[l]
				for _, sel := range sels {
					if _, ok := names[sel.metric].labels[l]; ok {
						found = true
					}
				}
				if !found {
					t.Errorf("%s, %s: no metric of the expression has the label %q: %s", src.file, q.where, l, q.expr)
				}
			}
			for _, sel := range sels {
				used[sel.metric] = true
				k, ok := names[sel.metric]
				if !ok {
					t.Errorf("%s, %s: metric %s is not exposed by wsd's /metrics and is not in the planned list",
						src.file, q.where, sel.metric)
					continue
				}
				for _, m := range sel.matchers {
					if targetLabels[m.label] {
						continue
					}
					values, ok := k.labels[m.label]
					if !ok {
						t.Errorf("%s, %s: %s has no label %q", src.file, q.where, sel.metric, m.label)
						continue
					}
					if values == nil || strings.Contains(m.value, "$") {
						continue
					}
					for _, v := range literalValues(m) {
						if !values[v] {
							t.Errorf("%s, %s: %s{%s} never has the value %q (it has %s)",
								src.file, q.where, sel.metric, m.label, v, strings.Join(sortedKeys(values), ", "))
						}
					}
				}
			}
		}
	}

	// What wsd exposes and the dashboard does not show, for whoever adds
	// metrics (not a failure: some are only for the alerts or for debugging).
	var unshown []string
	dashNames := map[string]bool{}
	for _, q := range dashboardQueries(t) {
		sels, _, _ := selectors(q.expr)
		for _, s := range sels {
			dashNames[s.metric] = true
		}
	}
	for name := range exp {
		if strings.HasPrefix(name, "wsd_") && !dashNames[name] {
			unshown = append(unshown, name)
		}
	}
	sort.Strings(unshown)
	if len(unshown) > 0 {
		t.Logf("wsd metrics not on the dashboard: %s", strings.Join(unshown, ", "))
	}
	t.Logf("%d metric names used, checked against %d names on /metrics", len(used), len(exp))
}

// literalValues returns the values a matcher names: its value, or for a
// regex that is a plain alternation (a|b|c), each alternative. Other
// regexes name nothing checkable.
func literalValues(m matcher) []string {
	if m.op == "=" || m.op == "!=" {
		return []string{m.value}
	}
	if regexp.MustCompile(`^[\w.+]+(\|[\w.+]+)*$`).MatchString(m.value) {
		return strings.Split(m.value, "|")
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
