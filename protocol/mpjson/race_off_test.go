//go:build !race

package mpjson

const raceEnabled = false
