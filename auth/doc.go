// Package auth authenticates WebSocket clients with JWTs during the HTTP
// upgrade and answers channel permission checks.
//
// Everything here runs on a gnet event loop, in the middle of a handshake, so
// nothing blocks (no I/O after NewVerifier, only short per-shard mutexes) and
// nothing logs. Errors returned by Verify are fixed values wrapping
// ErrNoToken, ErrInvalidToken or ErrExpired with a short reason; they never
// carry token bytes, claim values or header fields.
//
// # Tokens
//
// A token is a compact JWS signed with HS256/384/512 (when Config.HMACSecret is
// set), RS256/384/512 (RSA public keys), ES256/384/512 (ECDSA P-256/P-384/P-521
// public keys) or EdDSA (Ed25519 public keys). Only the algorithms that match a
// configured key are accepted, each with its own key type, so "none" and
// algorithm confusion (an HS256 token "signed" with an RSA public key used as
// an HMAC secret) are refused. The claims read are:
//
//	sub       required, non-empty: the user
//	exp       optional; enforced with Config.Leeway when present
//	nbf, iat  optional; a token not yet valid or issued in the future is refused
//	aud, iss  checked when Config.Audience / Config.Issuer are set
//	channels  []string, patterns the user may subscribe to
//	publish   []string, patterns the user may publish to
//	info      optional arbitrary JSON, at most MaxInfoSize bytes
//
// # The verified-token cache
//
// When a node restarts or a load balancer flaps, every client reconnects at
// once and presents the token it already had. An RS256 or ES256 signature check
// costs tens of microseconds; thousands of them back to back would stall the
// event loop that accepts the storm. Verify therefore remembers tokens it has
// verified, keyed by the SHA-256 of the token (collision-safe, and the token
// itself is not kept), and answers a repeat with the same *Claims without
// checking the signature again. An entry is good until the token's exp (plus
// leeway); a cached token past that returns ErrExpired, still without a
// signature check.
//
// The cache is bounded: at most Config.CacheSize entries (default 65536, a
// negative size turns it off), split over 16 shards, each with its own mutex.
// Tokens longer than MaxTokenSize are refused before parsing, so each entry's
// claims are bounded too, and so is the memory held. A full shard evicts the
// one of two randomly chosen entries that expires first (an expired one
// first). Only successful verifications are cached: a token that fails is not
// remembered, so an attacker sending random or forged tokens cannot put
// anything in the cache nor evict good entries; it can only make the server
// pay for one parse (and at most one signature check per configured key of the
// token's algorithm) per attempt, as it would without a cache.
package auth
