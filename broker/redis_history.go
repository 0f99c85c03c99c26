package broker

import (
	"fmt"
	"strconv"
	"strings"
)

// maxOffset is the largest offset a Lua number (a double) holds exactly;
// a position past it is one no stream can be at.
const maxOffset = 1 << 53

// History is Broker.History, with exactly Memory.History's rules, read
// atomically from Redis by one script. Entries older than the channel's
// HistoryTTL that the last publish did not trim yet are not retained.
func (r *Redis) History(channel string, since *Position, limit int) ([]Publication, Position, error) {
	if r.closed.Load() {
		return nil, Position{}, ErrClosed
	}
	// Called on event loops: with the pub/sub connection down (Redis is
	// away, or just came back and the node has not resubscribed), fail
	// at once rather than hold the loop for a timeout.
	if err := r.Ready(); err != nil {
		return nil, Position{}, fmt.Errorf("broker: redis history of %q: %w", channel, err)
	}
	if since != nil && since.Offset > maxOffset {
		pos, err := r.position(channel, true)
		if err != nil {
			return nil, Position{}, err
		}
		return nil, pos, ErrUnrecoverable
	}
	sinceArg := int64(-1)
	if since != nil {
		sinceArg = int64(since.Offset)
	}
	pos, cut, pubs, err := r.readHistory(channel, sinceArg, max(limit, 0), 0, "", true)
	if err != nil {
		return nil, Position{}, err
	}
	// Oldest first, without what is past its age.
	pubs = retained(pubs, cut)
	if since == nil {
		return pubs, pos, nil
	}
	if pos.Epoch == "" {
		if since.Offset != 0 {
			return nil, pos, ErrUnrecoverable
		}
		return nil, pos, nil
	}
	fromStart := *since == Position{}
	if (since.Epoch != pos.Epoch && !fromStart) || since.Offset > pos.Offset {
		return nil, pos, ErrUnrecoverable
	}
	missing := pos.Offset - since.Offset
	if missing == 0 {
		return nil, pos, nil
	}
	if (limit > 0 && missing > uint64(limit)) || uint64(len(pubs)) != missing || pubs[0].Offset != since.Offset+1 {
		return nil, pos, ErrUnrecoverable
	}
	return pubs, pos, nil
}

// retained returns pubs (newest first) oldest first, keeping only the
// newest run younger than cut (ms; 0: no age limit) that is contiguous
// down from the newest.
func retained(pubs []Publication, cut int64) []Publication {
	n := 0
	for n < len(pubs) && pubs[n].Time > cut && (n == 0 || pubs[n].Offset+1 == pubs[n-1].Offset) {
		n++
	}
	pubs = pubs[:n]
	for i, j := 0, n-1; i < j; i, j = i+1, j-1 {
		pubs[i], pubs[j] = pubs[j], pubs[i]
	}
	return pubs
}

// readHistory runs the history script (see its arguments there): the
// stream's position, the age cutoff and the entries (newest first). once
// (for calls on event loops) sends it without rueidis's retries.
func (r *Redis) readHistory(channel string, since int64, limit int, budget int, epoch string, once bool) (Position, int64, []Publication, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	script := historyScript
	if once {
		script = historyScriptOnce
	}
	vals, err := script.Exec(ctx, r.client,
		[]string{r.metaKey(channel), r.streamKey(channel)},
		[]string{strconv.FormatInt(since, 10), strconv.Itoa(limit), strconv.Itoa(budget), epoch},
	).ToArray()
	if err != nil {
		return Position{}, 0, nil, fmt.Errorf("broker: redis history of %q: %w", channel, err)
	}
	if len(vals) < 3 || (len(vals)-3)%3 != 0 {
		return Position{}, 0, nil, fmt.Errorf("broker: redis history of %q: %d values in the answer", channel, len(vals))
	}
	off, err1 := vals[0].AsInt64()
	epoch, err2 := vals[1].ToString()
	cut, err3 := vals[2].AsInt64()
	if err := errOr(err1, err2, err3); err != nil || off < 0 {
		return Position{}, 0, nil, fmt.Errorf("broker: redis history of %q: bad answer: %v", channel, err)
	}
	pubs := make([]Publication, 0, (len(vals)-3)/3)
	for i := 3; i < len(vals); i += 3 {
		id, err1 := vals[i].ToString()
		os, err2 := vals[i+1].ToString()
		data, err3 := vals[i+2].ToString()
		if err := errOr(err1, err2, err3); err != nil {
			return Position{}, 0, nil, fmt.Errorf("broker: redis history of %q: bad entry: %w", channel, err)
		}
		o, err1 := strconv.ParseUint(os, 10, 64)
		ms, _, _ := strings.Cut(id, "-")
		t, err2 := strconv.ParseInt(ms, 10, 64)
		if err := errOr(err1, err2); err != nil {
			return Position{}, 0, nil, fmt.Errorf("broker: redis history of %q: bad entry %q: %w", channel, id, err)
		}
		pubs = append(pubs, Publication{Offset: o, Data: []byte(data), Time: t})
	}
	return Position{Offset: uint64(off), Epoch: epoch}, cut, pubs, nil
}

// position reads a channel's current position; once as for readHistory.
func (r *Redis) position(channel string, once bool) (Position, error) {
	ctx, cancel := r.ctx()
	defer cancel()
	script := positionScript
	if once {
		script = positionScriptOnce
	}
	vals, err := script.Exec(ctx, r.client, []string{r.metaKey(channel)}, nil).ToArray()
	if err != nil {
		return Position{}, fmt.Errorf("broker: redis position of %q: %w", channel, err)
	}
	if len(vals) != 2 {
		return Position{}, fmt.Errorf("broker: redis position of %q: %d values in the answer", channel, len(vals))
	}
	off, err1 := vals[0].AsInt64()
	epoch, err2 := vals[1].ToString()
	if err := errOr(err1, err2); err != nil || off < 0 {
		return Position{}, fmt.Errorf("broker: redis position of %q: bad answer: %v", channel, err)
	}
	return Position{Offset: uint64(off), Epoch: epoch}, nil
}

func errOr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
