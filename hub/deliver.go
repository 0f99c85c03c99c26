package hub

import (
	"errors"
	"strconv"
	"strings"

	"github.com/mailru/easyjson/jwriter"

	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
)

// HandlePublication encodes a publication once, as the message clients
// receive, and fans the frame out to every event loop (broker.Handler).
// The broker calls it in offset order per channel, so each loop's inbox
// holds a channel's publications in order.
//
// If the engine refuses the frame (its loops are behind: ErrBacklog), this
// node's subscribers miss the publication live; it is counted, and it is
// in history for them to recover.
func (h *Hub) HandlePublication(ch string, pub *broker.Publication, pos broker.Position) {
	bp := h.frames.Get().(*[]byte)
	b := AppendMessage((*bp)[:0], ch, pub.Offset, pos.Epoch, pub.Data)
	err := h.srv.Fanout(h, h.pubKey(ch, pos.Epoch), pub.Offset, frame.OpText, b)
	*bp = b[:0]
	if cap(b) <= 64<<10 {
		h.frames.Put(bp)
	}
	switch {
	case err == nil:
		h.stats.Publications.Add(1)
	case errors.Is(err, engine.ErrBacklog):
		h.stats.Refused.Add(1)
		h.log.Warn("publication not delivered live on this node: the event loops are behind", "channel", ch, "offset", pub.Offset)
	}
}

// AppendMessage appends a publication as clients receive it:
// {"type":"message","channel":…,"offset":N,"epoch":…,"data":…}, data as it
// was published (raw JSON).
func AppendMessage(b []byte, ch string, offset uint64, epoch string, data []byte) []byte {
	b = append(b, `{"type":"message","channel":`...)
	b = appendString(b, ch)
	b = append(b, `,"offset":`...)
	b = strconv.AppendUint(b, offset, 10)
	b = append(b, `,"epoch":`...)
	b = appendString(b, epoch)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// pubKey returns the fan-out key of a publication of ch in epoch: the
// channel's name, keySep, the epoch. Deliver finds the channel by the name
// and compares the epoch with each filtering member's, so the epoch
// travels with the frame, in order with it, and cannot be lost or
// reordered on the way (as a separate reset frame could: refused for the
// backlog, or stamped before a member that read the old epoch's position).
// The key is kept in the channel's nodeChan and made anew only when the
// epoch changes: no allocation per publication.
func (h *Hub) pubKey(ch, epoch string) string {
	h.mu.RLock()
	nc := h.subs[ch]
	h.mu.RUnlock()
	if nc != nil {
		if k := nc.key.Load(); k != nil && keyEpoch(*k, len(ch)) == epoch {
			return *k
		}
	}
	k := ch + string(rune(keySep)) + epoch
	if nc != nil {
		nc.key.Store(&k)
	}
	return k
}

// keyEpoch returns the epoch of a publication's fan-out key whose channel
// name is n bytes long.
func keyEpoch(key string, n int) string { return key[n+1:] }

// splitKey returns the channel and the epoch of a frame's key (the epoch
// is empty for an event's key, the channel's name alone).
func splitKey(key string) (ch, epoch string) {
	if i := strings.IndexByte(key, keySep); i >= 0 {
		return key[:i], key[i+1:]
	}
	return key, ""
}

// HandleEpoch is broker.EpochHandler: a subscribed channel's stream
// started a new epoch (Redis lost or expired it). It is only counted:
// every publication carries its epoch to Deliver, which never filters a
// publication of another epoch than a member's position by offset, so the
// new epoch's low offsets reach members that waited above an old offset
// without any message of this call having to reach the loops.
func (h *Hub) HandleEpoch(string, broker.Position) {
	h.stats.EpochResets.Add(1)
}

// HandleJoin and HandleLeave send {"type":"join"|"leave","channel":…,
// "info":{"client":…,"user":…,"info":…}} to the channel's subscribers.
func (h *Hub) HandleJoin(ch string, info broker.ClientInfo)  { h.event("join", ch, info) }
func (h *Hub) HandleLeave(ch string, info broker.ClientInfo) { h.event("leave", ch, info) }

func (h *Hub) event(kind, ch string, info broker.ClientInfo) {
	var w jwriter.Writer
	w.RawString(`{"type":"` + kind + `","channel":`)
	w.String(ch)
	w.RawString(`,"info":`)
	WriteClientInfo(&w, info)
	w.RawByte('}')
	b, _ := w.BuildBytes()
	_ = h.srv.Fanout(h, ch, eventBit|h.stamp.Add(1), frame.OpText, b)
}

// WriteClientInfo writes a presence entry: {"client":…,"user":…,"info":…}
// (info, raw JSON, only if there is one).
func WriteClientInfo(w *jwriter.Writer, info broker.ClientInfo) {
	w.RawString(`{"client":`)
	w.String(info.Client)
	w.RawString(`,"user":`)
	w.String(info.User)
	if len(info.Info) > 0 {
		w.RawString(`,"info":`)
		w.Raw(info.Info, nil)
	}
	w.RawByte('}')
}

// Deliver writes a frame fanned out for a channel to the channel's
// subscribers on loop k (engine.Fanout). A publication's sequence number is
// its offset and its key carries its epoch: a subscriber that already has
// that offset of that epoch (from its recovery or its subscribe position)
// skips it. An event's is its stamp (eventBit set): a subscriber that
// joined after it skips it.
func (h *Hub) Deliver(k int, f *engine.Frame) {
	x := h.loops[k].Load()
	if x == nil {
		return
	}
	ch, epoch := splitKey(f.Key())
	lc := x.chans[ch]
	if lc == nil {
		return
	}
	seq := f.Seq()
	if seq&eventBit != 0 {
		for i := range lc.subs {
			if m := &lc.subs[i]; seq&^eventBit > m.joined {
				_ = m.c.WriteFrame(f)
			}
		}
		return
	}
	for i := range lc.subs {
		m := &lc.subs[i]
		if f := m.f; f != nil && f.epoch == epoch {
			if seq <= f.after {
				h.stats.DuplicatesFiltered.Add(1)
				continue
			}
			m.f = nil
		}
		_ = m.c.WriteFrame(f)
	}
}
