package engine

import (
	"net/netip"

	"github.com/wsdproject/wsd/internal/gnet"

	"github.com/wsdproject/wsd/session"
)

// clientPage is how many slots' client addresses share one allocation.
const clientPage = 256

// clientAddr returns the address of the client on the other end of ss:
// the one its trusted proxy gave, else the TCP peer's.
func (l *loop) clientAddr(ss *session.Session, c gnet.Conn) netip.Addr {
	if ss.Has(session.FlagClientAddr) {
		p := l.clients[ss.Self/clientPage]
		return netip.AddrFrom16(p[ss.Self%clientPage]).Unmap()
	}
	if c == nil {
		return netip.Addr{}
	}
	return addrOf(c.RemoteAddr())
}

// setClientAddr keeps the client address a proxy gave for ss. Only
// connections through a proxy pay for it: pages are made on first use.
func (l *loop) setClientAddr(ss *session.Session, a netip.Addr) {
	i := int(ss.Self / clientPage)
	for len(l.clients) <= i {
		l.clients = append(l.clients, nil)
	}
	if l.clients[i] == nil {
		l.clients[i] = make([][16]byte, clientPage)
	}
	l.clients[i][ss.Self%clientPage] = a.As16()
	ss.Flags |= session.FlagClientAddr
}

// admitClient applies the per-address rules to the client address a proxy
// gave; on admitOK the connection counts under it until it is gone.
func (l *loop) admitClient(ss *session.Session, a netip.Addr) admitVerdict {
	ips := l.srv.admit.ips
	if ips == nil {
		return admitOK
	}
	if v := ips.admit(a, monoNow()); v != admitOK {
		return v
	}
	ss.Flags |= session.FlagClientTracked
	return admitOK
}

// releaseAdmission returns a gone connection's places under the caps.
func (l *loop) releaseAdmission(c gnet.Conn, ss *session.Session) {
	a := l.srv.admit
	a.release()
	switch {
	case ss.Has(session.FlagPeerTracked):
		a.ips.release(addrOf(c.RemoteAddr()))
	case ss.Has(session.FlagClientTracked):
		a.ips.release(l.clientAddr(ss, c))
	}
}

// strike records a violation by the client of ss (when bans are on).
func (l *loop) strike(ss *session.Session) {
	if ips := l.srv.admit.ips; ips != nil && (ss.Has(session.FlagPeerTracked) || ss.Has(session.FlagClientTracked)) {
		ips.strike(l.clientAddr(ss, ss.Conn), monoNow())
	}
}
