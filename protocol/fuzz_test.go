package protocol

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
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
		`{"type":"subscribe","channel":"news","since":{"offset":3,"epoch":"abc"},"id":1}`,
		`{"type":"history","channel":"a:b","limit":10,"since":null}`,
		`{"type":"refresh","token":"x.y.z"}`,
		`{"type":"subscribe","channel":7,"since":{"offset":-1}}`,
		`{"type":"publish","channel":"c","data":{"a":1},"limit":1.5}`,
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
		if in.Limit < 0 {
			t.Fatalf("accepted a negative limit %d", in.Limit)
		}
		// What is accepted agrees with encoding/json's reading of the
		// fields it knows (exact key names; the last of duplicates wins).
		// (Text messages reach the decoder valid UTF-8: the engine checks.)
		var top map[string]json.RawMessage
		if !utf8.Valid(msg) || json.Unmarshal(msg, &top) != nil {
			return
		}
		if raw, ok := top["channel"]; ok {
			var ch string
			if json.Unmarshal(raw, &ch) != nil || ch != in.Channel {
				t.Fatalf("channel %q, encoding/json reads %s", in.Channel, raw)
			}
		}
		if raw, ok := top["since"]; ok && string(raw) != "null" {
			var since map[string]json.RawMessage
			if json.Unmarshal(raw, &since) != nil {
				t.Fatalf("accepted since %s", raw)
			}
			var off uint64
			var epoch string
			if r, ok := since["offset"]; ok && json.Unmarshal(r, &off) != nil {
				t.Fatalf("accepted since.offset %s", r)
			}
			if r, ok := since["epoch"]; ok && json.Unmarshal(r, &epoch) != nil {
				t.Fatalf("accepted since.epoch %s", r)
			}
			if off != in.Since.Offset || epoch != in.Since.Epoch {
				t.Fatalf("since %+v, encoding/json reads %s", in.Since, raw)
			}
		}
	})
}
