package frame

import "io"

// memSource is a Source over a byte slice that grows as a test feeds it,
// with gnet's semantics: Peek returns bytes in place (the decoder unmasks
// them there) and asking for more than is buffered is an error.
type memSource struct {
	buf []byte
	off int
}

func (s *memSource) feed(p []byte) {
	if s.off > 0 {
		s.buf = append(s.buf[:0], s.buf[s.off:]...)
		s.off = 0
	}
	s.buf = append(s.buf, p...)
}

func (s *memSource) Peek(n int) ([]byte, error) {
	if n > len(s.buf)-s.off {
		return nil, io.ErrShortBuffer
	}
	if n <= 0 {
		n = len(s.buf) - s.off
	}
	return s.buf[s.off : s.off+n], nil
}

func (s *memSource) Discard(n int) (int, error) {
	if n > len(s.buf)-s.off {
		n = len(s.buf) - s.off
	}
	s.off += n
	return n, nil
}

func (s *memSource) InboundBuffered() int { return len(s.buf) - s.off }
