package frame

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// CloseCode is a close status code (RFC 6455 section 7.4).
type CloseCode = ws.StatusCode

// Close codes wsd sends or reports.
const (
	CloseNormal          CloseCode = 1000
	CloseGoingAway       CloseCode = 1001
	CloseProtocolError   CloseCode = 1002
	CloseUnsupportedData CloseCode = 1003
	CloseNoStatus        CloseCode = 1005 // never on the wire: the peer's close had no code
	CloseAbnormal        CloseCode = 1006 // never on the wire: closed without a close frame
	CloseInvalidPayload  CloseCode = 1007
	ClosePolicyViolation CloseCode = 1008
	CloseMessageTooBig   CloseCode = 1009
	CloseMandatoryExt    CloseCode = 1010
	CloseInternalError   CloseCode = 1011
	CloseTryAgainLater   CloseCode = 1013
)

// ValidCloseCode reports whether code may appear in a close frame on the
// wire: the codes RFC 6455 and its IANA registry define for use (1000-1003,
// 1007-1014) and the ranges for libraries and applications (3000-4999).
func ValidCloseCode(code CloseCode) bool {
	switch {
	case code >= 1000 && code <= 1003:
		return true
	case code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// Error is a failure that ends a connection with a close code.
type Error struct {
	Code   CloseCode
	Reason string
}

func (e *Error) Error() string {
	return "websocket: close " + strconv.Itoa(int(e.Code)) + ": " + e.Reason
}

// Failures the decoder reports. They are values so reporting one never
// allocates.
var (
	ErrUnmasked          = &Error{CloseProtocolError, "unmasked client frame"}
	ErrReservedBits      = &Error{CloseProtocolError, "reserved bits set"}
	ErrReservedOpcode    = &Error{CloseProtocolError, "reserved opcode"}
	ErrFragmentedControl = &Error{CloseProtocolError, "fragmented control frame"}
	ErrControlTooLong    = &Error{CloseProtocolError, "control frame payload over 125 bytes"}
	ErrUnexpectedCont    = &Error{CloseProtocolError, "continuation frame without a message in progress"}
	ErrExpectedCont      = &Error{CloseProtocolError, "new data frame inside a fragmented message"}
	ErrBadLength         = &Error{CloseProtocolError, "invalid payload length encoding"}
	ErrCloseLength       = &Error{CloseProtocolError, "close frame payload of 1 byte"}
	ErrCloseCode         = &Error{CloseProtocolError, "invalid close code"}
	ErrInvalidUTF8       = &Error{CloseInvalidPayload, "invalid UTF-8 in text message"}
	ErrInvalidCloseUTF8  = &Error{CloseInvalidPayload, "invalid UTF-8 in close reason"}
	ErrMessageTooBig     = &Error{CloseMessageTooBig, "message too big"}
	ErrBadCompression    = &Error{CloseInvalidPayload, "invalid compressed data"}
)

// ParseClose validates the payload of a close frame (already unmasked) and
// returns its code and reason. An empty payload yields CloseNoStatus.
func ParseClose(p []byte) (code CloseCode, reason []byte, err error) {
	switch {
	case len(p) == 0:
		return CloseNoStatus, nil, nil
	case len(p) == 1:
		return 0, nil, ErrCloseLength
	}
	code = CloseCode(binary.BigEndian.Uint16(p))
	if !ValidCloseCode(code) {
		return 0, nil, ErrCloseCode
	}
	reason = p[2:]
	if !ValidUTF8(reason) {
		return 0, nil, ErrInvalidCloseUTF8
	}
	return code, reason, nil
}

// AppendClose appends a close frame with code and reason to dst. Code
// CloseNoStatus sends a close frame without a payload. The reason is cut to
// fit the 125-byte control frame limit (on a UTF-8 boundary).
func AppendClose(dst []byte, code CloseCode, reason string) []byte {
	if code == CloseNoStatus || code == CloseAbnormal || code == 0 {
		return AppendHeader(dst, Header{Fin: true, OpCode: OpClose})
	}
	if len(reason) > MaxControlPayload-2 {
		reason = reason[:MaxControlPayload-2]
		for len(reason) > 0 && !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	dst = AppendHeader(dst, Header{Fin: true, OpCode: OpClose, Length: int64(2 + len(reason))})
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}
