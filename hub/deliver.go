package hub

import (
	"errors"
	"strconv"

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
	err := h.srv.Fanout(h, ch, pub.Offset, frame.OpText, b)
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

// HandleEpoch is broker.EpochHandler: a subscribed channel's stream
// started a new epoch (Redis lost or expired it). Every loop is told, in
// order with the channel's publications, to drop the offset filters of the
// channel's members that subscribed before now: their offsets belong to
// the old epoch, and the new epoch's publications must reach them even
// where their offsets are lower. Members that subscribe later read a
// position of the new epoch (or a newer one) and keep theirs.
func (h *Hub) HandleEpoch(ch string, _ broker.Position) {
	h.stats.EpochResets.Add(1)
	_ = h.srv.Fanout(h, ch, eventBit|resetBit|h.stamp.Add(1), frame.OpText, nil)
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
// its offset: a subscriber that already has that offset (from its recovery
// or its subscribe position) skips it. An event's is its stamp (eventBit
// set): a subscriber that joined after it skips it.
func (h *Hub) Deliver(k int, f *engine.Frame) {
	x := h.loops[k].Load()
	if x == nil {
		return
	}
	lc := x.chans[f.Key()]
	if lc == nil {
		return
	}
	seq := f.Seq()
	if seq&resetBit != 0 {
		stamp := seq &^ (eventBit | resetBit)
		for i := range lc.subs {
			if m := &lc.subs[i]; stamp > m.joined {
				m.after = 0
			}
		}
		return
	}
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
		if m.after != 0 {
			if seq <= m.after {
				h.stats.DuplicatesFiltered.Add(1)
				continue
			}
			m.after = 0
		}
		_ = m.c.WriteFrame(f)
	}
}
