package frame

import (
	"bytes"
	"errors"
	"io"

	"github.com/klauspost/compress/flate"
)

// permessage-deflate (RFC 7692) is negotiated with no context takeover in
// both directions, so every message is compressed and decompressed on its
// own: a connection keeps no flate state between messages, and one Deflater
// and one Inflater per event loop serve all of its connections (flate state
// is hundreds of KiB; per connection it would dwarf everything else).

// deflateTail is what a sender strips from the end of each compressed
// message (the empty stored block of a sync flush, RFC 7692 section 7.2.1).
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// inflateTail restores deflateTail and then ends the stream with a final
// empty stored block, so the decompressor reports a clean io.EOF.
var inflateTail = []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}

// ErrCompress reports that the compressor did not end a message with the
// expected sync-flush marker.
var ErrCompress = errors.New("frame: deflate output lacks the sync flush marker")

// Deflater compresses messages for permessage-deflate. Not safe for
// concurrent use: one per event loop.
type Deflater struct {
	level   int
	writers [16]*flate.Writer // by LZ77 window bits; [15] is the full 32 KiB window
	out     appendWriter
}

// NewDeflater returns a Deflater compressing at the given flate level
// (1 fastest to 9 smallest).
func NewDeflater(level int) *Deflater {
	return &Deflater{level: level}
}

// Deflate appends the compressed form of p (without the trailing sync
// marker, ready to send with RSV1 set) to dst. windowBits (8 to 15) bounds
// the LZ77 window, as the peer may demand with server_max_window_bits.
func (z *Deflater) Deflate(dst, p []byte, windowBits int) ([]byte, error) {
	if windowBits < 8 || windowBits > 15 {
		windowBits = 15
	}
	start := len(dst)
	z.out.b = dst
	w := z.writers[windowBits]
	if w == nil {
		var err error
		if windowBits == 15 {
			w, err = flate.NewWriter(&z.out, z.level)
		} else {
			w, err = flate.NewWriterWindow(&z.out, 1<<windowBits)
		}
		if err != nil {
			return dst, err
		}
		z.writers[windowBits] = w
	} else {
		w.Reset(&z.out)
	}
	if _, err := w.Write(p); err != nil {
		return dst, err
	}
	if err := w.Flush(); err != nil {
		return dst, err
	}
	out := z.out.b
	z.out.b = nil
	if len(out)-start < len(deflateTail) || !bytes.HasSuffix(out, deflateTail) {
		return dst, ErrCompress
	}
	return out[:len(out)-len(deflateTail)], nil
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// Inflater decompresses permessage-deflate messages. Not safe for
// concurrent use: one per event loop.
type Inflater struct {
	r   io.ReadCloser
	src tailReader
}

// Inflate appends the decompressed form of the compressed message p to dst.
// It fails with ErrMessageTooBig as soon as the output would pass limit
// bytes (a small message must not inflate into an unbounded one) and with
// ErrBadCompression on corrupt input.
func (f *Inflater) Inflate(dst, p []byte, limit int64) ([]byte, error) {
	f.src.reset(p)
	defer f.src.reset(nil)
	if f.r == nil {
		f.r = flate.NewReader(&f.src)
	} else if err := f.r.(flate.Resetter).Reset(&f.src, nil); err != nil {
		return dst, ErrBadCompression
	}
	start := len(dst)
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		room := dst[len(dst):cap(dst)]
		if over := int64(len(dst)-start+len(room)) - (limit + 1); over > 0 {
			// Read at most one byte past the limit: enough to know it was passed.
			room = room[:int64(len(room))-over]
		}
		n, err := f.r.Read(room)
		dst = dst[:len(dst)+n]
		if int64(len(dst)-start) > limit {
			return dst, ErrMessageTooBig
		}
		switch err {
		case nil:
		case io.EOF:
			return dst, nil
		default:
			return dst, ErrBadCompression
		}
	}
}

// tailReader reads a compressed message and then inflateTail. It is an
// io.ByteReader so flate reads from it directly, without a bufio.Reader.
type tailReader struct {
	p    []byte
	tail int // bytes of inflateTail already read
}

func (r *tailReader) reset(p []byte) { r.p, r.tail = p, 0 }

func (r *tailReader) Read(b []byte) (int, error) {
	n := copy(b, r.p)
	r.p = r.p[n:]
	if n < len(b) && r.tail < len(inflateTail) {
		m := copy(b[n:], inflateTail[r.tail:])
		r.tail += m
		n += m
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (r *tailReader) ReadByte() (byte, error) {
	if len(r.p) > 0 {
		c := r.p[0]
		r.p = r.p[1:]
		return c, nil
	}
	if r.tail < len(inflateTail) {
		c := inflateTail[r.tail]
		r.tail++
		return c, nil
	}
	return 0, io.EOF
}
