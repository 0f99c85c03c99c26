package engine

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAcceptedSocketsHaveNoDelay: gnet no longer sets TCP_NODELAY on each
// connection; the listening socket has it and every accepted socket must
// inherit it, or small frames would wait for Nagle's delayed ACKs.
func TestAcceptedSocketsHaveNoDelay(t *testing.T) {
	s := &Server{cfg: Config{Addr: "127.0.0.1:0"}}
	ln, err := s.listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var nfd int
	var aerr error
	for range 100 {
		if err := ln.rc.Control(func(fd uintptr) {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
		}); err != nil {
			t.Fatal(err)
		}
		if aerr != unix.EAGAIN {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if aerr != nil {
		t.Fatalf("accept4: %v", aerr)
	}
	defer unix.Close(nfd)
	v, err := unix.GetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
	if err != nil {
		t.Fatal(err)
	}
	if v == 0 {
		t.Fatal("an accepted socket does not have TCP_NODELAY")
	}
}
