package auth

import (
	"bytes"
	"strings"
)

// TokenFromRequest finds the token of an upgrade request, looking in turn at
//
//   - the Authorization header: "Bearer <token>", scheme case-insensitive
//     (another scheme, or an empty token, is passed over);
//   - the first non-empty "token" parameter of the request URI's query,
//     URL-decoded (a value with a bad %-escape is passed over);
//   - the cookie named cookieName, when cookieName != "" (cookie names are
//     case-sensitive; a quoted value is unquoted; no URL-decoding).
//
// The inputs may be views into a reused buffer: the token returned is a copy,
// which is the only allocation made (none when no token is found).
func TokenFromRequest(uri, authorization, cookieHeader []byte, cookieName string) (string, bool) {
	if t := bearerToken(authorization); len(t) > 0 {
		return string(t), true
	}
	if t, ok := queryToken(uri); ok {
		return t, true
	}
	if cookieName != "" {
		if t := cookieValue(cookieHeader, cookieName); len(t) > 0 {
			return string(t), true
		}
	}
	return "", false
}

func isOWS(c byte) bool { return c == ' ' || c == '\t' }

func trimOWS(b []byte) []byte {
	for len(b) > 0 && isOWS(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isOWS(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// bearerToken is the token of "Bearer <token>", or nil.
func bearerToken(h []byte) []byte {
	h = trimOWS(h)
	const scheme = "bearer"
	if len(h) <= len(scheme) || !isOWS(h[len(scheme)]) {
		return nil
	}
	for i := 0; i < len(scheme); i++ {
		if h[i]|0x20 != scheme[i] {
			return nil
		}
	}
	return trimOWS(h[len(scheme):])
}

// queryToken is the URL-decoded value of the first non-empty "token"
// parameter of uri's query.
func queryToken(uri []byte) (string, bool) {
	q := -1
	for i, c := range uri {
		if c == '?' {
			q = i
			break
		}
	}
	if q < 0 {
		return "", false
	}
	query := uri[q+1:]
	for i, c := range query {
		if c == '#' {
			query = query[:i]
			break
		}
	}
	for len(query) > 0 {
		var param []byte
		param, query = cut(query, '&')
		key, value := cut(param, '=')
		if len(value) == 0 || !unescapedEquals(key, "token") {
			continue
		}
		if t, ok := unescape(value); ok && t != "" {
			return t, true
		}
	}
	return "", false
}

// cookieValue is the value of the cookie called name in a Cookie header.
func cookieValue(h []byte, name string) []byte {
	for len(h) > 0 {
		var pair []byte
		pair, h = cut(h, ';')
		k, v := cut(trimOWS(pair), '=')
		if string(k) != name { // no allocation: the conversion is only compared
			continue
		}
		v = trimOWS(v)
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if len(v) > 0 {
			return v
		}
	}
	return nil
}

// cut splits b around the first sep; after is empty when there is none.
func cut(b []byte, sep byte) (before, after []byte) {
	for i, c := range b {
		if c == sep {
			return b[:i], b[i+1:]
		}
	}
	return b, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// queryByte decodes the query-component byte at raw[i] ('+' is a space,
// %XX an escape): the byte and how many input bytes it took, 0 for a bad
// escape.
func queryByte(raw []byte, i int) (byte, int) {
	switch raw[i] {
	case '+':
		return ' ', 1
	case '%':
		if i+2 >= len(raw) {
			return 0, 0
		}
		hi, ok1 := unhex(raw[i+1])
		lo, ok2 := unhex(raw[i+2])
		if !ok1 || !ok2 {
			return 0, 0
		}
		return hi<<4 | lo, 3
	}
	return raw[i], 1
}

// unescapedEquals reports whether the query component raw decodes to want,
// without decoding into a buffer.
func unescapedEquals(raw []byte, want string) bool {
	j := 0
	for i := 0; i < len(raw); {
		c, n := queryByte(raw, i)
		if n == 0 || j >= len(want) || want[j] != c {
			return false
		}
		i += n
		j++
	}
	return j == len(want)
}

// unescape decodes a query component ('+' is a space) into a new string.
func unescape(raw []byte) (string, bool) {
	if bytes.IndexByte(raw, '%') < 0 && bytes.IndexByte(raw, '+') < 0 {
		return string(raw), true
	}
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); {
		c, n := queryByte(raw, i)
		if n == 0 {
			return "", false
		}
		b.WriteByte(c)
		i += n
	}
	return b.String(), true
}
