package engine

import (
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	d := Defaults()
	if c.PingInterval != 30*time.Second || c.MaxMissedPongs != 3 || c.MaxMessageBytes != 1<<20 ||
		c.HandshakeTimeout != 5*time.Second || c.MaxHandshakeBytes != 8192 || c.Addr != d.Addr || c.Loops < 1 {
		t.Fatalf("defaults: %+v", c)
	}
	if c.Tick != time.Second {
		t.Fatalf("tick %v with default timeouts, want 1s", c.Tick)
	}
	if got := c.ticks(30 * time.Second); got != 30 {
		t.Fatalf("30s = %d ticks", got)
	}
	if got := c.ticks(1500 * time.Millisecond); got != 2 {
		t.Fatalf("1.5s = %d ticks, want 2 (rounded up)", got)
	}
	// Short timeouts get a finer wheel.
	c, _ = Config{PingInterval: 100 * time.Millisecond}.withDefaults()
	if c.Tick != 25*time.Millisecond {
		t.Fatalf("tick %v for a 100ms ping interval", c.Tick)
	}
}

func TestConfigInvalid(t *testing.T) {
	_, err := Config{Loops: 300, PingInterval: time.Microsecond, MaxMessageBytes: 10, CompressionLevel: 12}.withDefaults()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"loops", "ping interval", "max message bytes", "compression level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
