package hub

import (
	"time"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
)

// Policy says what connections may do beyond what their token grants.
type Policy struct {
	// ClientPublish lets any connection publish to public channels
	// (--allow-client-publish); otherwise publishing needs a token whose
	// "publish" claim matches the channel.
	ClientPublish bool
}

// Client is the hub's state of one connection, kept as its engine.Conn
// Value. Owned by the connection's loop.
type Client struct {
	ID     string       // cluster-wide id (node id + connection id), set once shown in presence or events
	Claims *auth.Claims // nil for an anonymous connection
	subs   []subscription
}

// subscription is one of a client's channels: the loop's channel record
// and the client's position in its member list.
type subscription struct {
	ch  *localChan
	pos int32
}

// NewClient returns the state of a connection authenticated with claims
// (nil: anonymous).
func NewClient(claims *auth.Claims) *Client { return &Client{Claims: claims} }

// User returns the token's subject, "" for an anonymous connection.
func (cl *Client) User() string {
	if cl.Claims == nil {
		return ""
	}
	return cl.Claims.Sub
}

// Info returns the presence entry of the client.
func (cl *Client) Info() broker.ClientInfo {
	ci := broker.ClientInfo{Client: cl.ID}
	if cl.Claims != nil {
		ci.User, ci.Info = cl.Claims.Sub, cl.Claims.Info
	}
	return ci
}

// Expiry returns when the client's token expires (zero: never).
func (cl *Client) Expiry() time.Time {
	if cl.Claims == nil {
		return time.Time{}
	}
	return cl.Claims.Exp
}

// Subscribed reports whether the client is subscribed to ch.
func (cl *Client) Subscribed(ch string) bool {
	for _, s := range cl.subs {
		if s.ch.name == ch {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether the client may subscribe to ch (and read
// its presence and history): any admitted connection may use a public
// channel; a user may use its own channel "#<sub>"; any other channel
// (names starting with '$' or '#') needs a pattern of the token's
// "channels" claim that matches it.
func (cl *Client) CanSubscribe(ch string) bool {
	if auth.IsPublic(ch) {
		return true
	}
	if cl.Claims == nil {
		return false
	}
	return ch == auth.UserChannel(cl.Claims.Sub) || cl.Claims.CanSubscribe(ch)
}

// CanPublish reports whether the client may publish to ch: a pattern of
// the token's "publish" claim must match it, or the policy allows client
// publishing and ch is public.
func (cl *Client) CanPublish(ch string, p Policy) bool {
	if p.ClientPublish && auth.IsPublic(ch) {
		return true
	}
	return cl.Claims != nil && cl.Claims.CanPublish(ch)
}

// ClientOf returns the hub state of c, or nil if c has none.
func ClientOf(c engine.Conn) *Client {
	cl, _ := c.Value().(*Client)
	return cl
}
