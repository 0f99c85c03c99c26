package hub

import (
	"errors"
	"fmt"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
)

// Errors of Subscribe, Unsubscribe and the other channel operations. Each
// maps to one protocol error code.
var (
	ErrInvalidChannel     = errors.New("invalid channel name")
	ErrForbidden          = errors.New("permission denied")
	ErrAlreadySubscribed  = errors.New("already subscribed to this channel")
	ErrNotSubscribed      = errors.New("not subscribed to this channel")
	ErrTooManySubscribers = errors.New("too many subscriptions on this connection")
	ErrTooManyChannels    = errors.New("the node has as many channels as it may keep")
)

// SubscribeResult is what a subscribe tells the client.
type SubscribeResult struct {
	// Position is the stream position the client is at once the
	// subscription starts: live publications follow it with no gap.
	Position broker.Position
	// Recovery says whether recovery was asked for, and Recovered
	// whether every publication since the given position was replayed.
	Recovery, Recovered bool
	// Replayed are the publications recovered, oldest first, to send
	// right after the subscribe's reply and before any live one.
	Replayed []broker.Publication
}

// Subscribe subscribes c to ch, after checking the name, the client's
// permission and its subscription limit. With since, it recovers what the
// client missed: the publications after since are returned in res.Replayed
// (the caller writes them, then nothing else of ch comes before newer
// live publications), or res.Recovered is false when they are not all in
// history (the epoch changed, or they are older than it keeps).
//
// Delivery contract: from the moment Subscribe returns, c receives every
// publication of ch with an offset above res.Position.Offset, in offset
// order, each once, until it unsubscribes or closes — except a publication
// this node's loops refused to fan out (SERVER_BUSY on the publish path,
// counted), which c can recover from history by subscribing again with its
// position. Only on c's loop.
func (h *Hub) Subscribe(c engine.Conn, cl *Client, ch string, since *broker.Position) (res SubscribeResult, err error) {
	defer func() {
		if err != nil {
			h.stats.SubscribesRefused.Add(1)
		}
	}()
	if auth.ValidChannel(ch) != nil {
		return res, ErrInvalidChannel
	}
	if !cl.CanSubscribe(ch) {
		return res, ErrForbidden
	}
	if cl.Subscribed(ch) {
		return res, ErrAlreadySubscribed
	}
	if len(cl.subs) >= h.opts.MaxSubscriptions {
		return res, ErrTooManySubscribers
	}
	x := h.index(c.Loop())
	lc := x.chans[ch]
	if lc == nil {
		// The node subscribes at the broker before reading the stream's
		// position, so no publication falls between the two.
		if err := h.nodeSubscribe(ch); err != nil {
			if errors.Is(err, ErrTooManyChannels) {
				return res, err
			}
			return res, fmt.Errorf("broker subscribe: %w", err)
		}
		lc = &localChan{name: ch, opts: h.opts.Channel(ch)}
		x.chans[ch] = lc
	}
	res, err = h.position(lc, since)
	if err != nil {
		if len(lc.subs) == 0 {
			delete(x.chans, ch)
			h.nodeUnsubscribe(ch)
		}
		return res, err
	}
	cl.subs = append(cl.subs, subscription{ch: lc, pos: int32(len(lc.subs))})
	m := member{c: c, cl: cl, joined: h.stamp.Load()}
	if res.Position.Offset != 0 {
		m.f = &filter{after: res.Position.Offset, epoch: res.Position.Epoch}
	}
	lc.subs = append(lc.subs, m)
	if (lc.opts.Presence || lc.opts.JoinLeave) && cl.ID == "" {
		cl.ID = h.ClientID(c) // made when first shown: most connections never are
	}
	if lc.opts.Presence {
		if err := h.b.AddPresence(ch, cl.Info()); err != nil {
			h.log.Debug("presence not recorded", "conn", c.ID(), "channel", ch, "err", err)
		}
	}
	if lc.opts.JoinLeave {
		if err := h.b.PublishJoin(ch, cl.Info()); err != nil {
			h.log.Debug("join event not sent", "conn", c.ID(), "channel", ch, "err", err)
		}
	}
	return res, nil
}

// position reads the stream position a new subscriber starts from and,
// with since, the publications it missed.
func (h *Hub) position(lc *localChan, since *broker.Position) (SubscribeResult, error) {
	var res SubscribeResult
	if since == nil {
		// A broker that trails its stream knows where this node's delivery
		// stands: starting there, nothing is missed or doubled, and no
		// round trip is made.
		if np, ok := h.b.(broker.NodePositioner); ok {
			if pos, ok := np.NodePosition(lc.name); ok {
				res.Position = pos
				return res, nil
			}
		}
		_, pos, err := h.b.History(lc.name, nil, 1)
		if err != nil && !errors.Is(err, broker.ErrUnrecoverable) {
			return res, fmt.Errorf("broker history: %w", err)
		}
		res.Position = pos
		return res, nil
	}
	res.Recovery = true
	limit := lc.opts.HistorySize
	if limit <= 0 {
		limit = 1 // nothing is kept: only "nothing missed" recovers
	}
	pubs, pos, err := h.b.History(lc.name, since, limit)
	switch {
	case err == nil:
		res.Recovered, res.Replayed = true, pubs
		h.stats.Recovered.Add(1)
		h.stats.RecoveredMessages.Add(uint64(len(pubs)))
	case errors.Is(err, broker.ErrUnrecoverable):
		h.stats.Unrecoverable.Add(1)
	default:
		return res, fmt.Errorf("broker history: %w", err)
	}
	res.Position = pos
	if n := len(pubs); n > 0 {
		res.Position.Offset = pubs[n-1].Offset
	}
	return res, nil
}

// Unsubscribe takes c off ch. Only on c's loop.
func (h *Hub) Unsubscribe(c engine.Conn, cl *Client, ch string) error {
	for i := range cl.subs {
		if cl.subs[i].ch.name == ch {
			h.drop(c, cl, i)
			return nil
		}
	}
	return ErrNotSubscribed
}

// Gone unsubscribes a closed connection from all its channels and forgets
// it. Only on c's loop, from the handler's OnClose.
func (h *Hub) Gone(c engine.Conn, cl *Client) {
	for len(cl.subs) > 0 {
		h.drop(c, cl, len(cl.subs)-1)
	}
	if u := cl.User(); u != "" {
		x := h.index(c.Loop())
		list := x.users[u]
		for i := range list {
			if list[i] == c {
				list[i] = list[len(list)-1]
				list = list[:len(list)-1]
				break
			}
		}
		if len(list) == 0 {
			delete(x.users, u)
		} else {
			x.users[u] = list
		}
	}
}

// Opened registers an authenticated connection under its user, for
// Disconnect. Only on c's loop, from the handler's OnOpen.
func (h *Hub) Opened(c engine.Conn, cl *Client) {
	if u := cl.User(); u != "" {
		x := h.index(c.Loop())
		x.users[u] = append(x.users[u], c)
	}
}

// drop removes the client's i-th subscription.
func (h *Hub) drop(c engine.Conn, cl *Client, i int) {
	s := cl.subs[i]
	lc := s.ch
	last := len(lc.subs) - 1
	if int(s.pos) != last {
		moved := lc.subs[last]
		lc.subs[s.pos] = moved
		for j := range moved.cl.subs {
			if moved.cl.subs[j].ch == lc {
				moved.cl.subs[j].pos = s.pos
				break
			}
		}
	}
	lc.subs[last] = member{}
	lc.subs = lc.subs[:last]
	cl.subs[i] = cl.subs[len(cl.subs)-1]
	cl.subs[len(cl.subs)-1] = subscription{}
	cl.subs = cl.subs[:len(cl.subs)-1]
	if lc.opts.Presence {
		if err := h.b.RemovePresence(lc.name, cl.ID); err != nil {
			h.log.Debug("presence not removed", "conn", c.ID(), "channel", lc.name, "err", err)
		}
	}
	if lc.opts.JoinLeave {
		if err := h.b.PublishLeave(lc.name, cl.Info()); err != nil {
			h.log.Debug("leave event not sent", "conn", c.ID(), "channel", lc.name, "err", err)
		}
	}
	if len(lc.subs) == 0 {
		x := h.index(c.Loop())
		if x.chans[lc.name] == lc {
			delete(x.chans, lc.name)
		}
		h.nodeUnsubscribe(lc.name)
	}
}

// ErrNoPresence: the channel's namespace does not keep presence.
var ErrNoPresence = errors.New("presence is not enabled for this channel")
