package auth

import (
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// benchVerify verifies one token over and over, with the cache on or off.
// Uncached it is the cost of a full check (parse + signature + claims);
// cached, the cost of a reconnect presenting a token seen before.
func benchVerify(b *testing.B, alg string, cached bool) {
	testKeys(b)
	dir := b.TempDir()
	cfg := Config{Now: newClock(t0).now, CacheSize: -1}
	if cached {
		cfg.CacheSize = 0
	}
	var (
		method jwt.SigningMethod
		priv   any
	)
	switch alg {
	case "HS256":
		cfg.HMACSecret, method, priv = testSecret, jwt.SigningMethodHS256, testSecret
	case "RS256":
		cfg.PublicKeyFiles = []string{pkixPEM(b, dir, "k.pem", &rsaKey.PublicKey)}
		method, priv = jwt.SigningMethodRS256, rsaKey
	case "ES256":
		cfg.PublicKeyFiles = []string{pkixPEM(b, dir, "k.pem", &p256Key.PublicKey)}
		method, priv = jwt.SigningMethodES256, p256Key
	case "EdDSA":
		cfg.PublicKeyFiles = []string{pkixPEM(b, dir, "k.pem", edKey.Public())}
		method, priv = jwt.SigningMethodEdDSA, edKey
	}
	v := mustVerifier(b, cfg)
	tok := sign(b, method, priv, baseClaims())
	if _, err := v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyHS256(b *testing.B)       { benchVerify(b, "HS256", false) }
func BenchmarkVerifyHS256Cached(b *testing.B) { benchVerify(b, "HS256", true) }
func BenchmarkVerifyRS256(b *testing.B)       { benchVerify(b, "RS256", false) }
func BenchmarkVerifyRS256Cached(b *testing.B) { benchVerify(b, "RS256", true) }
func BenchmarkVerifyES256(b *testing.B)       { benchVerify(b, "ES256", false) }
func BenchmarkVerifyES256Cached(b *testing.B) { benchVerify(b, "ES256", true) }
func BenchmarkVerifyEdDSA(b *testing.B)       { benchVerify(b, "EdDSA", false) }
func BenchmarkVerifyEdDSACached(b *testing.B) { benchVerify(b, "EdDSA", true) }

func BenchmarkMatch(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Match("chat:*:msgs", "chat:room1:msgs")
	}
}

func BenchmarkTokenFromRequest(b *testing.B) {
	uri := []byte("/ws?room=1&token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl")
	b.ReportAllocs()
	for b.Loop() {
		TokenFromRequest(uri, nil, nil, "session")
	}
}
