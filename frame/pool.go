package frame

import (
	"math/bits"
	"sync"
	"unsafe"
)

// Message buffers come from size-class pools (1 KiB to 1 MiB, powers of
// two) so that assembling a message costs no allocation in steady state and
// an idle connection holds no buffer at all. Larger buffers are left to the
// garbage collector rather than pinned in a pool.
const (
	minPoolBits = 10
	maxPoolBits = 20
)

// The pools hold a pointer to the first byte of each buffer (pointer-shaped,
// so Put does not allocate); the capacity is the class size.
var bufPools [maxPoolBits - minPoolBits + 1]sync.Pool

func poolClass(n int) int {
	if n <= 1<<minPoolBits {
		return 0
	}
	return bits.Len(uint(n-1)) - minPoolBits
}

// getBuffer returns an empty buffer with capacity of at least n.
func getBuffer(n int) []byte {
	c := poolClass(n)
	if c > maxPoolBits-minPoolBits {
		return make([]byte, 0, n)
	}
	size := 1 << (c + minPoolBits)
	if p, _ := bufPools[c].Get().(*byte); p != nil {
		return unsafe.Slice(p, size)[:0]
	}
	return make([]byte, 0, size)
}

// putBuffer recycles b if its capacity is exactly a pool class.
func putBuffer(b []byte) {
	n := cap(b)
	if n < 1<<minPoolBits || n > 1<<maxPoolBits || n&(n-1) != 0 {
		return
	}
	bufPools[bits.Len(uint(n))-1-minPoolBits].Put(unsafe.SliceData(b[:1]))
}
