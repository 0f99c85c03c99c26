package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/wsdproject/wsd/hub"
)

// multiValue marks a flag that may be given several times (each --flag, or
// each element of a TOML array, is one Set).
type multiValue interface{ multi() }

// namespace is one --namespace: the options of channels "NAME:…" (and
// "$NAME:…", "#NAME:…"). Keys it does not set take the defaults.
type namespace struct {
	name string
	set  map[string]string
}

// namespaces is the --namespace flag.
type namespaces []namespace

func (*namespaces) multi() {}

var nsName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Set parses NAME:key=value,key=value (several separated by ';' in one
// value, for WSD_NAMESPACE). A key without "=value" means true.
func (n *namespaces) Set(s string) error {
	for _, spec := range strings.Split(s, ";") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		name, opts, _ := strings.Cut(spec, ":")
		if !nsName.MatchString(name) {
			return fmt.Errorf("namespace %q: want NAME:key=value,… with a name of letters, digits, '_' or '-'", name)
		}
		for _, have := range *n {
			if have.name == name {
				return fmt.Errorf("namespace %q given twice", name)
			}
		}
		ns := namespace{name: name, set: map[string]string{}}
		for _, kv := range strings.Split(opts, ",") {
			kv = strings.TrimSpace(kv)
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				v = "true"
			}
			if err := checkNamespaceKey(k, v); err != nil {
				return fmt.Errorf("namespace %q: %v", name, err)
			}
			ns.set[k] = v
		}
		*n = append(*n, ns)
	}
	return nil
}

func checkNamespaceKey(k, v string) error {
	switch k {
	case "history_size":
		if n, err := strconv.Atoi(v); err != nil || n < 0 {
			return fmt.Errorf("history_size %q: want a number, 0 or more", v)
		}
	case "history_ttl":
		if d, err := time.ParseDuration(v); err != nil || d <= 0 {
			return fmt.Errorf("history_ttl %q: want a duration such as 10m", v)
		}
	case "presence", "join_leave":
		if _, err := strconv.ParseBool(v); err != nil {
			return fmt.Errorf("%s %q: want true or false", k, v)
		}
	default:
		return fmt.Errorf("unknown key %q (want history_size, history_ttl, presence or join_leave)", k)
	}
	return nil
}

func (n *namespaces) String() string {
	var parts []string
	for _, ns := range *n {
		var kv []string
		for k, v := range ns.set {
			kv = append(kv, k+"="+v)
		}
		parts = append(parts, ns.name+":"+strings.Join(kv, ","))
	}
	return strings.Join(parts, ";")
}

// resolve returns the function that gives a channel its options: those of
// its namespace (the part before the first ':', after a leading '$' or
// '#') if it was configured, else the defaults.
func (n namespaces) resolve(defaults hub.ChannelOptions) func(string) hub.ChannelOptions {
	byName := map[string]hub.ChannelOptions{}
	for _, ns := range n {
		o := defaults
		for k, v := range ns.set {
			switch k {
			case "history_size":
				o.HistorySize, _ = strconv.Atoi(v)
			case "history_ttl":
				o.HistoryTTL, _ = time.ParseDuration(v)
			case "presence":
				o.Presence, _ = strconv.ParseBool(v)
			case "join_leave":
				o.JoinLeave, _ = strconv.ParseBool(v)
			}
		}
		byName[ns.name] = o
	}
	return func(ch string) hub.ChannelOptions {
		if len(byName) == 0 {
			return defaults
		}
		s := ch
		if s != "" && (s[0] == '$' || s[0] == '#') {
			s = s[1:]
		}
		if name, _, ok := strings.Cut(s, ":"); ok {
			if o, ok := byName[name]; ok {
				return o
			}
		}
		return defaults
	}
}

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func validNodeID(s string) bool { return nodeIDPattern.MatchString(s) }
