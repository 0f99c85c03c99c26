package auth

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestCacheHit(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	tok := sign(t, jwt.SigningMethodHS256, testSecret, baseClaims())
	first, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		again, err := v.Verify(tok)
		if err != nil {
			t.Fatal(err)
		}
		if again != first {
			t.Fatalf("cache hit returned other claims")
		}
	}
	if n := v.verifications.Load(); n != 1 {
		t.Fatalf("verifications = %d, want 1", n)
	}
	// A different token is verified on its own.
	c := baseClaims()
	c["sub"] = "bob"
	if got, err := v.Verify(sign(t, jwt.SigningMethodHS256, testSecret, c)); err != nil || got.Sub != "bob" {
		t.Fatalf("second token: %v %v", got, err)
	}
	if n := v.verifications.Load(); n != 2 {
		t.Fatalf("verifications = %d, want 2", n)
	}
}

func TestCacheOff(t *testing.T) {
	v, _ := hsVerifier(t, func(c *Config) { c.CacheSize = -1 })
	tok := sign(t, jwt.SigningMethodHS256, testSecret, baseClaims())
	for range 3 {
		if _, err := v.Verify(tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.verifications.Load(); n != 3 {
		t.Fatalf("verifications = %d, want 3", n)
	}
	if v.cache != nil {
		t.Fatal("cache present with CacheSize < 0")
	}
}

func TestCacheRespectsExp(t *testing.T) {
	v, clk := hsVerifier(t, func(c *Config) { c.Leeway = 10 * time.Second })
	tok := sign(t, jwt.SigningMethodHS256, testSecret, baseClaims())
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	clk.advance(time.Hour + 5*time.Second) // past exp, within leeway
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
	clk.advance(5 * time.Second) // exp + leeway
	for range 2 {
		_, err := v.Verify(tok)
		wantErr(t, err, ErrExpired, tok)
	}
	if n := v.verifications.Load(); n != 1 {
		t.Fatalf("verifications = %d, want 1 (expiry answered from the cache)", n)
	}
}

func TestCacheDoesNotKeepFailures(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	bad := sign(t, jwt.SigningMethodHS256, []byte("wrong-secret-wrong-secret-wrong-secret"), baseClaims())
	for range 3 {
		if _, err := v.Verify(bad); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("err = %v", err)
		}
	}
	if n := v.verifications.Load(); n != 3 {
		t.Fatalf("verifications = %d, want 3", n)
	}
	if n := v.cache.len(); n != 0 {
		t.Fatalf("cache holds %d entries after failures", n)
	}
}

func TestCacheBounded(t *testing.T) {
	for _, size := range []int{1, 7, 100} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			v, _ := hsVerifier(t, func(c *Config) { c.CacheSize = size })
			var last string
			for i := range 10 * size {
				c := baseClaims()
				c["sub"] = fmt.Sprintf("user%d", i)
				last = sign(t, jwt.SigningMethodHS256, testSecret, c)
				if _, err := v.Verify(last); err != nil {
					t.Fatal(err)
				}
				if n := v.cache.len(); n > size {
					t.Fatalf("after %d tokens the cache holds %d > %d", i+1, n, size)
				}
			}
			if n := v.cache.len(); n == 0 {
				t.Fatal("cache empty")
			}
			// The token just inserted is there.
			before := v.verifications.Load()
			if _, err := v.Verify(last); err != nil || v.verifications.Load() != before {
				t.Fatalf("last token not cached: %v", err)
			}
		})
	}
}

func TestCacheDefaultSize(t *testing.T) {
	v, _ := hsVerifier(t, nil)
	total := 0
	for i := range v.cache.shards {
		total += v.cache.shards[i].limit
	}
	if total != DefaultCacheSize || len(v.cache.shards) != cacheShards {
		t.Fatalf("default cache: %d entries in %d shards", total, len(v.cache.shards))
	}
}

// TestCacheEvictsExpiredFirst: a full shard evicts, of two random picks,
// the entry expiring first. With one entry without exp and one expired, the
// expired one goes unless both picks fall on the other: 3 times in 4, where
// a single random pick would give 1 in 2.
func TestCacheEvictsExpiredFirst(t *testing.T) {
	var k1, k2, k3 [32]byte
	k1[1], k2[1], k3[1] = 1, 2, 3
	const trials = 400
	kept := 0
	for range trials {
		c := newCache(2)
		c.put(&k1, &Claims{Sub: "no exp"}, time.Time{})
		c.put(&k2, &Claims{Sub: "expired"}, t0)
		c.put(&k3, &Claims{Sub: "new"}, t0.Add(time.Hour))
		if c.len() != 2 {
			t.Fatalf("cache holds %d, want 2", c.len())
		}
		if _, _, ok := c.get(&k3); !ok {
			t.Fatal("new entry not stored")
		}
		if _, _, ok := c.get(&k1); ok {
			kept++
		}
	}
	// Expect 300; 250 is 5 standard deviations below, 50 above a fair coin.
	if kept < 250 {
		t.Fatalf("entry without exp kept in %d of %d evictions, want about 3/4", kept, trials)
	}
	if !expiresBefore(t0, t0.Add(time.Second)) || expiresBefore(time.Time{}, t0) || !expiresBefore(t0, time.Time{}) {
		t.Fatal("expiresBefore does not order zero (never) last")
	}
}

func TestConcurrentVerify(t *testing.T) {
	v, _ := hsVerifier(t, func(c *Config) { c.CacheSize = 32 })
	toks := make([]string, 64)
	for i := range toks {
		c := baseClaims()
		c["sub"] = fmt.Sprintf("u%d", i)
		toks[i] = sign(t, jwt.SigningMethodHS256, testSecret, c)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				k := (i*7 + g) % len(toks)
				c, err := v.Verify(toks[k])
				if err != nil || c.Sub != fmt.Sprintf("u%d", k) {
					t.Errorf("Verify: %v %v", c, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := v.cache.len(); n > 32 {
		t.Fatalf("cache holds %d > 32", n)
	}
}

func TestVerifyCachedAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	v, _ := hsVerifier(t, nil)
	tok := sign(t, jwt.SigningMethodHS256, testSecret, baseClaims())
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = v.Verify(tok) }); n != 0 {
		t.Fatalf("cached Verify allocates %v times", n)
	}
}
