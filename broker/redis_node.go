package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// NodeInfo is one node of the cluster as the registry has it.
type NodeInfo struct {
	ID          string `json:"id"`
	Address     string `json:"address,omitempty"`
	Connections int    `json:"connections"`
	// Updated is when the node last announced itself (Unix ms, its clock).
	Updated int64 `json:"updated"`
}

// The registry is an expiring set (see setAddScript) of node id → NodeInfo:
// each node announces itself every third of NodeTTL; a node that stops is
// gone after NodeTTL.
func (r *Redis) nodeKeys() []string {
	return []string{r.prefix + ":n:{nodes}", r.prefix + ":y:{nodes}"}
}

// maxNodes bounds what Nodes reads.
const maxNodes = 1000

func (r *Redis) announce() error {
	info := NodeInfo{ID: r.opts.NodeID, Address: r.opts.NodeAddress, Updated: time.Now().UnixMilli()}
	if r.opts.Connections != nil {
		info.Connections = r.opts.Connections()
	}
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return r.setAdd(r.nodeKeys(), r.opts.NodeTTL, info.ID, string(b))
}

func (r *Redis) unannounce(ctx context.Context) {
	if err := r.setRemove(ctx, r.nodeKeys(), r.opts.NodeID); err != nil {
		r.log.Debug("broker: redis: node not taken out of the registry", "err", err)
	}
}

func (r *Redis) announceLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.NodeTTL / 3)
	defer t.Stop()
	for {
		if err := r.announce(); err != nil {
			r.log.Debug("broker: redis: node not announced", "err", err)
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
	}
}

// Nodes returns the nodes of the cluster that announced themselves within
// NodeTTL, sorted by id.
func (r *Redis) Nodes() ([]NodeInfo, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	vals, err := r.setRead(r.nodeKeys(), maxNodes)
	if err != nil {
		return nil, fmt.Errorf("broker: redis node registry: %w", err)
	}
	out := make([]NodeInfo, 0, len(vals))
	for _, v := range vals {
		var n NodeInfo
		if json.Unmarshal([]byte(v), &n) == nil {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b NodeInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}
