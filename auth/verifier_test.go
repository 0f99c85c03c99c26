package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func hsVerifier(t *testing.T, mod func(*Config)) (*Verifier, *clock) {
	t.Helper()
	clk := newClock(t0)
	cfg := Config{HMACSecret: testSecret, Now: clk.now}
	if mod != nil {
		mod(&cfg)
	}
	return mustVerifier(t, cfg), clk
}

// wantErr checks err matches sentinel and leaks none of token's segments.
func wantErr(t *testing.T, err, sentinel error, token string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("err = %v, want %v", err, sentinel)
	}
	for _, s := range []error{ErrNoToken, ErrInvalidToken, ErrExpired} {
		if s != sentinel && errors.Is(err, s) {
			t.Fatalf("err = %v also matches %v", err, s)
		}
	}
	msg := err.Error()
	for _, part := range strings.Split(token, ".") {
		if len(part) >= 4 && strings.Contains(msg, part) {
			t.Fatalf("error %q contains token segment %q", msg, part)
		}
	}
}

func TestHS256Valid(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	c := baseClaims()
	c["info"] = map[string]any{"name": "Alice", "plan": 3}
	tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
	got, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got.Sub != "alice" {
		t.Errorf("Sub = %q", got.Sub)
	}
	if !got.Exp.Equal(t0.Add(time.Hour)) {
		t.Errorf("Exp = %v, want %v", got.Exp, t0.Add(time.Hour))
	}
	if !reflect.DeepEqual(got.Channels, []string{"chat:*", "news"}) || !reflect.DeepEqual(got.Publish, []string{"chat:lobby"}) {
		t.Errorf("Channels = %q, Publish = %q", got.Channels, got.Publish)
	}
	if string(got.Info) != `{"name":"Alice","plan":3}` {
		t.Errorf("Info = %s", got.Info)
	}
	if !got.CanSubscribe("chat:room1") || got.CanSubscribe("chat:room1.x") || !got.CanPublish("chat:lobby") || got.CanPublish("chat:room1") {
		t.Error("permissions do not follow the claims")
	}
}

func TestHS384AndHS512(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		if _, err := v.Verify(sign(t, m, testSecret, baseClaims())); err != nil {
			t.Errorf("%s: %v", m.Alg(), err)
		}
	}
}

func TestHS256InvalidSignature(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	other := sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-another"), baseClaims())
	_, err := v.Verify(other)
	wantErr(t, err, ErrInvalidToken, other)

	// A valid token whose payload is swapped for another user's.
	good := sign(t, jwt.SigningMethodHS256, testSecret, baseClaims())
	evil := baseClaims()
	evil["sub"] = "mallory"
	evilTok := sign(t, jwt.SigningMethodHS256, testSecret, evil)
	gp, ep := strings.Split(good, "."), strings.Split(evilTok, ".")
	forged := gp[0] + "." + ep[1] + "." + gp[2]
	_, err = v.Verify(forged)
	wantErr(t, err, ErrInvalidToken, forged)
	if !strings.Contains(err.Error(), "signature") {
		t.Errorf("reason %q does not mention the signature", err)
	}
}

func TestExpired(t *testing.T) {
	v, clk := hsVerifier(t, func(c *Config) { c.CacheSize = -1 })
	tok := sign(t, jwt.SigningMethodHS256, testSecret, baseClaims())
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("before exp: %v", err)
	}
	clk.advance(time.Hour)
	_, err := v.Verify(tok)
	wantErr(t, err, ErrExpired, tok)

	// With leeway, a token just past exp is still good.
	vl, clk2 := hsVerifier(t, func(c *Config) { c.Leeway = 30 * time.Second; c.CacheSize = -1 })
	clk2.advance(time.Hour + 20*time.Second)
	if _, err := vl.Verify(tok); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
	clk2.advance(20 * time.Second)
	_, err = vl.Verify(tok)
	wantErr(t, err, ErrExpired, tok)
}

func TestMissingSub(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	for _, sub := range []any{nil, ""} {
		c := baseClaims()
		if sub == nil {
			delete(c, "sub")
		} else {
			c["sub"] = sub
		}
		tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
		_, err := v.Verify(tok)
		wantErr(t, err, ErrInvalidToken, tok)
	}
	c := baseClaims()
	c["sub"] = 42
	tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
	_, err := v.Verify(tok)
	wantErr(t, err, ErrInvalidToken, tok)
}

func TestNoExp(t *testing.T) {
	v, clk := hsVerifier(t, nil)
	c := baseClaims()
	delete(c, "exp")
	tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
	got, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if !got.Exp.IsZero() {
		t.Errorf("Exp = %v, want zero", got.Exp)
	}
	clk.advance(100 * 365 * 24 * time.Hour)
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("a century later: %v", err)
	}
}

func TestNbfAndIat(t *testing.T) {
	v, clk := hsVerifier(t, func(c *Config) { c.CacheSize = -1 })
	c := baseClaims()
	c["nbf"] = t0.Add(time.Minute).Unix()
	tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
	_, err := v.Verify(tok)
	wantErr(t, err, ErrInvalidToken, tok)
	clk.advance(time.Minute)
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("at nbf: %v", err)
	}

	c = baseClaims()
	c["iat"] = clk.now().Add(time.Hour).Unix()
	tok = sign(t, jwt.SigningMethodHS256, testSecret, c)
	_, err = v.Verify(tok)
	wantErr(t, err, ErrInvalidToken, tok)
}

func TestNoTokenAndTooLarge(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	if _, err := v.Verify(""); !errors.Is(err, ErrNoToken) {
		t.Fatalf("empty: err = %v", err)
	}
	c := baseClaims()
	c["pad"] = strings.Repeat("x", MaxTokenSize)
	tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
	_, err := v.Verify(tok)
	wantErr(t, err, ErrInvalidToken, tok)
	if v.verifications.Load() != 0 {
		t.Errorf("an oversized token reached the parser")
	}
	for _, junk := range []string{"abc", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.!!!.sig"} {
		_, err := v.Verify(junk)
		wantErr(t, err, ErrInvalidToken, junk)
	}
}

func TestInfoLimit(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	// `"` + payload + `"` is the raw JSON of a string.
	for _, tc := range []struct {
		size int
		ok   bool
	}{{MaxInfoSize, true}, {MaxInfoSize + 1, false}} {
		c := baseClaims()
		c["info"] = strings.Repeat("i", tc.size-2)
		tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
		got, err := v.Verify(tok)
		if tc.ok {
			if err != nil || len(got.Info) != tc.size {
				t.Errorf("info of %d bytes: err = %v", tc.size, err)
			}
		} else {
			wantErr(t, err, ErrInvalidToken, tok)
		}
	}
	c := baseClaims()
	c["info"] = nil
	got, err := v.Verify(sign(t, jwt.SigningMethodHS256, testSecret, c))
	if err != nil || got.Info != nil {
		t.Errorf("null info: %v, %q", err, got.Info)
	}
}

func TestBadPatternsAndTypes(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	for _, mod := range []func(jwt.MapClaims){
		func(c jwt.MapClaims) { c["channels"] = []string{"ok", "bad name"} },
		func(c jwt.MapClaims) { c["publish"] = []string{""} },
		func(c jwt.MapClaims) { c["channels"] = "chat:*" },
		func(c jwt.MapClaims) { c["exp"] = "tomorrow" },
	} {
		c := baseClaims()
		mod(c)
		tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
		_, err := v.Verify(tok)
		wantErr(t, err, ErrInvalidToken, tok)
	}
}

func TestAudienceIssuer(t *testing.T) {
	v, _ := hsVerifier(t, func(c *Config) { c.Audience = "wsd"; c.Issuer = "https://id.example" })
	for _, tc := range []struct {
		name string
		aud  any
		iss  any
		ok   bool
	}{
		{"both match", "wsd", "https://id.example", true},
		{"aud in list", []string{"api", "wsd"}, "https://id.example", true},
		{"aud mismatch", "api", "https://id.example", false},
		{"aud missing", nil, "https://id.example", false},
		{"iss mismatch", "wsd", "https://evil.example", false},
		{"iss missing", "wsd", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseClaims()
			if tc.aud != nil {
				c["aud"] = tc.aud
			}
			if tc.iss != nil {
				c["iss"] = tc.iss
			}
			tok := sign(t, jwt.SigningMethodHS256, testSecret, c)
			_, err := v.Verify(tok)
			if tc.ok {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			wantErr(t, err, ErrInvalidToken, tok)
		})
	}
	// Without configured audience/issuer, any aud/iss is accepted.
	plain, _ := hsVerifier(t, nil)
	c := baseClaims()
	c["aud"], c["iss"] = "other", "someone"
	if _, err := plain.Verify(sign(t, jwt.SigningMethodHS256, testSecret, c)); err != nil {
		t.Fatalf("unconfigured aud/iss: %v", err)
	}
}

// TestPublicKeyAlgorithms verifies tokens of each asymmetric algorithm with
// keys written as PEM files, and refuses those signed by another key.
func TestPublicKeyAlgorithms(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		name   string
		file   func() string
		method jwt.SigningMethod
		priv   any
	}{
		{"RS256", func() string { return pkixPEM(t, dir, "rsa.pem", &rsaKey.PublicKey) }, jwt.SigningMethodRS256, rsaKey},
		{"RS384", func() string { return pkixPEM(t, dir, "rsa.pem", &rsaKey.PublicKey) }, jwt.SigningMethodRS384, rsaKey},
		{"RS512 PKCS1", func() string {
			return writePEM(t, dir, "rsa1.pem", "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey))
		}, jwt.SigningMethodRS512, rsaKey},
		{"RS256 certificate", func() string { return certPEM(t, dir, "rsa.crt", rsaKey) }, jwt.SigningMethodRS256, rsaKey},
		{"ES256", func() string { return pkixPEM(t, dir, "p256.pem", &p256Key.PublicKey) }, jwt.SigningMethodES256, p256Key},
		{"ES384", func() string { return pkixPEM(t, dir, "p384.pem", &p384Key.PublicKey) }, jwt.SigningMethodES384, p384Key},
		{"ES512", func() string { return pkixPEM(t, dir, "p521.pem", &p521Key.PublicKey) }, jwt.SigningMethodES512, p521Key},
		{"ES256 certificate", func() string { return certPEM(t, dir, "p256.crt", p256Key) }, jwt.SigningMethodES256, p256Key},
		{"EdDSA", func() string { return pkixPEM(t, dir, "ed.pem", edKey.Public()) }, jwt.SigningMethodEdDSA, edKey},
		{"EdDSA certificate", func() string { return certPEM(t, dir, "ed.crt", edKey) }, jwt.SigningMethodEdDSA, edKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := mustVerifier(t, Config{PublicKeyFiles: []string{tc.file()}, Now: newClock(t0).now})
			tok := sign(t, tc.method, tc.priv, baseClaims())
			got, err := v.Verify(tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got.Sub != "alice" {
				t.Fatalf("Sub = %q", got.Sub)
			}
			// HS256 is not enabled without a secret.
			hs := sign(t, jwt.SigningMethodHS256, testSecret, baseClaims())
			_, err = v.Verify(hs)
			wantErr(t, err, ErrInvalidToken, hs)
		})
	}

	// Several key files: each token verifies with its own key; a token from
	// an unknown key of a configured type does not.
	v := mustVerifier(t, Config{
		PublicKeyFiles: []string{
			pkixPEM(t, dir, "a.pem", &p256Key.PublicKey),
			pkixPEM(t, dir, "b.pem", &rsaKey.PublicKey),
			pkixPEM(t, dir, "c.pem", edKey.Public()),
		},
		Now: newClock(t0).now,
	})
	if got, want := v.Algorithms(), []string{"EdDSA", "ES256", "RS256", "RS384", "RS512"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Algorithms() = %q, want %q", got, want)
	}
	for _, tok := range []string{
		sign(t, jwt.SigningMethodES256, p256Key, baseClaims()),
		sign(t, jwt.SigningMethodRS256, rsaKey, baseClaims()),
		sign(t, jwt.SigningMethodEdDSA, edKey, baseClaims()),
	} {
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("multi-key: %v", err)
		}
	}
	stranger := sign(t, jwt.SigningMethodES256, other, baseClaims())
	_, err := v.Verify(stranger)
	wantErr(t, err, ErrInvalidToken, stranger)
	// ES384 is not enabled by a P-256 key.
	es384 := sign(t, jwt.SigningMethodES384, p384Key, baseClaims())
	_, err = v.Verify(es384)
	wantErr(t, err, ErrInvalidToken, es384)

	// Two keys of one type (key rotation): both verify.
	rot := mustVerifier(t, Config{
		PublicKeyFiles: []string{pkixPEM(t, dir, "old.pem", &other.PublicKey), pkixPEM(t, dir, "new.pem", &p256Key.PublicKey)},
		Now:            newClock(t0).now,
	})
	for _, tok := range []string{stranger, sign(t, jwt.SigningMethodES256, p256Key, baseClaims())} {
		if _, err := rot.Verify(tok); err != nil {
			t.Errorf("rotation: %v", err)
		}
	}
}

// TestAlgConfusion: an HS256 token "signed" with the RSA public key's PEM
// bytes as the HMAC secret must not verify against that RSA key.
func TestAlgConfusion(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	path := pkixPEM(t, dir, "rsa.pem", &rsaKey.PublicKey)
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	for _, cfg := range []Config{
		{PublicKeyFiles: []string{path}},
		{PublicKeyFiles: []string{path}, HMACSecret: testSecret},
	} {
		cfg.Now = newClock(t0).now
		v := mustVerifier(t, cfg)
		for _, secret := range [][]byte{pemBytes, der} {
			for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS256, jwt.SigningMethodHS512} {
				tok := sign(t, m, secret, baseClaims())
				_, err := v.Verify(tok)
				wantErr(t, err, ErrInvalidToken, tok)
			}
		}
	}
}

func TestNoneRefused(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	tok := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, baseClaims())
	_, err := v.Verify(tok)
	wantErr(t, err, ErrInvalidToken, tok)
	if !strings.Contains(err.Error(), "algorithm") {
		t.Errorf("reason %q does not mention the algorithm", err)
	}
	// Same payload with alg "none" in several spellings and a copied
	// HS256 signature.
	good := strings.Split(sign(t, jwt.SigningMethodHS256, testSecret, baseClaims()), ".")
	for _, alg := range []string{"none", "None", "NONE", "", "HS256 "} {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"` + alg + `","typ":"JWT"}`))
		for _, sig := range []string{"", good[2]} {
			forged := h + "." + good[1] + "." + sig
			_, err := v.Verify(forged)
			wantErr(t, err, ErrInvalidToken, forged)
		}
	}
}

// TestErrorsCarryNoTokenContent: reasons are fixed strings, even when the
// library's own message would quote the header.
func TestErrorsCarryNoTokenContent(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	body := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"SECRET-SUBJECT"}`))
	for _, header := range []string{
		`{"alg":"SECRET-ALG"}`,
		`{"alg":"RS256"}`,
		`{"alg":"HS256","kid":"SECRET-KID"}`,
		`{"alg":"HS256"`,
	} {
		tok := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + body + ".SECRETSIG"
		_, err := v.Verify(tok)
		wantErr(t, err, ErrInvalidToken, tok)
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error %q quotes the token", err)
		}
	}
	tok := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"sub":SECRET}`)) + ".sig"
	_, err := v.Verify(tok)
	wantErr(t, err, ErrInvalidToken, tok)
	if strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error %q quotes the token", err)
	}
}

func TestNewVerifierErrors(t *testing.T) {
	testKeys(t)
	dir := t.TempDir()
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	privDER, _ := x509.MarshalPKCS8PrivateKey(p256Key)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a pem file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := pkixPEM(t, dir, "good.pem", &p256Key.PublicKey)
	for _, tc := range []struct {
		name string
		cfg  Config
		want []string // substrings of the error
	}{
		{"no key", Config{}, []string{"no key"}},
		{"short secret", Config{HMACSecret: []byte("short")}, []string{"at least 32"}},
		{"negative leeway", Config{HMACSecret: testSecret, Leeway: -time.Second}, []string{"leeway"}},
		{"missing file", Config{PublicKeyFiles: []string{filepath.Join(dir, "nope.pem")}}, []string{"nope.pem", "no such file"}},
		{"not PEM", Config{PublicKeyFiles: []string{garbage}}, []string{"garbage.pem", "no PEM block"}},
		{"private key", Config{PublicKeyFiles: []string{writePEM(t, dir, "priv.pem", "PRIVATE KEY", privDER)}}, []string{"priv.pem", "private key"}},
		{"bad DER", Config{PublicKeyFiles: []string{writePEM(t, dir, "bad.pem", "PUBLIC KEY", []byte{1, 2, 3})}}, []string{"bad.pem", "cannot parse"}},
		{"unknown block", Config{PublicKeyFiles: []string{writePEM(t, dir, "csr.pem", "CERTIFICATE REQUEST", []byte{1})}}, []string{"csr.pem", "unsupported block type"}},
		{"small RSA", Config{PublicKeyFiles: []string{pkixPEM(t, dir, "small.pem", &small.PublicKey)}}, []string{"small.pem", "1024 bits"}},
		{"P-224", Config{PublicKeyFiles: []string{pkixPEM(t, dir, "p224.pem", &p224.PublicKey)}}, []string{"p224.pem", "P-224"}},
		{"one bad among good", Config{PublicKeyFiles: []string{good, garbage}}, []string{"garbage.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(tc.cfg)
			if err == nil {
				t.Fatalf("NewVerifier succeeded: %+v", v)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
