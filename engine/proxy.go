package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"

	"github.com/pires/go-proxyproto"
)

// The PROXY protocol (HAProxy's, v1 text and v2 binary) is parsed with
// pires/go-proxyproto; wsd only finds where the header ends in the bytes
// it has buffered, since gnet hands it bytes rather than a reader.

var (
	proxyV1 = []byte("PROXY ")
	proxyV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// errNotProxy: the bytes do not start with a PROXY protocol signature.
var errNotProxy = errors.New("no PROXY protocol header")

// proxyV1Max is the longest v1 header (the spec's 107 bytes).
const proxyV1Max = 107

// looksLikeProxy reports whether b starts with (a prefix of) a PROXY
// protocol signature: more is false when b is too short to be sure.
func looksLikeProxy(b []byte) (yes, sure bool) {
	for _, sig := range [][]byte{proxyV1, proxyV2} {
		n := min(len(b), len(sig))
		if bytes.Equal(b[:n], sig[:n]) {
			return true, n == len(sig)
		}
	}
	return false, true
}

// proxyHeaderLen returns the length of the PROXY header at the start of
// b, 0 if b does not hold all of it yet.
func proxyHeaderLen(b []byte, limit int) (int, error) {
	yes, sure := looksLikeProxy(b)
	switch {
	case !yes:
		return 0, errNotProxy
	case !sure:
		return 0, nil
	}
	if b[0] == 'P' {
		i := bytes.Index(b[:min(len(b), proxyV1Max)], []byte("\r\n"))
		if i < 0 {
			if len(b) >= proxyV1Max {
				return 0, errors.New("PROXY v1 header longer than 107 bytes")
			}
			return 0, nil
		}
		return i + 2, nil
	}
	if len(b) < 16 {
		return 0, nil
	}
	n := 16 + int(binary.BigEndian.Uint16(b[14:16]))
	if n > limit {
		return 0, errors.New("PROXY v2 header too long")
	}
	if len(b) < n {
		return 0, nil
	}
	return n, nil
}

// proxyParser parses PROXY headers for one event loop (its reader is
// reused).
type proxyParser struct {
	src bytes.Reader
	br  *bufio.Reader
}

// parse returns the client address a complete PROXY header names; ok is
// false for a header that names none (LOCAL, UNKNOWN: the proxy's own
// connection, such as a health check).
func (p *proxyParser) parse(h []byte) (addr netip.Addr, ok bool, err error) {
	if p.br == nil {
		p.br = bufio.NewReaderSize(&p.src, 512)
	}
	p.src.Reset(h)
	p.br.Reset(&p.src)
	hdr, err := proxyproto.Read(p.br)
	p.src.Reset(nil)
	if err != nil {
		return netip.Addr{}, false, err
	}
	if hdr.Command.IsLocal() {
		return netip.Addr{}, false, nil
	}
	if ta, isTCP := hdr.SourceAddr.(*net.TCPAddr); isTCP {
		if a, good := netip.AddrFromSlice(ta.IP); good {
			return a.Unmap(), true, nil
		}
	}
	return netip.Addr{}, false, nil
}

// forwardedFor picks the client's address from X-Forwarded-For values
// (several headers joined with commas): the rightmost address that is not
// a trusted proxy (addresses left of it were written by the client, and
// may be anything). ok is false when there is no usable address.
func (a *admission) forwardedFor(xff []byte) (netip.Addr, bool) {
	s := string(xff) // short; parsed only for connections from trusted proxies
	var last netip.Addr
	for s != "" {
		i := strings.LastIndexByte(s, ',')
		part := strings.TrimSpace(s[i+1:])
		s = s[:max(i, 0)]
		if i < 0 {
			s = ""
		}
		addr, err := netip.ParseAddr(part)
		if err != nil {
			if ap, err2 := netip.ParseAddrPort(part); err2 == nil {
				addr = ap.Addr()
			} else {
				return last, last.IsValid()
			}
		}
		addr = addr.Unmap()
		last = addr
		if !a.trustedPeer(addr) {
			return addr, true
		}
	}
	return last, last.IsValid()
}
