package frame

import (
	"encoding/binary"
	"strings"
	"testing"
	"unicode/utf8"
)

func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// RFC 6455 sections 5.5.1, 7.1.5 and 7.4.
type closeCase struct {
	name   string
	in     []byte
	code   CloseCode
	reason string
	err    *Error
}

func TestParseClose(t *testing.T) {
	cases := []closeCase{
		{name: "empty", in: nil, code: CloseNoStatus},
		{name: "one byte", in: []byte{0x03}, err: ErrCloseLength},
		{name: "normal", in: closePayload(1000, ""), code: 1000},
		{name: "with reason", in: closePayload(1001, "bye"), code: 1001, reason: "bye"},
		{name: "utf8 reason", in: closePayload(3000, "κόσμε"), code: 3000, reason: "κόσμε"},
		{name: "bad utf8 reason", in: closePayload(1000, "\xce\xba\xe1"), err: ErrInvalidCloseUTF8},
	}
	for _, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		cases = append(cases, closeCase{name: "valid code", in: closePayload(code, ""), code: CloseCode(code)})
	}
	// The codes Autobahn case 7.9.* sends, and the reserved ones around them.
	for _, code := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, closeCase{name: "invalid code", in: closePayload(code, ""), err: ErrCloseCode})
	}
	for _, tc := range cases {
		code, reason, err := ParseClose(tc.in)
		if tc.err != nil {
			if err != tc.err {
				t.Errorf("%s %x: err = %v, want %v", tc.name, tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || code != tc.code || string(reason) != tc.reason {
			t.Errorf("%s %x: got %d %q %v, want %d %q", tc.name, tc.in, code, reason, err, tc.code, tc.reason)
		}
	}
}

func TestAppendClose(t *testing.T) {
	b := AppendClose(nil, CloseGoingAway, "server shutting down")
	h, n, _ := ParseHeader(b)
	if h.OpCode != OpClose || !h.Fin || h.Masked {
		t.Fatalf("header %+v", h)
	}
	code, reason, err := ParseClose(b[n:])
	if err != nil || code != CloseGoingAway || string(reason) != "server shutting down" {
		t.Fatalf("got %d %q %v", code, reason, err)
	}

	if b := AppendClose(nil, CloseNoStatus, "ignored"); len(b) != 2 || b[1] != 0 {
		t.Fatalf("close without status: %x", b)
	}

	long := strings.Repeat("é", 100) // 200 bytes: must be cut on a code point boundary
	b = AppendClose(nil, CloseNormal, long)
	h, n, _ = ParseHeader(b)
	if h.Length > MaxControlPayload {
		t.Fatalf("close payload of %d bytes", h.Length)
	}
	if _, reason, err := ParseClose(b[n:]); err != nil || !utf8.Valid(reason) {
		t.Fatalf("cut reason %q: %v", reason, err)
	}
}
