package mpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tinylib/msgp/msgp"
)

// samples are JSON values and the JSON that a trip through MessagePack
// gives back (empty: the same bytes).
var samples = []struct{ in, back string }{
	{`null`, ``}, {`true`, ``}, {`false`, ``},
	{`0`, ``}, {`-0`, `0`}, {`-0.0`, ``}, {`-1`, ``}, // -0: an integer, and MessagePack's have no sign (JSON.stringify(-0) is "0" too) {`127`, ``}, {`128`, ``}, {`-33`, ``}, {`65536`, ``},
	{`18446744073709551615`, ``}, {`-9223372036854775808`, ``},
	{`18446744073709551616`, `1.8446744073709552e+19`}, // past uint64: a float
	{`1.5`, ``}, {`5.0`, ``}, {`-0.25`, ``}, {`1e21`, `1e+21`}, {`0.1`, ``}, {`1E2`, `100.0`},
	{`""`, ``}, {`"plain"`, ``}, {`"é ✓ 𝄞"`, ``},
	{`"q\"b\\s\/n\nt\tu\u0001"`, `"q\"b\\s/n\nt\tu\u0001"`},
	{`"\ud834\udd1e"`, `"𝄞"`}, {`"\ud834x"`, `"` + "\uFFFD" + `x"`},
	{`[]`, ``}, {`{}`, ``}, {`[1,[2,[3,[]]],{}]`, ``},
	{` { "a" : [ 1 , 2 ] , "b" : { "c" : null } } `, `{"a":[1,2],"b":{"c":null}}`},
	{`{"type":"message","channel":"news","offset":7,"epoch":"e1","data":{"k":[true,false,1.25,"s"]}}`, ``},
}

func TestRoundTrip(t *testing.T) {
	for _, s := range samples {
		mp, err := ToMsgpack(nil, []byte(s.in))
		if err != nil {
			t.Fatalf("%s → msgpack: %v", s.in, err)
		}
		// An independent reader (msgp's own) must read what was written as
		// the value encoding/json reads from the JSON.
		got, rest, err := msgp.ReadIntfBytes(mp)
		if err != nil || len(rest) != 0 {
			t.Fatalf("%s: msgp cannot read the output %x: %v (%d left)", s.in, mp, err, len(rest))
		}
		var want any
		if err := json.Unmarshal([]byte(s.in), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(want)) {
			t.Fatalf("%s: msgpack holds %#v, JSON %#v", s.in, got, want)
		}
		back, err := ToJSON(nil, mp, 1<<20)
		if err != nil {
			t.Fatalf("%s: back to JSON: %v", s.in, err)
		}
		wantBack := s.back
		if wantBack == "" {
			wantBack = s.in
		}
		if string(back) != wantBack {
			t.Fatalf("%s: back as %s, want %s", s.in, back, wantBack)
		}
		again, err := ToMsgpack(nil, back)
		if err != nil || !bytes.Equal(again, mp) {
			t.Fatalf("%s: second trip %x, first %x (%v)", s.in, again, mp, err)
		}
	}
}

// normalize turns numbers into float64 and msgp's map type into a plain
// one, so that values read by the two libraries compare.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	case float32:
		return float64(x)
	}
	return v
}

func TestIntegersAndFloatsKeepTheirKind(t *testing.T) {
	for in, want := range map[string]msgp.Type{`5`: msgp.IntType, `-5`: msgp.IntType, `300`: msgp.UintType,
		`5.0`: msgp.Float32Type, `0.1`: msgp.Float64Type, `1e400`: msgp.InvalidType} {
		mp, err := ToMsgpack(nil, []byte(in))
		if want == msgp.InvalidType {
			if !errors.Is(err, ErrRange) {
				t.Fatalf("%s: %v, want ErrRange", in, err)
			}
			continue
		}
		if err != nil || msgp.NextType(mp) != want {
			t.Fatalf("%s: %v %v, want %v", in, msgp.NextType(mp), err, want)
		}
	}
}

func TestToJSONRefuses(t *testing.T) {
	deep := bytes.Repeat([]byte{0x91}, MaxDepth+1) // arrays of one array…
	deep = append(deep, 0xc0)
	okDeep := append(bytes.Repeat([]byte{0x91}, MaxDepth), 0xc0)
	if _, err := ToJSON(nil, okDeep, 1<<20); err != nil {
		t.Fatalf("MaxDepth levels refused: %v", err)
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMsgpack},
		{"bin", msgp.AppendBytes(nil, []byte("x")), ErrType},
		{"ext", []byte{0xd4, 0x01, 0x00}, ErrType},
		{"timestamp", msgp.AppendTimeExt(nil, testTime), ErrType},
		{"int key", append(msgp.AppendMapHeader(nil, 1), 0x01, 0xc0), ErrKey},
		{"NaN", msgp.AppendFloat64(nil, math.NaN()), ErrFloat},
		{"Inf32", msgp.AppendFloat32(nil, float32(math.Inf(-1))), ErrFloat},
		{"bad UTF-8", msgp.AppendStringFromBytes(nil, []byte{0xff, 0xfe}), ErrUTF8},
		{"trailing", []byte{0xc0, 0xc0}, ErrTrailing},
		{"map claims 2^32-1 entries", []byte{0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'k', 0xc0}, ErrMsgpack},
		{"array claims 2^32-1", []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, ErrMsgpack},
		{"str claims 2^32-1 bytes", []byte{0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}, ErrMsgpack},
		{"truncated header", []byte{0xde, 0x00}, ErrMsgpack},
		{"truncated float", []byte{0xcb, 0, 0}, ErrMsgpack},
		{"never-used byte", []byte{0xc1}, ErrMsgpack},
		{"too deep", deep, ErrDepth},
	}
	for _, c := range cases {
		out, err := ToJSON(nil, c.in, 1<<20)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v (out %q), want %v", c.name, err, out, c.want)
		}
	}
}

// TestToJSONBounded: what MessagePack turns into as JSON never passes the
// limit, however small the MessagePack (control characters, nils).
func TestToJSONBounded(t *testing.T) {
	ctl := msgp.AppendStringFromBytes(nil, bytes.Repeat([]byte{1}, 1000)) // 1,003 bytes → 6,002 of JSON
	nils := msgp.AppendArrayHeader(nil, 1000)
	for range 1000 {
		nils = msgp.AppendNil(nils)
	}
	for name, in := range map[string][]byte{"control characters": ctl, "nils": nils} {
		out, err := ToJSON(make([]byte, 0, 8), in, 2000)
		if !errors.Is(err, ErrTooLarge) || len(out) > 2000+32 {
			t.Errorf("%s: %d bytes of JSON, %v; want ErrTooLarge within 2,000 (+32)", name, len(out), err)
		}
		full, err := ToJSON(nil, in, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if exact, err := ToJSON(nil, in, len(full)); err != nil || !bytes.Equal(exact, full) {
			t.Errorf("%s: refused at exactly its size (%d): %v", name, len(full), err)
		}
		if _, err := ToJSON(nil, in, len(full)-1); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: one byte over the limit passed: %v", name, err)
		}
	}
}

func TestToMsgpackRefusesInvalidJSON(t *testing.T) {
	for _, in := range []string{``, `[1 2]`, `{"a"}`, `1 2`, `"open`, `[`, `]`, `tru`, `{"a":1,}`, `"\x"`, "\"\x01\""} {
		if _, err := ToMsgpack(nil, []byte(in)); !errors.Is(err, ErrJSON) {
			t.Errorf("%q: %v, want ErrJSON", in, err)
		}
	}
	deep := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	if _, err := ToMsgpack(nil, []byte(deep)); err == nil {
		t.Error("JSON nested past MaxDepth converted")
	}
}

// TestCheck: Check refuses exactly the valid JSON that ToMsgpack refuses,
// with the same error: numbers past float64's range, wherever they are
// and however they are written.
func TestCheck(t *testing.T) {
	refused := []string{`1e400`, `-1e400`, `1E+309`, `[0,{"a":[1e400]}]`, `{"n":-2.5e999}`,
		strings.Repeat("9", 400), "-" + strings.Repeat("1", 310), "0." + strings.Repeat("0", 400) + "1e800"}
	carried := []string{`1e308`, `-1.7976931348623157e308`, `1e-400`, `"1e400"`, `{"1e400":"x"}`,
		`"\"1e400"`, strings.Repeat("9", 300) + ".5", strings.Repeat("9", 30), "0." + strings.Repeat("0", 400) + "1",
		`[true,false,null,-0,0.5E-3]`}
	for _, s := range samples {
		carried = append(carried, s.in)
	}
	for _, in := range refused {
		if _, err := ToMsgpack(nil, []byte(in)); !errors.Is(err, ErrRange) {
			t.Fatalf("ToMsgpack(%.40s): %v, the test expects ErrRange", in, err)
		}
		if err := Check([]byte(in)); !errors.Is(err, ErrRange) {
			t.Errorf("Check(%.40s): %v, want ErrRange", in, err)
		}
	}
	for _, in := range carried {
		if _, err := ToMsgpack(nil, []byte(in)); err != nil {
			t.Fatalf("ToMsgpack(%.40s): %v, the test expects it carried", in, err)
		}
		if err := Check([]byte(in)); err != nil {
			t.Errorf("Check(%.40s): %v, want nil", in, err)
		}
	}
}

// TestToMsgpackRefusesInvalidUTF8: json.Valid does not check UTF-8, and a
// str is UTF-8 by MessagePack's definition (ToJSON refuses one that is
// not): a JSON string that is not UTF-8, escaped or not, key or value, is
// refused, by Check too. (It went into str as it was.)
func TestToMsgpackRefusesInvalidUTF8(t *testing.T) {
	for _, in := range []string{"\"\xe9\"", "{\"a\":\"x\xe9y\"}", "{\"\xff\":1}", "[\"\\n\xc3\"]", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\""} {
		if !json.Valid([]byte(in)) {
			t.Fatalf("%q: not valid JSON to encoding/json; the test wants what it passes", in)
		}
		if out, err := ToMsgpack(nil, []byte(in)); !errors.Is(err, ErrUTF8) {
			t.Errorf("ToMsgpack(%q): %x, %v; want ErrUTF8", in, out, err)
		}
		if err := Check([]byte(in)); !errors.Is(err, ErrUTF8) {
			t.Errorf("Check(%q): %v; want ErrUTF8", in, err)
		}
	}
}

// FuzzToMsgpack: valid JSON is either refused by ToMsgpack, as Check
// says, or written as MessagePack that ToJSON reads back.
func FuzzToMsgpack(f *testing.F) {
	for _, s := range samples {
		f.Add([]byte(s.in))
	}
	f.Add([]byte("\"\xe9\""))
	f.Add([]byte(`[1e400]`))
	f.Fuzz(func(t *testing.T, in []byte) {
		if !json.Valid(in) {
			return
		}
		mp, err := ToMsgpack(nil, in)
		if cerr := Check(in); !errors.Is(cerr, err) && (err != nil || cerr != nil) {
			t.Fatalf("%q: ToMsgpack %v, Check %v", in, err, cerr)
		}
		if err != nil {
			return
		}
		if _, err := ToJSON(nil, mp, 1<<30); err != nil {
			t.Fatalf("%q → %x, which ToJSON refuses: %v", in, mp, err)
		}
	})
}

func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector; make test runs this without it")
	}
	js := []byte(`{"type":"message","channel":"news","offset":7,"epoch":"e1","data":{"k":[true,false,1.25,"s\n",-3,{"x":null}]}}`)
	mp, err := ToMsgpack(nil, js)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	if n := testing.AllocsPerRun(200, func() { out, _ = ToMsgpack(out[:0], js) }); n != 0 {
		t.Errorf("ToMsgpack: %v allocs", n)
	}
	if n := testing.AllocsPerRun(200, func() { out, _ = ToJSON(out[:0], mp, 1<<20) }); n != 0 {
		t.Errorf("ToJSON: %v allocs", n)
	}
	big := []byte(`[1.5e300,` + strings.Repeat("7", 40) + `]`) // both parsed
	if n := testing.AllocsPerRun(200, func() { _ = Check(js); _ = Check(big) }); n != 0 {
		t.Errorf("Check: %v allocs", n)
	}
}

// FuzzToJSON: whatever a peer sends, ToJSON either refuses it or writes
// valid JSON that goes back to MessagePack and to the same JSON again.
func FuzzToJSON(f *testing.F) {
	for _, s := range samples {
		mp, _ := ToMsgpack(nil, []byte(s.in))
		f.Add(mp)
	}
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		js, err := ToJSON(nil, in, 1<<20)
		if err != nil {
			return
		}
		if !json.Valid(js) {
			t.Fatalf("%x → invalid JSON %q", in, js)
		}
		mp, err := ToMsgpack(nil, js)
		if err != nil {
			t.Fatalf("%q (from %x) does not go back: %v", js, in, err)
		}
		js2, err := ToJSON(nil, mp, 1<<20)
		if err != nil || !bytes.Equal(js, js2) {
			t.Fatalf("%q → %x → %q (%v)", js, mp, js2, err)
		}
	})
}

var testTime = time.Unix(1700000000, 0)
