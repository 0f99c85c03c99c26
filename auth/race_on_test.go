//go:build race

package auth

// raceEnabled: the race detector changes allocation counts, so allocation
// tests skip under it; run them again without -race.
const raceEnabled = true
