package protocol_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/internal/stack"
	"github.com/wsdproject/wsd/internal/wstest"
	"github.com/wsdproject/wsd/protocol"
)

// TestHandshakeAuth: a token is required unless anonymous clients are
// allowed, and a bad one is refused even then; the token may come from
// the header, the query or the cookie.
func TestHandshakeAuth(t *testing.T) {
	strict := startStack(t, stackOptions{Tokens: true})
	open := startStack(t, stackOptions{Tokens: true, Anonymous: true})
	good := token(t, "alice", nil)
	expired := token(t, "alice", jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix()})
	forged := good[:len(good)-4] + "AAAA"
	for _, tc := range []struct {
		name   string
		s      *stack.Stack
		req    string
		status int
		body   string
	}{
		{"no token", strict, wstest.UpgradeRequest("/ws"), 401, "a token is required"},
		{"forged", strict, wstest.UpgradeRequest("/ws", "Authorization: Bearer "+forged), 401, "invalid token"},
		{"expired", strict, wstest.UpgradeRequest("/ws", "Authorization: Bearer "+expired), 401, "token expired"},
		{"forged, anonymous allowed", open, wstest.UpgradeRequest("/ws", "Authorization: Bearer "+forged), 401, "invalid token"},
		{"bearer", strict, wstest.UpgradeRequest("/ws", "Authorization: Bearer "+good), 101, ""},
		{"query", strict, wstest.UpgradeRequest("/ws?token=" + good), 101, ""},
		{"cookie", strict, wstest.UpgradeRequest("/ws", "Cookie: a=1; wsd_token="+good), 101, ""},
		{"anonymous", open, wstest.UpgradeRequest("/ws"), 101, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := wstest.RawRequest(t, tc.s.Addr, tc.req)
			if r.Status != tc.status || (tc.body != "" && r.Body != tc.body) {
				t.Fatalf("%d %q, want %d %q", r.Status, r.Body, tc.status, tc.body)
			}
			if tc.status == 401 && r.Header.Get("WWW-Authenticate") != "Bearer" {
				t.Fatalf("401 without WWW-Authenticate: %v", r.Header)
			}
		})
	}
}

// TestPermissions walks every permission rule of subscribe, publish,
// presence and history.
func TestPermissions(t *testing.T) {
	s := startStack(t, stackOptions{Tokens: true, Anonymous: true})
	anon := s.Dial(t, "")
	alice := s.Dial(t, token(t, "alice", jwt.MapClaims{
		"channels": []string{"$ops:*"},
		"publish":  []string{"chat:*", "$ops:alerts"},
	}))
	for _, tc := range []struct {
		name string
		c    *wstest.Client
		msg  string
		code string // "" for an ack
	}{
		{"anonymous, public", anon, `{"type":"subscribe","channel":"news"}`, ""},
		{"anonymous, private $", anon, `{"type":"subscribe","channel":"$ops:alerts"}`, protocol.CodeForbidden},
		{"anonymous, user channel", anon, `{"type":"subscribe","channel":"#alice"}`, protocol.CodeForbidden},
		{"anonymous, publish", anon, `{"type":"publish","channel":"news","data":1}`, protocol.CodeForbidden},
		{"anonymous, history of $", anon, `{"type":"history","channel":"$ops:alerts"}`, protocol.CodeForbidden},
		{"anonymous, presence of #", anon, `{"type":"presence","channel":"#alice"}`, protocol.CodeForbidden},
		{"claim names the $ channel", alice, `{"type":"subscribe","channel":"$ops:alerts"}`, ""},
		{"claim does not reach deeper", alice, `{"type":"subscribe","channel":"$ops:alerts.x"}`, protocol.CodeForbidden},
		{"other $ namespace", alice, `{"type":"subscribe","channel":"$billing:x"}`, protocol.CodeForbidden},
		{"own user channel", alice, `{"type":"subscribe","channel":"#alice"}`, ""},
		{"someone else's", alice, `{"type":"subscribe","channel":"#bob"}`, protocol.CodeForbidden},
		{"publish claim", alice, `{"type":"publish","channel":"chat:lobby","data":{"t":"hi"}}`, ""},
		{"publish outside the claim", alice, `{"type":"publish","channel":"news","data":1}`, protocol.CodeForbidden},
		{"publish without data", alice, `{"type":"publish","channel":"chat:x"}`, protocol.CodeMissingData},
		{"subscribe twice", alice, `{"type":"subscribe","channel":"#alice"}`, protocol.CodeAlreadySubscribed},
		{"publish to a $ channel named", alice, `{"type":"publish","channel":"$ops:alerts","data":1}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := call(t, tc.c, "%s", tc.msg)
			if tc.code == "" && m.Type != "ack" || tc.code != "" && (m.Type != "error" || m.Code != tc.code) {
				t.Fatalf("got %+v, want %q", m, tc.code)
			}
		})
	}
	// Alice got her own publication to $ops:alerts (she is subscribed).
	if m := read(t, alice); m.Type != "message" || m.Channel != "$ops:alerts" {
		t.Fatalf("own publication: %+v", m)
	}
	barrier(t, alice)

	// The per-user channel reaches every connection of that user.
	alice2 := s.Dial(t, token(t, "alice", nil))
	subscribe(t, alice2, "#alice")
	s.Hub.Publish("#alice", []byte(`"for alice"`))
	for _, c := range []*wstest.Client{alice, alice2} {
		if m := read(t, c); m.Channel != "#alice" || string(m.Data) != `"for alice"` {
			t.Fatalf("user channel: %+v", m)
		}
	}

	// --allow-client-publish opens public channels to everyone, and only those.
	p := startStack(t, stackOptions{Tokens: true, Anonymous: true, Policy: hub.Policy{ClientPublish: true}})
	a := p.Dial(t, "")
	if m := call(t, a, `{"type":"publish","channel":"news","data":1}`); m.Type != "ack" {
		t.Fatalf("client publish: %+v", m)
	}
	if m := call(t, a, `{"type":"publish","channel":"$ops:x","data":1}`); m.Code != protocol.CodeForbidden {
		t.Fatalf("client publish to $: %+v", m)
	}
}

// TestTokenExpiry: a connection is closed with 4001 when its token
// expires; a refresh with a new token of the same user moves the expiry;
// a token of another user is refused.
func TestTokenExpiry(t *testing.T) {
	s := startStack(t, stackOptions{Tokens: true, Engine: engine.Config{Tick: 50 * time.Millisecond}})
	soon := time.Now().Add(1500 * time.Millisecond)
	c := s.Dial(t, token(t, "alice", jwt.MapClaims{"exp": soon.Unix()}))
	if m := call(t, c, `{"type":"refresh","token":%q}`, token(t, "bob", jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()})); m.Code != protocol.CodeInvalidToken {
		t.Fatalf("refresh as another user: %+v", m)
	}
	if m := call(t, c, `{"type":"refresh","token":"garbage"}`); m.Code != protocol.CodeInvalidToken {
		t.Fatalf("refresh with garbage: %+v", m)
	}
	later := time.Now().Add(3 * time.Second).Unix()
	if m := call(t, c, `{"type":"refresh","token":%q,"id":1}`, token(t, "alice", jwt.MapClaims{"exp": later})); m.Type != "ack" || m.Expires != later {
		t.Fatalf("refresh: %+v", m)
	}
	start := time.Now()
	c.ExpectCloseReply(t, 4001)
	if time.Now().Unix() < later {
		t.Fatalf("closed at %v, before the refreshed expiry %v (waited %v)", time.Now().Unix(), later, time.Since(start))
	}
	_ = http.StatusOK
}
