package auth

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, channel string
		want             bool
	}{
		{"chat:*", "chat:room1", true},
		{"chat:*", "chat:room1.x", false},
		{"chat:*", "chat:", false},
		{"chat:*", "chat", false},
		{"chat:*", "chat.room1", false}, // separators must be equal
		{"chat:*", "chats:room1", false},
		{"*", "news", true},
		{"*", "news:x", false},
		{"*", "", false},
		{"", "", false},
		{"", "news", false},
		{"news", "news", true},
		{"news", "new", false},
		{"news", "newsy", false},
		{"$admin:*", "$admin:ops", true},
		{"$admin:*", "$admin:ops:x", false},
		{"$admin:*", "$other:ops", false},
		{"*", "$admin", false}, // a wildcard does not reach private namespaces
		{"*:ops", "$admin:ops", false},
		{"*", "#alice", false},
		{"$*:ops", "$admin:ops", true},
		{"$*", "$", false},
		{"#*", "#alice", true},
		{"#*", "#", false},
		{"#*", "$alice", false},
		{"#*", "alice", false},
		{"#alice", "#alice", true},
		{"#alice", "#bob", false},
		{"a.*/c:*", "a.b/c:d", true},
		{"a.*/c:*", "a.b:c:d", false},
		{"a.*.c", "a..c", false},
		{"*.*", "x.y", true},
		{"*.*", "x.", false},
		{"*.*", ".y", false},
		{"a:*:c", "a:b:c", true},
		{"a:*:c", "a:b:d", false},
		{"a:*:c", "a:b", false},
		{"a:b*", "a:bc", false}, // '*' is a wildcard only as a whole segment
		{"a:b*", "a:b*", true},
		{"chat:*", "chat:*", true},
		{"**", "a:b", false},
		{"**", "**", true},
	} {
		if got := Match(tc.pattern, tc.channel); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.channel, got, tc.want)
		}
	}
}

func TestValidChannel(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"news", true},
		{"chat:room1", true},
		{"a.b/c:d", true},
		{"$admin", true},
		{"$admin:ops", true},
		{"#alice", true},
		{"#alice@example.com", true},
		{"chat:*", true},
		{"~!@$%^&*()_+-={}[]|\\;'\"<>,?`", true},
		{strings.Repeat("a", 255), true},
		{"", false},
		{strings.Repeat("a", 256), false},
		{"with space", false},
		{"tab\there", false},
		{"nl\n", false},
		{"del\x7f", false},
		{"caf\xc3\xa9", false},
		{":a", false},
		{"a:", false},
		{"a::b", false},
		{"a:.b", false},
		{".", false},
		{"/", false},
		{"$", false},
		{"#", false},
		{"$:a", false},
		{"#.a", false},
		{"$a:", false},
		{"$$", true},
	} {
		if err := ValidChannel(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidChannel(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestIsPublicAndUserChannel(t *testing.T) {
	for name, want := range map[string]bool{"news": true, "chat:x": true, "$admin": false, "#alice": false, "": false, "a$": true} {
		if got := IsPublic(name); got != want {
			t.Errorf("IsPublic(%q) = %v", name, got)
		}
	}
	if got := UserChannel("alice"); got != "#alice" {
		t.Errorf("UserChannel = %q", got)
	}
	if IsPublic(UserChannel("alice")) || ValidChannel(UserChannel("alice")) != nil {
		t.Error("a user channel must be a valid private channel")
	}
	if !Match("#*", UserChannel("alice")) || Match("*", UserChannel("alice")) {
		t.Error("user channels match #* and not *")
	}
}

func TestCanSubscribePublish(t *testing.T) {
	c := &Claims{Sub: "alice", Channels: []string{"news", "chat:*", "#alice"}, Publish: []string{"chat:lobby"}}
	for ch, want := range map[string]bool{"news": true, "chat:x": true, "#alice": true, "#bob": false, "chat:x:y": false, "sport": false} {
		if got := c.CanSubscribe(ch); got != want {
			t.Errorf("CanSubscribe(%q) = %v", ch, got)
		}
	}
	for ch, want := range map[string]bool{"chat:lobby": true, "chat:x": false, "news": false} {
		if got := c.CanPublish(ch); got != want {
			t.Errorf("CanPublish(%q) = %v", ch, got)
		}
	}
	var none *Claims
	if none.CanSubscribe("news") || none.CanPublish("news") || (&Claims{}).CanSubscribe("news") {
		t.Error("no claims grant nothing")
	}
}

func TestMatchAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	c := &Claims{Channels: []string{"news", "chat:*", "$admin:*:x"}}
	n := testing.AllocsPerRun(100, func() {
		Match("chat:*", "chat:room1")
		Match("a.*/c:*", "a.b/c:d")
		Match("$admin:*", "$admin:ops")
		ValidChannel("chat:room1.x")
		ValidChannel("a::b")
		c.CanSubscribe("$admin:ops:x")
	})
	if n != 0 {
		t.Fatalf("Match/ValidChannel/CanSubscribe allocate %v times", n)
	}
}
