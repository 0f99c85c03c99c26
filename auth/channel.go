package auth

import "errors"

// MaxChannelLen is the longest channel name ValidChannel accepts.
const MaxChannelLen = 255

// Channel names are made of segments separated by ':', '.' or '/'. A name
// starting with '$' (server/admin namespace) or '#' (per-user channels) is
// private; that prefix character belongs to the first segment and must be
// followed by at least one more character of it.

var (
	errChannelEmpty    = errors.New("auth: channel name is empty")
	errChannelTooLong  = errors.New("auth: channel name is longer than 255 bytes")
	errChannelChar     = errors.New("auth: channel name has a byte outside printable ASCII (0x21-0x7e)")
	errChannelSegment  = errors.New("auth: channel name has an empty segment (leading, trailing or doubled separator)")
	errChannelNoPrefix = errors.New("auth: channel name is a bare '$' or '#' prefix")
)

func isSep(c byte) bool { return c == ':' || c == '.' || c == '/' }

func isPrivatePrefix(c byte) bool { return c == '$' || c == '#' }

// ValidChannel reports whether name may be used as a channel name (and so as
// a pattern: '*' is an ordinary printable character here): 1 to 255 bytes of
// printable ASCII without spaces, and no empty segment. It does not allocate.
func ValidChannel(name string) error {
	if name == "" {
		return errChannelEmpty
	}
	if len(name) > MaxChannelLen {
		return errChannelTooLong
	}
	i := 0
	if isPrivatePrefix(name[0]) {
		if len(name) == 1 || isSep(name[1]) {
			return errChannelNoPrefix
		}
		i = 1
	}
	seg := 0
	for ; i < len(name); i++ {
		c := name[i]
		if c < 0x21 || c > 0x7e {
			return errChannelChar
		}
		if isSep(c) {
			if seg == 0 {
				return errChannelSegment
			}
			seg = 0
			continue
		}
		seg++
	}
	if seg == 0 {
		return errChannelSegment
	}
	return nil
}

// IsPublic reports whether name is a public channel: one that does not start
// with '$' or '#'. The empty name is not public.
func IsPublic(name string) bool {
	return name != "" && !isPrivatePrefix(name[0])
}

// UserChannel is the per-user channel of sub: exactly "#" + sub, with no
// sub-channels of its own convention. (Only subs that are valid channel
// segments give a name that passes ValidChannel; the caller decides whether
// a user may subscribe to it, e.g. by listing it in the token's channels.)
func UserChannel(sub string) string { return "#" + sub }

// Match reports whether channel matches pattern. Both are split into
// segments at ':', '.' and '/'; the separators must be equal, position by
// position, and so must the segments, except that a pattern segment "*"
// matches any one whole non-empty segment. There is no multi-segment
// wildcard. A wildcard never reaches into a private namespace: "*" as the
// first segment does not match a segment starting with '$' or '#'; the first
// pattern segments "$*" and "#*" match any first segment with that prefix
// (e.g. "#*" matches every user channel "#alice"). Match does not allocate.
//
//	Match("chat:*", "chat:room1")    == true
//	Match("chat:*", "chat:room1.x")  == false
//	Match("chat:*", "chat:")         == false
//	Match("*", "news")               == true
//	Match("*", "news:x")             == false
//	Match("$admin:*", "$admin:ops")  == true
func Match(pattern, channel string) bool {
	if pattern == "" || channel == "" {
		return false
	}
	i, j := 0, 0
	for first := true; ; first = false {
		pi := segmentEnd(pattern, i)
		cj := segmentEnd(channel, j)
		if !matchSegment(pattern[i:pi], channel[j:cj], first) {
			return false
		}
		if pi == len(pattern) || cj == len(channel) {
			return pi == len(pattern) && cj == len(channel)
		}
		if pattern[pi] != channel[cj] {
			return false
		}
		i, j = pi+1, cj+1
	}
}

func segmentEnd(s string, from int) int {
	for k := from; k < len(s); k++ {
		if isSep(s[k]) {
			return k
		}
	}
	return len(s)
}

func matchSegment(p, c string, first bool) bool {
	if p == "*" {
		return c != "" && !(first && isPrivatePrefix(c[0]))
	}
	if first && len(p) == 2 && p[1] == '*' && isPrivatePrefix(p[0]) {
		return len(c) > 1 && c[0] == p[0]
	}
	return p == c
}

// CanSubscribe reports whether any of c.Channels matches channel.
func (c *Claims) CanSubscribe(channel string) bool {
	return c != nil && matchAny(c.Channels, channel)
}

// CanPublish reports whether any of c.Publish matches channel.
func (c *Claims) CanPublish(channel string) bool {
	return c != nil && matchAny(c.Publish, channel)
}

func matchAny(patterns []string, channel string) bool {
	for _, p := range patterns {
		if Match(p, channel) {
			return true
		}
	}
	return false
}
