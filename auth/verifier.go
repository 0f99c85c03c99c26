package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// MaxTokenSize is the longest token Verify parses; a longer one is
	// refused as invalid before any decoding. It bounds the work an
	// unauthenticated client can cause and the size of each cache entry.
	MaxTokenSize = 4096

	// MaxInfoSize is the largest "info" claim (raw JSON bytes) a token may
	// carry; a larger one makes the token invalid.
	MaxInfoSize = 1024

	// DefaultCacheSize is the number of verified tokens cached when
	// Config.CacheSize is 0.
	DefaultCacheSize = 65536

	// MinHMACSecret is the shortest HMACSecret NewVerifier accepts (RFC 7518
	// §3.2: a key at least as long as the HS256 hash output).
	MinHMACSecret = 32
)

// Sentinel errors. Every error from Verify matches exactly one of them with
// errors.Is; its message adds a short fixed reason and never token contents.
var (
	ErrNoToken      = errors.New("auth: no token")
	ErrInvalidToken = errors.New("auth: invalid token")
	ErrExpired      = errors.New("auth: token expired")
)

// reasonError is a sentinel with a fixed reason. All values are built once
// below, so failing paths do not allocate an error and cannot leak input.
type reasonError struct {
	kind error
	msg  string
}

func (e *reasonError) Error() string { return e.msg }
func (e *reasonError) Unwrap() error { return e.kind }

func invalid(reason string) error {
	return &reasonError{kind: ErrInvalidToken, msg: ErrInvalidToken.Error() + ": " + reason}
}

var (
	errExpired       = &reasonError{kind: ErrExpired, msg: ErrExpired.Error() + ": exp has passed"}
	errTooLarge      = invalid(fmt.Sprintf("longer than %d bytes", MaxTokenSize))
	errMalformed     = invalid("malformed")
	errUnverifiable  = invalid("algorithm missing or unknown")
	errAlgorithm     = invalid("algorithm not accepted")
	errSignature     = invalid("signature does not verify")
	errNotYetValid   = invalid("not valid yet (nbf)")
	errIssuedFuture  = invalid("issued in the future (iat)")
	errAudience      = invalid("audience mismatch")
	errIssuer        = invalid("issuer mismatch")
	errClaimMissing  = invalid("required claim (aud or iss) missing")
	errClaims        = invalid("claims do not validate")
	errNoSubject     = invalid("no subject (sub)")
	errInfoTooLarge  = invalid(fmt.Sprintf("info claim larger than %d bytes", MaxInfoSize))
	errBadPattern    = invalid("channels or publish holds an invalid pattern")
	errBadClaimTypes = invalid("claims have the wrong types")
)

// Config configures a Verifier. At least one of HMACSecret and
// PublicKeyFiles must be given.
type Config struct {
	// HMACSecret enables HS256, HS384 and HS512; at least MinHMACSecret bytes.
	HMACSecret []byte
	// PublicKeyFiles are PEM files, each with one or more blocks of type
	// "PUBLIC KEY" (PKIX: RSA, ECDSA or Ed25519), "RSA PUBLIC KEY" (PKCS #1)
	// or "CERTIFICATE" (its public key is used; its dates and chain are not
	// checked). RSA keys (>= 2048 bits) enable RS256/384/512, ECDSA keys
	// enable ES256 (P-256), ES384 (P-384) or ES512 (P-521), Ed25519 keys
	// enable EdDSA. A token is checked against every key of its algorithm.
	PublicKeyFiles []string
	// Audience, when set, must be one of the token's aud values.
	Audience string
	// Issuer, when set, must equal the token's iss.
	Issuer string
	// Leeway is the clock skew allowed on exp, nbf and iat.
	Leeway time.Duration
	// CacheSize bounds the verified-token cache: 0 means DefaultCacheSize,
	// a negative value turns the cache off.
	CacheSize int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Claims is what a verified token grants. A *Claims returned by Verify may be
// shared with other callers through the cache: treat it as read-only.
type Claims struct {
	// Sub names the user; never empty.
	Sub string
	// Exp is when the token expires; zero when it has no exp.
	Exp time.Time
	// Channels are the patterns (see Match) the user may subscribe to.
	Channels []string
	// Publish are the patterns the user may publish to.
	Publish []string
	// Info is the optional "info" claim, raw JSON of at most MaxInfoSize
	// bytes; nil when absent or null.
	Info json.RawMessage
}

// tokenClaims is the JSON shape decoded by the jwt parser.
type tokenClaims struct {
	jwt.RegisteredClaims
	Channels []string        `json:"channels"`
	Publish  []string        `json:"publish"`
	Info     json.RawMessage `json:"info"`
}

// Verifier checks tokens. It is safe for concurrent use by several event
// loops.
type Verifier struct {
	parser  *jwt.Parser
	keyfunc jwt.Keyfunc
	keys    map[string]any // alg -> key, or jwt.VerificationKeySet for several
	methods []string       // the algorithms accepted, sorted
	now     func() time.Time
	leeway  time.Duration
	cache   *cache // nil when off

	// verifications counts calls that reached the parser (cache misses).
	verifications atomic.Uint64
}

// NewVerifier loads the keys of cfg and returns a Verifier for them. It
// reads files and so must not be called on an event loop.
func NewVerifier(cfg Config) (*Verifier, error) {
	if len(cfg.HMACSecret) == 0 && len(cfg.PublicKeyFiles) == 0 {
		return nil, errors.New("auth: no key configured: set an HMAC secret or at least one public key file")
	}
	if len(cfg.HMACSecret) > 0 && len(cfg.HMACSecret) < MinHMACSecret {
		return nil, fmt.Errorf("auth: HMAC secret is %d bytes, want at least %d", len(cfg.HMACSecret), MinHMACSecret)
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("auth: negative leeway %v", cfg.Leeway)
	}

	byAlg := map[string][]any{}
	if len(cfg.HMACSecret) > 0 {
		secret := append([]byte(nil), cfg.HMACSecret...)
		for _, alg := range []string{"HS256", "HS384", "HS512"} {
			byAlg[alg] = append(byAlg[alg], secret)
		}
	}
	for _, path := range cfg.PublicKeyFiles {
		keys, err := loadKeyFile(path)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			for _, alg := range algsFor(k) {
				byAlg[alg] = append(byAlg[alg], k)
			}
		}
	}

	v := &Verifier{
		keys:   make(map[string]any, len(byAlg)),
		now:    cfg.Now,
		leeway: cfg.Leeway,
	}
	if v.now == nil {
		v.now = time.Now
	}
	for _, alg := range allAlgs {
		ks := byAlg[alg]
		switch len(ks) {
		case 0:
			continue
		case 1:
			v.keys[alg] = ks[0]
		default:
			set := jwt.VerificationKeySet{Keys: make([]jwt.VerificationKey, len(ks))}
			for i, k := range ks {
				set.Keys[i] = k
			}
			v.keys[alg] = set
		}
		v.methods = append(v.methods, alg)
	}

	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(v.now),
		jwt.WithIssuedAt(),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	v.keyfunc = v.keyFor

	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	if size > 0 {
		v.cache = newCache(size)
	}
	return v, nil
}

// allAlgs fixes the order of Verifier.methods.
var allAlgs = []string{"EdDSA", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512"}

// algsFor is the algorithms a loaded public key verifies.
func algsFor(k any) []string {
	switch k := k.(type) {
	case *rsa.PublicKey:
		return []string{"RS256", "RS384", "RS512"}
	case *ecdsa.PublicKey:
		switch k.Curve.Params().BitSize {
		case 256:
			return []string{"ES256"}
		case 384:
			return []string{"ES384"}
		case 521:
			return []string{"ES512"}
		}
	case ed25519.PublicKey:
		return []string{"EdDSA"}
	}
	return nil
}

// Algorithms returns the algorithms v accepts, sorted.
func (v *Verifier) Algorithms() []string { return append([]string(nil), v.methods...) }

// keyFor is the jwt.Keyfunc. The parser has already refused any algorithm
// not in v.methods, and each algorithm maps only to keys of its own type, so
// an HMAC secret is never offered to an RSA/ECDSA/EdDSA method nor a public
// key to HMAC.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	if k, ok := v.keys[t.Method.Alg()]; ok {
		return k, nil
	}
	return nil, errAlgorithm
}

func (v *Verifier) accepts(alg string) bool {
	_, ok := v.keys[alg]
	return ok
}

// Verify checks token and returns its claims. A token verified before and
// still in the cache is answered without a signature check. The error, if
// any, matches ErrNoToken, ErrInvalidToken or ErrExpired.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	if len(token) > MaxTokenSize {
		return nil, errTooLarge
	}
	if v.cache == nil {
		return v.verify(token)
	}
	// A read-only view: []byte(token) would copy tokens over 32 bytes to
	// the heap, and the cached path is meant not to allocate.
	key := sha256.Sum256(unsafe.Slice(unsafe.StringData(token), len(token)))
	if c, until, ok := v.cache.get(&key); ok {
		if !until.IsZero() && !v.now().Before(until) {
			return nil, errExpired
		}
		return c, nil
	}
	c, err := v.verify(token)
	if err != nil {
		return nil, err
	}
	var until time.Time
	if !c.Exp.IsZero() {
		until = c.Exp.Add(v.leeway)
	}
	v.cache.put(&key, c, until)
	return c, nil
}

// verify is the full check: parse, signature, registered claims, then ours.
func (v *Verifier) verify(token string) (*Claims, error) {
	v.verifications.Add(1)
	var tc tokenClaims
	t, err := v.parser.ParseWithClaims(token, &tc, v.keyfunc)
	if err != nil {
		return nil, v.classify(t, err)
	}
	if tc.Subject == "" {
		return nil, errNoSubject
	}
	if len(tc.Info) > MaxInfoSize {
		return nil, errInfoTooLarge
	}
	for _, list := range [2][]string{tc.Channels, tc.Publish} {
		for _, p := range list {
			if ValidChannel(p) != nil {
				return nil, errBadPattern
			}
		}
	}
	c := &Claims{
		Sub:      tc.Subject,
		Channels: tc.Channels,
		Publish:  tc.Publish,
	}
	if tc.ExpiresAt != nil {
		c.Exp = tc.ExpiresAt.Time
	}
	if len(tc.Info) > 0 && string(tc.Info) != "null" {
		c.Info = tc.Info
	}
	return c, nil
}

// classify maps an error of the jwt library to one of ours. The library's
// messages are dropped: some quote header fields (the alg) or JSON input.
func (v *Verifier) classify(t *jwt.Token, err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return errBadClaimTypes
		}
		return errMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return errUnverifiable
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		if t == nil || t.Method == nil || !v.accepts(t.Method.Alg()) {
			return errAlgorithm
		}
		return errSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return errExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return errNotYetValid
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return errIssuedFuture
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return errAudience
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return errIssuer
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return errClaimMissing
	}
	return errClaims
}
