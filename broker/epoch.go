package broker

import (
	"crypto/rand"
	"encoding/binary"
	"sync/atomic"
)

// epochs makes channel epochs: 8 characters of base32 (0-9a-v) encoding a
// 40-bit bijection of a counter keyed with random bits from crypto/rand.
// One generator never repeats an epoch (for 2^40 of them); two generators
// (two brokers, a restart, two nodes offering an epoch for a new Redis
// stream) give the same epoch with odds of 2^-40.
type epochs struct {
	key [3]uint64 // multiplier (odd), addend, xor mask
	ctr atomic.Uint64
}

func (g *epochs) init() {
	var key [24]byte
	rand.Read(key[:]) // never fails (crypto/rand since Go 1.24)
	for i := range g.key {
		g.key[i] = binary.LittleEndian.Uint64(key[8*i:])
	}
	g.key[0] |= 1
}

func (g *epochs) next() string {
	const mask = 1<<40 - 1
	x := g.ctr.Add(1)
	x = (x*g.key[0] + g.key[1]) & mask
	x ^= x >> 20
	x = (x * 0x9e3779b97f4a7c15) & mask // odd: a bijection mod 2^40
	x ^= x >> 23
	x ^= g.key[2] & mask
	const digits = "0123456789abcdefghijklmnopqrstuv"
	var b [8]byte
	for i := range b {
		b[i] = digits[x>>(35-5*i)&31]
	}
	return string(b[:])
}
