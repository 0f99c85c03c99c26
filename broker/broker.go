// Package broker carries publications, history and presence between the
// hub of one wsd node and, through it, every node of a cluster. The Memory
// broker (this process only) is the default; a Redis broker plugs in behind
// the same interface without the hub changing.
package broker

import (
	"errors"
	"time"
)

// Publication is one message published to a channel.
type Publication struct {
	// Offset is the publication's place in its channel's stream: 1 for the
	// first publication of an epoch, then +1 for each one, with no gaps.
	Offset uint64
	// Data is the message, raw JSON. It is never modified after Publish.
	Data []byte
	// Time is when the broker accepted it (Unix milliseconds).
	Time int64
}

// Position is a place in a channel's stream: the offset of the last
// publication seen and the epoch it belongs to. Offsets of different epochs
// are unrelated.
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// ClientInfo describes one connection in a channel's presence.
type ClientInfo struct {
	// Client is the connection id, unique across the cluster.
	Client string `json:"client"`
	// User is the token's subject ("" for anonymous connections).
	User string `json:"user"`
	// Info is the token's optional "info" claim, raw JSON (nil if none).
	Info []byte `json:"info,omitempty"`
}

// ChannelOptions are what a channel keeps beyond live delivery.
type ChannelOptions struct {
	// HistorySize is how many publications a channel keeps for history and
	// recovery; 0 keeps none (offsets still advance).
	HistorySize int
	// HistoryTTL is how long a publication stays in history; it also bounds
	// how long an idle channel's stream (offset and epoch) is kept after its
	// last publication. 0 with HistorySize > 0 means no age limit.
	HistoryTTL time.Duration
}

// Handler receives what the broker delivers to this node. The hub
// implements it.
type Handler interface {
	// HandlePublication delivers one publication of a channel the node is
	// subscribed to (see Broker.Subscribe). pos is the publication's
	// position. Calls for one channel are never concurrent and come in
	// offset order; calls for different channels may be concurrent. pub
	// (and its Data) is valid only during the call: the handler copies what
	// it keeps, and must not call back into the broker for the same
	// channel.
	HandlePublication(channel string, pub *Publication, pos Position)
	// HandleJoin and HandleLeave deliver presence events of channels the
	// node is subscribed to; for one channel they are ordered with each
	// other and with its publications.
	HandleJoin(channel string, info ClientInfo)
	HandleLeave(channel string, info ClientInfo)
}

// EpochHandler is an optional interface of a Handler: a broker that can
// see a subscribed channel's stream start a new epoch while the node stays
// subscribed (the Redis broker, when Redis lost or expired the stream)
// calls HandleEpoch before it delivers the new epoch's first publication,
// in order with the channel's other calls. Positions the node's
// subscribers hold of the old epoch are worthless from then on (a
// subscriber waiting for an offset above its old one must not skip the new
// epoch's low offsets). The Memory broker never calls it: it keeps a
// subscribed stream.
type EpochHandler interface {
	HandleEpoch(channel string, pos Position)
}

// NodePositioner is an optional interface of a Broker whose deliveries to
// this node trail the stream (the Redis broker: publications reach the node
// over pub/sub after they are accepted). NodePosition returns, for a
// channel the node is subscribed to, the position of the last publication
// the broker handed to the Handler: every later one of that epoch will be
// handed over, in order. A new subscriber starting from it misses nothing
// and gets nothing twice, without asking the broker's server. ok is false
// when the node is not subscribed to the channel.
type NodePositioner interface {
	NodePosition(channel string) (pos Position, ok bool)
}

// Broker is the contract between the hub and a message bus.
//
// Delivery contract:
//
//   - Ordering: publications of one channel are given offsets 1, 2, 3, …
//     within an epoch, in the order the broker accepts them, and every node
//     subscribed to the channel gets them through HandlePublication in that
//     order. Publications of different channels have no order between them.
//   - Once: a publication accepted by Publish (nil error) is delivered at
//     most once to each node subscribed when it was accepted, and is in the
//     channel's history (while the history's size and age allow) before
//     Publish returns. A node that missed it (a broker outage, a late
//     subscribe) finds it with History; that is how clients recover, so
//     together a client gets every publication exactly once or is told it
//     cannot (its epoch changed or the gap is older than the history).
//   - Errors: Publish returns an error when it cannot confirm that the
//     publication was accepted, never a nil error for a dropped message.
//     A refused publication gets no offset and reaches nobody.
//   - Epoch: a channel's epoch changes whenever its stream may have lost
//     publications (the broker restarted, the stream expired): a position
//     of an older epoch can never be recovered from. A broker whose store
//     can come back with older data says what it needs for this (Redis:
//     an fsync-always append-only file, no asynchronous failover) and what
//     it does otherwise.
//
// All methods are safe for concurrent use.
type Broker interface {
	// Run starts delivery to h; it is called once, before anything else.
	Run(h Handler) error
	// Publish appends data (raw JSON; the broker keeps its own copy) to
	// the channel's stream and history and delivers it to every subscribed
	// node. It returns the publication's position.
	Publish(channel string, data []byte, opts ChannelOptions) (Position, error)
	// PublishJoin and PublishLeave deliver presence events to every
	// subscribed node (not kept in history, no offset).
	PublishJoin(channel string, info ClientInfo) error
	PublishLeave(channel string, info ClientInfo) error
	// Subscribe makes the broker deliver the channel's publications to
	// this node; Unsubscribe stops it. The hub calls Subscribe when a
	// channel gets its first subscriber on the node (before reading its
	// history, so nothing falls between the two) and Unsubscribe after its
	// last one leaves. Calls for one channel are made in order.
	Subscribe(channel string) error
	Unsubscribe(channel string) error
	// History returns publications of the channel, oldest first, and the
	// stream's current position. With since nil: the newest limit retained
	// ones (limit <= 0: all retained). With since: every publication after
	// since.Offset, all or nothing — ErrUnrecoverable (with the current
	// position) when since's epoch is not the current one, when since is
	// ahead of the stream, when a publication after it is no longer
	// retained, or when more than limit (if > 0) follow it; the client must
	// then refetch. A channel with no stream (nothing published, or expired)
	// is at {0, ""}, and {0, ""} is the start of any epoch: recoverable while
	// the stream's first publication is retained. Reads create no stream.
	// The returned Data slices are shared: read only.
	History(channel string, since *Position, limit int) ([]Publication, Position, error)
	// AddPresence and RemovePresence record a connection in, and take it
	// out of, a channel's presence. Presence lists connections by client id.
	AddPresence(channel string, info ClientInfo) error
	RemovePresence(channel string, client string) error
	// Presence returns the connections present in a channel.
	Presence(channel string) ([]ClientInfo, error)
	// Close stops delivery and releases the broker's resources.
	Close() error
}

// ErrUnrecoverable: publications after the given position are no longer
// all retained, or the position belongs to another epoch.
var ErrUnrecoverable = errors.New("broker: publications since the given position are not all retained")
