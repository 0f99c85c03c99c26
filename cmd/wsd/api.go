package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wsdproject/wsd/auth"
	"github.com/wsdproject/wsd/broker"
	"github.com/wsdproject/wsd/engine"
	"github.com/wsdproject/wsd/frame"
	"github.com/wsdproject/wsd/hub"
	"github.com/wsdproject/wsd/protocol"
)

// api is the HTTP API on the admin listener: JSON in and out, every call
// authorized with "Authorization: apikey KEY" (--api-key; without a key
// the API is off and every /api/ path answers 404).
type api struct {
	hub     *hub.Hub
	srv     *engine.Server
	brokers brokers
	key     string
	maxData int // largest "data" accepted (the WebSocket message limit)
	log     *slog.Logger
}

// maxChannelsPerBroadcast bounds the channels of one /api/broadcast.
const maxChannelsPerBroadcast = 1000

func (a *api) register(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/publish", a.guard(a.publish))
	mux.HandleFunc("POST /api/broadcast", a.guard(a.broadcast))
	mux.HandleFunc("POST /api/disconnect", a.guard(a.disconnect))
	mux.HandleFunc("POST /api/unsubscribe", a.guard(a.unsubscribe))
	mux.HandleFunc("GET /api/presence", a.guard(a.presence))
	mux.HandleFunc("GET /api/history", a.guard(a.history))
	mux.HandleFunc("GET /api/channels", a.guard(a.channels))
	mux.HandleFunc("GET /api/info", a.guard(a.info))
	mux.HandleFunc("/api/", a.guard(func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "NOT_FOUND", "no such API call: "+r.Method+" "+r.URL.Path)
	}))
}

// apiError writes {"error":{"code":…,"message":…}} with status.
func apiError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": message}})
}

func apiReply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// guard checks the API key before h runs.
func (a *api) guard(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.key == "" {
			apiError(w, http.StatusNotFound, "API_DISABLED", "the HTTP API is off: start wsd with --api-key")
			return
		}
		scheme, key, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "apikey") || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(key)), []byte(a.key)) != 1 {
			w.Header().Set("WWW-Authenticate", "apikey")
			apiError(w, http.StatusUnauthorized, "UNAUTHORIZED", `send "Authorization: apikey KEY" with the key given to --api-key`)
			return
		}
		h(w, r)
	}
}

// decode reads a JSON body of at most the message limit plus room for
// the envelope; unknown fields are errors (a typo must not go unnoticed).
func (a *api) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, int64(a.maxData)+64<<10)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			apiError(w, http.StatusRequestEntityTooLarge, "TOO_LARGE", fmt.Sprintf("request body over %d bytes", mbe.Limit))
			return false
		}
		apiError(w, http.StatusBadRequest, "INVALID_JSON", "request body: "+err.Error())
		return false
	}
	if dec.More() {
		apiError(w, http.StatusBadRequest, "INVALID_JSON", "request body: more than one JSON value")
		return false
	}
	return true
}

// checkData checks a publication's data.
func (a *api) checkData(w http.ResponseWriter, data json.RawMessage) bool {
	switch {
	case len(data) == 0:
		apiError(w, http.StatusBadRequest, "MISSING_DATA", `"data" is required (any JSON value)`)
	case len(data) > a.maxData:
		apiError(w, http.StatusRequestEntityTooLarge, "TOO_LARGE", fmt.Sprintf(`"data" is %d bytes, over the message limit of %d`, len(data), a.maxData))
	default:
		return true
	}
	return false
}

// channelError answers a hub or broker error for a channel operation.
func channelError(w http.ResponseWriter, err error) {
	code, msg := protocol.ErrorCode(err)
	status := http.StatusBadRequest
	switch code {
	case protocol.CodeServerBusy, protocol.CodeTooManyChannels:
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	case protocol.CodeBrokerError:
		status = http.StatusInternalServerError
	case protocol.CodeNotAvailable:
		status = http.StatusConflict
	}
	apiError(w, status, code, msg)
}

type publishRequest struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

type position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

func (a *api) publish(w http.ResponseWriter, r *http.Request) {
	var req publishRequest
	if !a.decode(w, r, &req) || !a.checkData(w, req.Data) {
		return
	}
	pos, err := a.hub.Publish(req.Channel, req.Data)
	if err != nil {
		channelError(w, err)
		return
	}
	apiReply(w, position{pos.Offset, pos.Epoch})
}

type broadcastRequest struct {
	Channels []string        `json:"channels"`
	Data     json.RawMessage `json:"data"`
}

type broadcastResult struct {
	Channel string            `json:"channel"`
	Offset  uint64            `json:"offset,omitempty"`
	Epoch   string            `json:"epoch,omitempty"`
	Error   map[string]string `json:"error,omitempty"`
}

// broadcast publishes the same data to many channels. Each channel is
// published on its own (its own offset); the reply says, per channel,
// where it went or why not.
func (a *api) broadcast(w http.ResponseWriter, r *http.Request) {
	var req broadcastRequest
	if !a.decode(w, r, &req) || !a.checkData(w, req.Data) {
		return
	}
	if len(req.Channels) == 0 || len(req.Channels) > maxChannelsPerBroadcast {
		apiError(w, http.StatusBadRequest, "INVALID_CHANNEL", fmt.Sprintf(`"channels" needs 1 to %d channel names`, maxChannelsPerBroadcast))
		return
	}
	for _, ch := range req.Channels {
		if auth.ValidChannel(ch) != nil {
			channelError(w, hub.ErrInvalidChannel)
			return
		}
	}
	out := make([]broadcastResult, len(req.Channels))
	for i, ch := range req.Channels {
		out[i].Channel = ch
		pos, err := a.hub.Publish(ch, req.Data)
		if err != nil {
			code, msg := protocol.ErrorCode(err)
			out[i].Error = map[string]string{"code": code, "message": msg}
			continue
		}
		out[i].Offset, out[i].Epoch = pos.Offset, pos.Epoch
	}
	apiReply(w, map[string]any{"results": out})
}

type disconnectRequest struct {
	User   string `json:"user"`
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// disconnect closes a user's connections on this node.
func (a *api) disconnect(w http.ResponseWriter, r *http.Request) {
	req := disconnectRequest{Code: 4000, Reason: "disconnected by the server"}
	if !a.decode(w, r, &req) {
		return
	}
	if req.User == "" {
		apiError(w, http.StatusBadRequest, "MISSING_USER", `"user" is required (a token's sub)`)
		return
	}
	if req.Code < 4000 || req.Code > 4999 {
		apiError(w, http.StatusBadRequest, "INVALID_CODE", `"code" must be an application close code, 4000 to 4999 (default 4000)`)
		return
	}
	if len(req.Reason) > 123 {
		apiError(w, http.StatusBadRequest, "INVALID_REASON", `"reason" is at most 123 bytes (it rides in a close frame)`)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	n, err := a.hub.Disconnect(ctx, req.User, frame.CloseCode(req.Code), req.Reason)
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, "UNAVAILABLE", err.Error())
		return
	}
	apiReply(w, map[string]int{"disconnected": n})
}

type unsubscribeRequest struct {
	User    string `json:"user"`
	Channel string `json:"channel"`
}

func (a *api) unsubscribe(w http.ResponseWriter, r *http.Request) {
	var req unsubscribeRequest
	if !a.decode(w, r, &req) {
		return
	}
	if req.User == "" {
		apiError(w, http.StatusBadRequest, "MISSING_USER", `"user" is required (a token's sub)`)
		return
	}
	if auth.ValidChannel(req.Channel) != nil {
		channelError(w, hub.ErrInvalidChannel)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	n, err := a.hub.UnsubscribeUser(ctx, req.User, req.Channel)
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, "UNAVAILABLE", err.Error())
		return
	}
	apiReply(w, map[string]int{"unsubscribed": n})
}

func (a *api) presence(w http.ResponseWriter, r *http.Request) {
	ch := r.URL.Query().Get("channel")
	list, err := a.hub.Presence(ch)
	if err != nil {
		channelError(w, err)
		return
	}
	if list == nil {
		list = []broker.ClientInfo{}
	}
	apiReply(w, map[string]any{"channel": ch, "presence": presenceJSON(list)})
}

// presenceJSON keeps each entry's info as raw JSON.
func presenceJSON(list []broker.ClientInfo) []map[string]any {
	out := make([]map[string]any, len(list))
	for i, ci := range list {
		m := map[string]any{"client": ci.Client, "user": ci.User}
		if len(ci.Info) > 0 {
			m["info"] = json.RawMessage(ci.Info)
		}
		out[i] = m
	}
	return out
}

type publicationJSON struct {
	Offset uint64          `json:"offset"`
	Data   json.RawMessage `json:"data"`
}

// history: ?channel=c[&limit=N][&since_offset=N&since_epoch=E].
func (a *api) history(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ch := q.Get("channel")
	limit := 0
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			apiError(w, http.StatusBadRequest, "INVALID_LIMIT", `"limit" must be a number, 0 or more (0: all kept)`)
			return
		}
		limit = n
	}
	var since *broker.Position
	if s := q.Get("since_offset"); s != "" || q.Get("since_epoch") != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			apiError(w, http.StatusBadRequest, "INVALID_SINCE", `"since_offset" must be a number, given with "since_epoch"`)
			return
		}
		since = &broker.Position{Offset: n, Epoch: q.Get("since_epoch")}
		limit = 0
	}
	pubs, pos, err := a.hub.History(ch, since, limit)
	recovered := true
	if errors.Is(err, broker.ErrUnrecoverable) {
		recovered, pubs, err = false, nil, nil
	}
	if err != nil {
		channelError(w, err)
		return
	}
	out := map[string]any{"channel": ch, "offset": pos.Offset, "epoch": pos.Epoch}
	if since != nil {
		out["recovered"] = recovered
	}
	list := make([]publicationJSON, len(pubs))
	for i, p := range pubs {
		list[i] = publicationJSON{p.Offset, p.Data}
	}
	out["publications"] = list
	apiReply(w, out)
}

func (a *api) channels(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	m, err := a.hub.Channels(ctx)
	if err != nil {
		apiError(w, http.StatusServiceUnavailable, "UNAVAILABLE", err.Error())
		return
	}
	type entry struct {
		Channel     string `json:"channel"`
		Subscribers int    `json:"subscribers"`
	}
	list := make([]entry, 0, len(m))
	for ch, n := range m {
		list = append(list, entry{ch, n})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Channel < list[j].Channel })
	apiReply(w, map[string]any{"channels": list})
}

func (a *api) info(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{
		"node":           a.hub.NodeID(),
		"version":        versionLine(debug.ReadBuildInfo()),
		"connections":    a.srv.OpenConnections(),
		"channels":       a.hub.NodeChannels(),
		"uptime_seconds": int64(a.hub.Uptime().Seconds()),
		"draining":       a.srv.Draining(),
		"broker":         a.brokers.name(),
	}
	if m := a.brokers.mem; m != nil {
		out["streams"] = m.Stats().Streams
	}
	if rb := a.brokers.redis; rb != nil {
		// The cluster as the registry has it: every node that announced
		// itself within --redis-node-ttl, this one included.
		nodes, err := rb.Nodes()
		if err != nil {
			apiError(w, http.StatusServiceUnavailable, "BROKER_ERROR", "node registry: "+err.Error())
			return
		}
		out["nodes"] = nodes
		out["broker_ready"] = rb.Ready() == nil
	}
	apiReply(w, out)
}

// writeMetrics writes the hub's and the broker's counters.
func (a *api) writeMetrics(w io.Writer) {
	var b bytes.Buffer
	metric := func(name, kind, help string, v any) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, kind, name, v)
	}
	st := a.hub.Stats()
	metric("wsd_publications_fanned_out_total", "counter", "Publications this node fanned out to its event loops.", st.Publications.Load())
	metric("wsd_publications_refused_total", "counter", "Publications refused because the event loops were behind (SERVER_BUSY).", st.Refused.Load())
	metric("wsd_recoveries_total", "counter", "Subscribes with recovery that got every missed publication.", st.Recovered.Load())
	metric("wsd_recoveries_failed_total", "counter", "Subscribes with recovery told recovered:false.", st.Unrecoverable.Load())
	metric("wsd_recovered_publications_total", "counter", "Publications replayed by recovery.", st.RecoveredMessages.Load())
	metric("wsd_subscribes_refused_total", "counter", "Subscribes refused (permissions, limits, bad names).", st.SubscribesRefused.Load())
	metric("wsd_channels", "gauge", "Channels with subscribers on this node.", a.hub.NodeChannels())
	metric("wsd_channels_refused_total", "counter", "Subscribes refused because the node had --max-channels channels with subscribers.", st.ChannelsRefused.Load())
	metric("wsd_epoch_resets_total", "counter", "Subscribed channels whose stream started a new epoch under the node (Redis lost or expired it).", st.EpochResets.Load())
	if rb := a.brokers.redis; rb != nil {
		a.writeRedisMetrics(&b, rb)
		_, _ = w.Write(b.Bytes())
		return
	}
	ms := a.brokers.mem.Stats()
	metric("wsd_broker_streams", "gauge", "Channel streams (offset and epoch) the memory broker keeps.", ms.Streams)
	metric("wsd_broker_history_bytes", "gauge", "Bytes of publication data kept in histories (bounded by --max-history-bytes).", ms.HistoryBytes)
	metric("wsd_broker_history_publications", "gauge", "Publications kept in histories.", ms.HistoryPublications)
	metric("wsd_broker_published_total", "counter", "Publications the broker accepted.", ms.Published)
	fmt.Fprintf(&b, "# HELP wsd_broker_history_evicted_total Publications taken out of a history, by why.\n# TYPE wsd_broker_history_evicted_total counter\n")
	fmt.Fprintf(&b, "wsd_broker_history_evicted_total{reason=\"size\"} %d\nwsd_broker_history_evicted_total{reason=\"age\"} %d\nwsd_broker_history_evicted_total{reason=\"bytes\"} %d\n",
		ms.EvictedBySize, ms.EvictedByAge, ms.EvictedByBytes)
	metric("wsd_broker_not_retained_total", "counter", "Publications delivered but not kept because --max-history-bytes was full.", ms.NotRetained)
	metric("wsd_broker_channels_refused_total", "counter", "Operations refused because --max-channels was reached.", ms.ChannelsRefused)
	_, _ = w.Write(b.Bytes())
}

// writeRedisMetrics writes the Redis broker's counters.
func (a *api) writeRedisMetrics(b *bytes.Buffer, rb *broker.Redis) {
	metric := func(name, kind, help string, v any) {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, kind, name, v)
	}
	st := rb.Stats()
	ready := 0
	if rb.Ready() == nil {
		ready = 1
	}
	metric("wsd_broker_redis_ready", "gauge", "1 while the pub/sub connection to Redis is up (cross-node delivery works), else 0.", ready)
	metric("wsd_broker_published_total", "counter", "Publications the broker accepted.", st.Published.Load())
	metric("wsd_broker_publish_errors_total", "counter", "Publishes that returned an error (Redis unreachable or too slow): not confirmed to anyone.", st.PublishErrs.Load())
	metric("wsd_broker_redis_delivered_total", "counter", "Publications of other nodes and this one handed to the hub.", st.Delivered.Load())
	metric("wsd_broker_redis_duplicates_total", "counter", "Pub/sub messages skipped because their publication was already delivered.", st.Duplicates.Load())
	metric("wsd_broker_redis_refetched_total", "counter", "Publications read from history to fill a gap in pub/sub delivery.", st.Refetched.Load())
	metric("wsd_broker_redis_skipped_total", "counter", "Publications lost to a gap that history no longer covered.", st.Skipped.Load())
	metric("wsd_broker_redis_reconnects_total", "counter", "Pub/sub connections to Redis made again after one was lost.", st.Reconnects.Load())
	metric("wsd_broker_redis_new_epochs_total", "counter", "Subscribed channels seen starting a new epoch.", st.NewEpochs.Load())
	metric("wsd_broker_redis_rollbacks_total", "counter", "Streams seen gone back within their epoch (Redis lost acknowledged writes) and given a new epoch.", st.Rollbacks.Load())
	metric("wsd_broker_redis_stale_total", "counter", "Pub/sub messages dropped because their epoch is no longer the stream's.", st.Stale.Load())
	metric("wsd_broker_redis_dropped_local_total", "counter", "Pub/sub messages of channels this node no longer subscribes to.", st.DroppedLocal.Load())
	metric("wsd_broker_redis_ops_refused_total", "counter", "Presence writes and join/leave events refused because too many were waiting for Redis.", rb.OpsRefused())
	metric("wsd_broker_redis_op_errors_total", "counter", "Presence writes and join/leave events Redis did not take (queue full, or Redis away).", st.OpErrors.Load())
	metric("wsd_broker_redis_bad_messages_total", "counter", "Pub/sub messages or presence entries that did not parse.", st.BadMessages.Load())
}
