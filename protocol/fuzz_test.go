package protocol

import (
	"encoding/json"
	"testing"
)

// FuzzInbound feeds arbitrary messages to the envelope decoder. Whatever it
// accepts carries a string type, and an id and data that are valid JSON:
// they are copied as they are into replies and broadcasts, so a client
// must never be able to pass malformed JSON on to others.
func FuzzInbound(f *testing.F) {
	for _, s := range []string{
		`{"type":"echo","id":1,"data":{"a":[1,2,{"b":null}]}}`,
		`{"type":"broadcast","data":"\u00e9"}`,
		`{"type":"echo","data":null}`,
		`{"type":7}`,
		`{"type":"echo","data":"` + "\x01" + `"}`,
		`{"type":"echo","data":[1,,2]}`,
		`{"type":"echo","x":{"y":[}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		var in Inbound
		if err := in.decode(msg); err != nil {
			return
		}
		if len(in.Data) > 0 && !json.Valid(in.Data) {
			t.Fatalf("accepted data %q", in.Data)
		}
		if len(in.ID) > 0 && !json.Valid(in.ID) {
			t.Fatalf("accepted id %q", in.ID)
		}
		var v map[string]json.RawMessage
		if json.Unmarshal(msg, &v) == nil {
			var typ string
			if json.Unmarshal(v["type"], &typ) != nil {
				t.Fatalf("accepted %q whose type is not a string", msg)
			}
		}
	})
}
