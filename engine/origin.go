package engine

import (
	"bytes"
	"fmt"
	"strings"
)

// originPattern is one entry of the Origin allow-list: "*" (any origin),
// "scheme://host[:port]", or "scheme://*.domain[:port]" (any subdomain of
// domain, not domain itself).
type originPattern struct {
	any    bool
	scheme string
	host   string // lower case, with the port when the pattern names one
	suffix bool   // host is ".domain[:port]": match any subdomain
}

func parseOriginPattern(s string) (originPattern, error) {
	if s == "*" {
		return originPattern{any: true}, nil
	}
	scheme, host, ok := strings.Cut(s, "://")
	if !ok || scheme == "" || host == "" || strings.ContainsAny(host, "/?#@ ") {
		return originPattern{}, fmt.Errorf("invalid origin %q: want scheme://host[:port], scheme://*.domain[:port] or *", s)
	}
	p := originPattern{scheme: strings.ToLower(scheme), host: strings.ToLower(host)}
	if rest, ok := strings.CutPrefix(p.host, "*."); ok {
		if rest == "" || strings.Contains(rest, "*") {
			return originPattern{}, fmt.Errorf("invalid origin %q: a wildcard must be a leading *. before a domain", s)
		}
		p.host, p.suffix = "."+rest, true
	} else if strings.Contains(p.host, "*") {
		return originPattern{}, fmt.Errorf("invalid origin %q: a wildcard must be a leading *. before a domain", s)
	}
	p.host = stripDefaultPort(p.scheme, p.host)
	return p, nil
}

func (p *originPattern) match(scheme, host []byte) bool {
	if p.any {
		return true
	}
	if !bytes.EqualFold(scheme, []byte(p.scheme)) {
		return false
	}
	h := stripDefaultPortBytes(p.scheme, host)
	if p.suffix {
		return len(h) > len(p.host) && bytes.EqualFold(h[len(h)-len(p.host):], []byte(p.host)) &&
			!bytes.ContainsRune(h[:len(h)-len(p.host)], ':')
	}
	return bytes.EqualFold(h, []byte(p.host))
}

// splitOrigin splits an Origin header value ("scheme://host[:port]").
func splitOrigin(o []byte) (scheme, host []byte, ok bool) {
	i := bytes.Index(o, []byte("://"))
	if i <= 0 || i+3 >= len(o) {
		return nil, nil, false
	}
	scheme, host = o[:i], o[i+3:]
	if bytes.ContainsAny(host, "/?#@ ") {
		return nil, nil, false
	}
	return scheme, host, true
}

// equalFoldHost reports whether an Origin's host[:port] names the same
// host as the request's Host header (default ports ignored).
func equalFoldHost(originHost, host, scheme []byte) bool {
	s := strings.ToLower(string(scheme)) // short, and only with same-origin on
	return bytes.EqualFold(stripDefaultPortBytes(s, originHost), stripDefaultPortBytes(s, host))
}

func stripDefaultPort(scheme, host string) string {
	return string(stripDefaultPortBytes(scheme, []byte(host)))
}

func stripDefaultPortBytes(scheme string, host []byte) []byte {
	switch scheme {
	case "http", "ws":
		return bytes.TrimSuffix(host, []byte(":80"))
	case "https", "wss":
		return bytes.TrimSuffix(host, []byte(":443"))
	}
	return host
}
