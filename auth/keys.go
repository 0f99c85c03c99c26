package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MinRSABits is the smallest RSA modulus NewVerifier accepts.
const MinRSABits = 2048

// loadKeyFile reads the public keys of every PEM block in path. Errors name
// the file, the block, and what is wrong with it.
func loadKeyFile(path string) ([]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// The *PathError already names the file.
		return nil, fmt.Errorf("auth: public key file: %w", err)
	}
	var keys []any
	rest := data
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		k, err := parseBlock(block)
		if err != nil {
			return nil, fmt.Errorf("auth: public key file %q: PEM block %d (%s): %w", path, n, block.Type, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("auth: public key file %q: no PEM block found (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", path)
	}
	return keys, nil
}

func parseBlock(b *pem.Block) (any, error) {
	var (
		k   any
		err error
	)
	switch {
	case b.Type == "PUBLIC KEY":
		k, err = x509.ParsePKIXPublicKey(b.Bytes)
	case b.Type == "RSA PUBLIC KEY":
		k, err = x509.ParsePKCS1PublicKey(b.Bytes)
	case b.Type == "CERTIFICATE":
		var cert *x509.Certificate
		cert, err = x509.ParseCertificate(b.Bytes)
		if err == nil {
			k = cert.PublicKey
		}
	case strings.Contains(b.Type, "PRIVATE KEY"):
		return nil, errors.New("is a private key: give the public key (or a certificate) only")
	default:
		return nil, errors.New("unsupported block type (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)")
	}
	if err != nil {
		return nil, fmt.Errorf("cannot parse: %w", err)
	}
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < MinRSABits {
			return nil, fmt.Errorf("RSA key of %d bits, want at least %d", k.N.BitLen(), MinRSABits)
		}
		return k, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return k, nil
		}
		return nil, fmt.Errorf("ECDSA key on curve %s, want P-256, P-384 or P-521", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("unsupported key type %T (want RSA, ECDSA or Ed25519)", k)
}
