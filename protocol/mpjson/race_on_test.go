//go:build race

package mpjson

// raceEnabled: the race detector changes allocation counts (sync.Pool
// drops a share of what is put back), so allocation tests skip under it;
// make test runs them again without it.
const raceEnabled = true
