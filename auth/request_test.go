package auth

import "testing"

func TestTokenFromRequest(t *testing.T) {
	for _, tc := range []struct {
		name               string
		uri, authz, cookie string
		cookieName         string
		want               string
		ok                 bool
	}{
		{"bearer", "/ws", "Bearer abc.def.ghi", "", "", "abc.def.ghi", true},
		{"bearer lowercase", "/ws", "bearer abc.def.ghi", "", "", "abc.def.ghi", true},
		{"bearer mixed case, extra spaces", "/ws", "  BeArEr \t abc.def.ghi  ", "", "", "abc.def.ghi", true},
		{"bearer wins over query and cookie", "/ws?token=q", "Bearer h", "t=c", "t", "h", true},
		{"basic scheme ignored", "/ws?token=q", "Basic dXNlcjpwYXNz", "", "", "q", true},
		{"bearer without token", "/ws?token=q", "Bearer ", "", "", "q", true},
		{"bearer glued", "/ws", "Bearerabc", "", "", "", false},
		{"query", "/ws?token=abc.def.ghi", "", "", "", "abc.def.ghi", true},
		{"query url-encoded", "/ws?token=a%2Eb%2ec+d%3D", "", "", "", "a.b.c d=", true},
		{"query among other params", "/ws?room=1&tok=x&token=abc&x=token", "", "", "", "abc", true},
		{"query encoded key", "/ws?%74oken=abc", "", "", "", "abc", true},
		{"query first non-empty", "/ws?token=&token=second", "", "", "", "second", true},
		{"query fragment cut", "/ws?token=abc#frag", "", "", "", "abc", true},
		{"query bad escape", "/ws?token=ab%zz", "", "", "", "", false},
		{"query bad escape then good", "/ws?token=%4&token=ok", "", "", "", "ok", true},
		{"query prefix key", "/ws?tokens=abc&xtoken=d", "", "", "", "", false},
		{"query no value", "/ws?token", "", "", "", "", false},
		{"path only", "/ws/token=abc", "", "", "", "", false},
		{"cookie among several", "/ws", "", "theme=dark; session=abc.def; lang=en", "session", "abc.def", true},
		{"cookie first", "/ws", "", "session=abc;other=1", "session", "abc", true},
		{"cookie quoted", "/ws", "", `a=1; session="q.r.s"`, "session", "q.r.s", true},
		{"cookie no spaces", "/ws", "", "a=1;session=z", "session", "z", true},
		{"cookie name is case-sensitive", "/ws", "", "Session=abc", "session", "", false},
		{"cookie name prefix", "/ws", "", "session2=abc; xsession=d", "session", "", false},
		{"cookie not asked for", "/ws", "", "session=abc", "", "", false},
		{"query wins over cookie", "/ws?token=q", "", "session=c", "session", "q", true},
		{"missing", "/ws?a=b", "", "x=y", "session", "", false},
		{"all empty", "", "", "", "session", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := TokenFromRequest([]byte(tc.uri), []byte(tc.authz), []byte(tc.cookie), tc.cookieName)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("= %q, %v; want %q, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestTokenFromRequestCopies: the result must survive reuse of the buffer.
func TestTokenFromRequestCopies(t *testing.T) {
	for _, in := range [][3]string{
		{"/", "Bearer abcdef", ""},
		{"/?token=abcdef", "", ""},
		{"/", "", "s=abcdef"},
	} {
		uri, authz, cookie := []byte(in[0]), []byte(in[1]), []byte(in[2])
		got, ok := TokenFromRequest(uri, authz, cookie, "s")
		for _, b := range [][]byte{uri, authz, cookie} {
			for i := range b {
				b[i] = 'X'
			}
		}
		if !ok || got != "abcdef" {
			t.Fatalf("%q: got %q after the buffer was overwritten", in, got)
		}
	}
}

func TestTokenFromRequestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	for _, tc := range []struct {
		uri, authz, cookie string
		max                float64
	}{
		{"/ws", "Bearer abc.def.ghi", "", 1},
		{"/ws?a=b&token=abc.def.ghi", "", "", 1},
		{"/ws?token=abc%2Edef", "", "", 1},
		{"/ws", "", "a=b; session=abc.def", 1},
		{"/ws?a=b", "Basic x", "a=b", 0},
	} {
		uri, authz, cookie := []byte(tc.uri), []byte(tc.authz), []byte(tc.cookie)
		n := testing.AllocsPerRun(100, func() { TokenFromRequest(uri, authz, cookie, "session") })
		if n > tc.max {
			t.Errorf("%q %q %q: %v allocations, want <= %v", tc.uri, tc.authz, tc.cookie, n, tc.max)
		}
	}
}
