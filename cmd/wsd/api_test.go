package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/internal/wstest"
)

const testKey = "test-api-key"

// apiCall makes an API request and decodes the JSON answer.
func apiCall(t *testing.T, admin, method, path, key, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "apikey "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s %s: not JSON: %q", method, path, b)
	}
	return resp.StatusCode, v
}

func errCode(v map[string]any) string {
	e, _ := v["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func wsCall(t *testing.T, c *wstest.Client, msg string) map[string]any {
	t.Helper()
	if err := c.Send(frame.OpText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	return wsRead(t, c)
}

func wsRead(t *testing.T, c *wstest.Client) map[string]any {
	t.Helper()
	_, p, err := c.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(p, &v); err != nil {
		t.Fatalf("not JSON: %q", p)
	}
	return v
}

// TestAPI drives every API call against a running wsd, with real clients.
func TestAPI(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	secret := "a secret of at least thirty-two bytes, for tests"
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	ws, admin, _, _ := startRun(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--api-key", testKey,
		"--jwt-secret-file", secretFile, "--allow-anonymous", "--namespace", "room:presence,join_leave,history_size=3", "--node-id", "n1")
	tok := func(sub string) string {
		s, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub}).SignedString([]byte(secret))
		return s
	}
	alice := wstest.Dial(t, ws, "/ws", wstest.Options{Header: http.Header{"Authorization": {"Bearer " + tok("alice")}}})
	anon := wstest.Dial(t, ws, "/ws", wstest.Options{})
	for _, c := range []*wstest.Client{alice, anon} {
		if v := wsCall(t, c, `{"type":"subscribe","channel":"news"}`); v["type"] != "ack" {
			t.Fatalf("subscribe: %v", v)
		}
	}
	if v := wsCall(t, alice, `{"type":"subscribe","channel":"room:1"}`); v["type"] != "ack" {
		t.Fatalf("subscribe: %v", v)
	}
	wsRead(t, alice) // her own join

	// Authorization.
	if st, v := apiCall(t, admin, "POST", "/api/publish", "", `{"channel":"news","data":1}`); st != 401 || errCode(v) != "UNAUTHORIZED" {
		t.Fatalf("no key: %d %v", st, v)
	}
	if st, v := apiCall(t, admin, "POST", "/api/publish", "wrong", `{"channel":"news","data":1}`); st != 401 || errCode(v) != "UNAUTHORIZED" {
		t.Fatalf("wrong key: %d %v", st, v)
	}

	// Publish and broadcast reach the subscribers.
	st, v := apiCall(t, admin, "POST", "/api/publish", testKey, `{"channel":"news","data":{"headline":"hi"}}`)
	if st != 200 || v["offset"] != 1.0 || v["epoch"] == "" {
		t.Fatalf("publish: %d %v", st, v)
	}
	for _, c := range []*wstest.Client{alice, anon} {
		if m := wsRead(t, c); m["type"] != "message" || m["channel"] != "news" || m["offset"] != 1.0 {
			t.Fatalf("publication: %v", m)
		}
	}
	st, v = apiCall(t, admin, "POST", "/api/broadcast", testKey, `{"channels":["news","room:1","nobody"],"data":"both"}`)
	if st != 200 || len(v["results"].([]any)) != 3 {
		t.Fatalf("broadcast: %d %v", st, v)
	}
	got := map[string]bool{}
	for range 2 {
		m := wsRead(t, alice)
		got[m["channel"].(string)] = m["data"] == "both"
	}
	if !got["news"] || !got["room:1"] {
		t.Fatalf("alice got %v", got)
	}
	if m := wsRead(t, anon); m["channel"] != "news" {
		t.Fatalf("anon got %v", m)
	}

	// Reads.
	st, v = apiCall(t, admin, "GET", "/api/history?channel=news", testKey, "")
	if st != 200 || len(v["publications"].([]any)) != 2 || v["offset"] != 2.0 {
		t.Fatalf("history: %d %v", st, v)
	}
	epoch := v["epoch"].(string)
	st, v = apiCall(t, admin, "GET", "/api/history?channel=news&since_offset=1&since_epoch="+epoch, testKey, "")
	if st != 200 || v["recovered"] != true || len(v["publications"].([]any)) != 1 {
		t.Fatalf("history since: %d %v", st, v)
	}
	st, v = apiCall(t, admin, "GET", "/api/presence?channel=room:1", testKey, "")
	if p, _ := v["presence"].([]any); st != 200 || len(p) != 1 || p[0].(map[string]any)["user"] != "alice" {
		t.Fatalf("presence: %d %v", st, v)
	}
	st, v = apiCall(t, admin, "GET", "/api/channels", testKey, "")
	if st != 200 || fmt.Sprint(v["channels"]) != "[map[channel:news subscribers:2] map[channel:room:1 subscribers:1]]" {
		t.Fatalf("channels: %d %v", st, v)
	}
	st, v = apiCall(t, admin, "GET", "/api/info", testKey, "")
	if st != 200 || v["node"] != "n1" || v["connections"] != 2.0 || v["channels"] != 2.0 {
		t.Fatalf("info: %d %v", st, v)
	}

	// Server-side unsubscribe, then disconnect.
	st, v = apiCall(t, admin, "POST", "/api/unsubscribe", testKey, `{"user":"alice","channel":"news"}`)
	if st != 200 || v["unsubscribed"] != 1.0 {
		t.Fatalf("unsubscribe: %d %v", st, v)
	}
	if m := wsRead(t, alice); m["type"] != "unsubscribed" || m["channel"] != "news" {
		t.Fatalf("unsubscribed push: %v", m)
	}
	st, v = apiCall(t, admin, "POST", "/api/disconnect", testKey, `{"user":"alice","code":4005,"reason":"bye"}`)
	if st != 200 || v["disconnected"] != 1.0 {
		t.Fatalf("disconnect: %d %v", st, v)
	}
	alice.ExpectCloseReply(t, 4005)
	// Presence follows the disconnect.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, v = apiCall(t, admin, "GET", "/api/presence?channel=room:1", testKey, "")
		if p, _ := v["presence"].([]any); len(p) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence after disconnect: %v", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAPIBadInput: every malformed call gets a 4xx JSON error and changes
// nothing; the subscriber keeps getting the good publications.
func TestAPIBadInput(t *testing.T) {
	ws, admin, _, _ := startRun(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--api-key", testKey, "--max-message-bytes", "1024")
	c := wstest.Dial(t, ws, "/ws", wstest.Options{})
	if v := wsCall(t, c, `{"type":"subscribe","channel":"news"}`); v["type"] != "ack" {
		t.Fatal(v)
	}
	big := `"` + strings.Repeat("x", 2000) + `"`
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/api/publish", `not json`, 400, "INVALID_JSON"},
		{"POST", "/api/publish", `{"channel":"news","data":1,"extra":true}`, 400, "INVALID_JSON"},
		{"POST", "/api/publish", `{"channel":"news"}`, 400, "MISSING_DATA"},
		{"POST", "/api/publish", `{"data":1}`, 400, "INVALID_CHANNEL"},
		{"POST", "/api/publish", `{"channel":"bad name","data":1}`, 400, "INVALID_CHANNEL"},
		{"POST", "/api/publish", `{"channel":"news","data":` + big + `}`, 413, "TOO_LARGE"},
		{"POST", "/api/publish", `{"channel":"news","data":"` + strings.Repeat("y", 200<<10) + `"}`, 413, "TOO_LARGE"},
		{"POST", "/api/publish", `{"channel":"news","data":1}{"x":2}`, 400, "INVALID_JSON"},
		{"POST", "/api/broadcast", `{"channels":[],"data":1}`, 400, "INVALID_CHANNEL"},
		{"POST", "/api/broadcast", `{"channels":["ok","b a d"],"data":1}`, 400, "INVALID_CHANNEL"},
		{"POST", "/api/disconnect", `{"code":4000}`, 400, "MISSING_USER"},
		{"POST", "/api/disconnect", `{"user":"u","code":1000}`, 400, "INVALID_CODE"},
		{"POST", "/api/unsubscribe", `{"user":"u"}`, 400, "INVALID_CHANNEL"},
		{"GET", "/api/presence?channel=news", "", 409, "NOT_AVAILABLE"},
		{"GET", "/api/history?channel=news&limit=-1", "", 400, "INVALID_LIMIT"},
		{"GET", "/api/history?channel=news&since_offset=x", "", 400, "INVALID_SINCE"},
		{"GET", "/api/history", "", 400, "INVALID_CHANNEL"},
		{"GET", "/api/nothing", "", 404, "NOT_FOUND"},
	} {
		st, v := apiCall(t, admin, tc.method, tc.path, testKey, tc.body)
		if st != tc.status || errCode(v) != tc.code {
			t.Errorf("%s %s %.60q: %d %v, want %d %s", tc.method, tc.path, tc.body, st, v, tc.status, tc.code)
		}
	}
	if st, v := apiCall(t, admin, "POST", "/api/publish", testKey, `{"channel":"news","data":"fine"}`); st != 200 || v["offset"] != 1.0 {
		t.Fatalf("good publish after bad ones: %d %v", st, v)
	}
	if m := wsRead(t, c); m["data"] != "fine" || m["offset"] != 1.0 {
		t.Fatalf("subscriber got %v", m)
	}

	// Without --api-key there is no API.
	_, admin2, _, _ := startRun(t, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")
	if st, v := apiCall(t, admin2, "POST", "/api/publish", "anything", `{"channel":"news","data":1}`); st != 404 || errCode(v) != "API_DISABLED" {
		t.Fatalf("API without a key: %d %v", st, v)
	}
}
