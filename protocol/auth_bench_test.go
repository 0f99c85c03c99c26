package protocol_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/protocol"
)

// BenchmarkAuthenticateRS256 is the handshake's token check with RS256
// tokens: "storm" presents tokens seen before (a reconnect storm: the
// verified-token cache answers), "fresh" a new token every time (a
// signature check each). With BenchmarkHandshake (the upgrade itself)
// this gives the handshakes one event loop can take per second.
func BenchmarkAuthenticateRS256(b *testing.B) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	file := filepath.Join(b.TempDir(), "rsa.pem")
	os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	sign := func(i int) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
			"sub": fmt.Sprintf("user%d", i), "exp": time.Now().Add(time.Hour).Unix(), "channels": []string{"$ops:*"},
		}).SignedString(key)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	const n = 1000
	tokens := make([][]byte, n)
	for i := range tokens {
		tokens[i] = []byte("Bearer " + sign(i))
	}
	for _, tc := range []struct {
		name  string
		cache int
	}{{"storm", 0}, {"fresh", -1}} { // 0: the default cache (65,536 tokens)
		b.Run(tc.name, func(b *testing.B) {
			v, err := auth.NewVerifier(auth.Config{PublicKeyFiles: []string{file}, CacheSize: tc.cache})
			if err != nil {
				b.Fatal(err)
			}
			check := protocol.Authenticator(v, "", false)
			req := engine.Request{URI: []byte("/ws")}
			for _, t := range tokens { // the storm's tokens were seen before it
				req.Authorization = t
				check(&req)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				req.Authorization = tokens[i%n]
				if _, err := check(&req); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "checks/s")
		})
	}
}
