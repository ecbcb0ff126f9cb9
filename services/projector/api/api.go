package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// Config configures the control plane's HTTP handler.
type Config struct {
	// Token is the bearer token of every /v1 route and of the page's login.
	Token string
	// Metrics serves /metrics (open, as Prometheus scrapes it); 404 when nil.
	Metrics http.Handler
	Logger  *slog.Logger
	// Actor is the actor_id of the events the API publishes
	// (attempt.invalidated); default "user:control-plane".
	Actor string
	// TokenFile, when set, is where the sign-in page says the token is
	// (leviathan dev's data directory).
	TokenFile string
}

// Source is the projected graph the API serves: the projector.
type Source interface {
	// Graph is the graph as projected now.
	Graph() *graph.Graph
	// Ready reports whether the graph holds every event that was in the
	// stream when the projector started.
	Ready() bool
	// Applied is the stream sequence of the last event applied.
	Applied() uint64
	// WaitApplied waits until the event at seq is applied or ctx ends.
	WaitApplied(ctx context.Context, seq uint64) error
}

// API serves the control plane over a projector: the JSON API of DESIGN.md
// §8 (shapes of the Python control plane), /healthz, /readyz, /metrics and
// the web page. It reads events back from the stream and publishes the
// ones it makes (ingest, invalidate) through res.
type API struct {
	p      Source
	res    *stage.Resources
	cfg    Config
	logger *slog.Logger
}

// New returns the control plane API over src.
func New(src Source, res *stage.Resources, cfg Config) *API {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Actor == "" {
		cfg.Actor = "user:control-plane"
	}
	return &API{p: src, res: res, cfg: cfg, logger: cfg.Logger}
}

// Limits of the list routes and of ingest.
const (
	defaultListLimit = 10
	maxIngestBytes   = 8 << 20
	maxIngestEvents  = 1000
	maxEventsShown   = 200 // events of one attempt in GET /v1/attempts/{id}
	// writeWait is how long a POST waits for its events to be applied, so
	// that a read right after it sees them.
	writeWait = 3 * time.Second
)

// Handler routes the API.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/healthz", methods{"GET": func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}})
	mux.Handle("/readyz", methods{"GET": func(w http.ResponseWriter, r *http.Request) {
		body := map[string]any{"status": "ready", "applied": a.p.Applied()}
		status := http.StatusOK
		if !a.p.Ready() {
			body["status"], status = "catching up", http.StatusServiceUnavailable
		}
		writeJSON(w, status, body)
	}})
	if a.cfg.Metrics != nil {
		mux.Handle("/metrics", a.cfg.Metrics)
	}

	v1 := http.NewServeMux()
	v1.Handle("/v1/graph/summary", methods{"GET": a.summary})
	v1.Handle("/v1/attempts", methods{"GET": a.attempts})
	v1.Handle("/v1/attempts/{id}", methods{"GET": a.attempt})
	v1.Handle("/v1/attempts/{id}/invalidate", methods{"POST": a.invalidate})
	v1.Handle("/v1/failures", methods{"GET": a.failures})
	v1.Handle("/v1/events/recent", methods{"GET": a.recent})
	v1.Handle("/v1/events/ingest", methods{"POST": a.ingest})
	v1.Handle("/v1/events/chain", methods{"GET": a.chain})
	v1.Handle("/v1/autonomy/status", methods{"GET": a.autonomy})
	v1.Handle("/v1/backlog/suggest", methods{"POST": a.backlogSuggest})
	v1.Handle("/v1/topology/summary", methods{"GET": a.topologySummary})
	v1.Handle("/v1/topology/areas", methods{"GET": a.topologyList("areas")})
	v1.Handle("/v1/topology/subsystems", methods{"GET": a.topologyList("subsystems")})
	v1.Handle("/v1/topology/dependencies", methods{"GET": a.topologyList("dependencies")})
	v1.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeDetail(w, http.StatusNotFound, "Not Found")
	})
	// Authentication comes before routing, so an unauthenticated client
	// learns nothing about which routes exist.
	mux.Handle("/v1/", a.auth(v1))

	a.pageRoutes(mux)
	// Anything else: the JSON 404 of the API, not Go's plain text.
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeDetail(w, http.StatusNotFound, "Not Found")
	})
	return mux
}

// methods routes by HTTP method and answers others with a JSON 405.
type methods map[string]http.HandlerFunc

func (m methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, ok := m[r.Method]
	if !ok && r.Method == http.MethodHead {
		h, ok = m[http.MethodGet]
	}
	if !ok {
		allow := make([]string, 0, len(m))
		for k := range m {
			allow = append(allow, k)
		}
		sort.Strings(allow)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeDetail(w, http.StatusMethodNotAllowed, "Method Not Allowed")
		return
	}
	h(w, r)
}

// auth requires the bearer token, compared in constant time.
func (a *API) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		if !strings.EqualFold(scheme, "Bearer") || got == "" {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeDetail(w, http.StatusUnauthorized, "Missing bearer token")
			return
		}
		if !a.validToken(got) {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			writeDetail(w, http.StatusUnauthorized, "Invalid token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// validToken compares in constant time, so the token cannot be learnt a
// byte at a time from response times; comparing SHA-256 digests, so the
// time does not depend on the token's length either. An empty configured
// token matches nothing.
func (a *API) validToken(got string) bool {
	want := sha256.Sum256([]byte(a.cfg.Token))
	have := sha256.Sum256([]byte(got))
	return a.cfg.Token != "" && subtle.ConstantTimeCompare(have[:], want[:]) == 1
}

func (a *API) summary(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(a.p.Graph().SummaryJSON())
}

// limit reads the limit query parameter as upstream's FastAPI does: def
// when absent, an integer (sign and surrounding spaces allowed) or 422.
// What it means is the list's own (keep).
func limit(w http.ResponseWriter, r *http.Request, def int) (int, bool) {
	s := strings.TrimSpace(r.URL.Query().Get("limit"))
	if !r.URL.Query().Has("limit") {
		return def, true
	}
	n, err := strconv.Atoi(strings.TrimPrefix(s, "+"))
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": []map[string]any{{
			"type": "int_parsing", "loc": []string{"query", "limit"},
			"msg": "Input should be a valid integer, unable to parse string as an integer", "input": r.URL.Query().Get("limit"),
		}}})
		return 0, false
	}
	return n, true
}

// keep is upstream's items[:limit] over a list of total items, newest
// first: limit 0 keeps none, a negative limit drops that many of the
// oldest.
func keep(limit, total int) int {
	if limit < 0 {
		return max(total+limit, 0)
	}
	return min(limit, total)
}

// all is a limit larger than any list.
const all = int(^uint(0) >> 1)

func (a *API) attempts(w http.ResponseWriter, r *http.Request) {
	n, ok := limit(w, r, defaultListLimit)
	if !ok {
		return
	}
	target := r.URL.Query().Get("target")
	g := a.p.Graph()
	if n < 0 {
		n = keep(n, len(g.Attempts(target, all)))
	}
	list := g.Attempts(target, n)
	writeJSON(w, http.StatusOK, map[string]any{"attempts": list, "count": len(list)})
}

func (a *API) failures(w http.ResponseWriter, r *http.Request) {
	n, ok := limit(w, r, defaultListLimit)
	if !ok {
		return
	}
	target := r.URL.Query().Get("target")
	g := a.p.Graph()
	if n < 0 {
		n = keep(n, len(g.Failures(target, all)))
	}
	list := g.Failures(target, n)
	writeJSON(w, http.StatusOK, map[string]any{"failures": list, "count": len(list)})
}

// RecentEventView is one element of GET /v1/events/recent: upstream's
// event_id, event_type, timestamp, actor_id and payload (read back from
// the stream) and hash, plus the target and attempt.
type RecentEventView struct {
	EventID   string          `json:"event_id"`
	EventType string          `json:"event_type"`
	Timestamp graph.Time      `json:"timestamp"`
	ActorID   string          `json:"actor_id"`
	Payload   json.RawMessage `json:"payload"`
	Hash      *string         `json:"hash"`
	Target    string          `json:"target"`
	AttemptID string          `json:"attempt_id"`
}

// recent answers the newest events first, as a bare list (upstream's
// shape; default 200). As upstream's, limit 0 is every event kept, and a
// negative limit drops that many of the oldest. The graph keeps the
// newest RecentEventsKept.
func (a *API) recent(w http.ResponseWriter, r *http.Request) {
	n, ok := limit(w, r, 200)
	if !ok {
		return
	}
	g := a.p.Graph()
	kept := g.RecentEvents(graph.RecentEventsKept)
	switch {
	case n == 0:
		n = len(kept)
	case n < 0:
		n = keep(n, len(kept))
	}
	list := kept[:min(n, len(kept))]
	out := make([]RecentEventView, 0, len(list))
	for _, e := range list {
		v := a.readEvent(r.Context(), graph.Step{Seq: e.Seq, EventType: e.EventType, Timestamp: e.Timestamp, ActorID: e.ActorID})
		if v.EventID == "" {
			v.EventID = e.EventID
		}
		out = append(out, RecentEventView{EventID: v.EventID, EventType: e.EventType, Timestamp: e.Timestamp,
			ActorID: e.ActorID, Payload: v.Payload, Hash: v.Hash, Target: e.Target, AttemptID: e.AttemptID})
	}
	writeJSON(w, http.StatusOK, out)
}

// EventView is one event of GET /v1/attempts/{id}, read back from the
// stream.
type EventView struct {
	EventID   string          `json:"event_id"`
	EventType string          `json:"event_type"`
	Timestamp graph.Time      `json:"timestamp"`
	ActorID   string          `json:"actor_id"`
	Payload   json.RawMessage `json:"payload"`
	// Hash is the event's link in the hash chain; null for an event not
	// chained (a duplicate, or a request that carried a credential).
	Hash *string `json:"hash"`
	Seq  uint64  `json:"seq"`
}

// attempt answers the attempt's node, its events and what it produced. The
// graph keeps each event's stream sequence, not the event: the events are
// read back from the stream (one direct read each), which keeps the graph
// small.
func (a *API) attempt(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	d, ok := a.p.Graph().Attempt(id)
	if !ok {
		// As upstream: an attempt nobody has heard of is an empty answer.
		writeJSON(w, http.StatusOK, map[string]any{"attempt_node": nil, "events": []EventView{}, "artifacts": []graph.NodeView{}})
		return
	}
	evs := make([]EventView, 0, len(d.Steps))
	for _, s := range d.Steps[:min(len(d.Steps), maxEventsShown)] {
		evs = append(evs, a.readEvent(r.Context(), s))
	}
	writeJSON(w, http.StatusOK, map[string]any{"attempt_node": d.Node, "events": evs, "artifacts": d.Artifacts})
}

func (a *API) readEvent(ctx context.Context, s graph.Step) EventView {
	v := EventView{EventType: s.EventType, Timestamp: s.Timestamp, ActorID: s.ActorID, Seq: s.Seq, Payload: json.RawMessage("null")}
	if s.Seq == 0 {
		return v
	}
	if h, ok := a.p.Graph().HashAt(s.Seq); ok {
		hx := events.HashHex(h)
		v.Hash = &hx
	}
	msg, err := a.res.Stream.GetMsg(ctx, s.Seq)
	if err != nil {
		// Aged out of the stream (MaxAge): the graph still has the step.
		return v
	}
	if env, err := events.Decode(msg.Data); err == nil {
		v.EventID, v.Payload = env.EventID, env.Payload
	} else if json.Valid(msg.Data) {
		v.EventID, v.Payload = "seq-"+strconv.FormatUint(s.Seq, 10), msg.Data
	}
	return v
}

// ChainLinkView is one link of GET /v1/events/chain.
type ChainLinkView struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// ChainView is the body of GET /v1/events/chain: the links after
// after_seq, oldest first (up to limit, default and at most 10,000), the
// newest link, and how many there are in all. `leviathan verify` pages
// through it and compares it with its own replay of the stream.
type ChainView struct {
	Links []ChainLinkView `json:"links"`
	Head  *ChainLinkView  `json:"head"`
	Count int             `json:"count"`
}

// MaxChainPage is the most links one GET /v1/events/chain answers.
const MaxChainPage = 10_000

func (a *API) chain(w http.ResponseWriter, r *http.Request) {
	n, ok := limit(w, r, MaxChainPage)
	if !ok {
		return
	}
	var after uint64
	if s := r.URL.Query().Get("after_seq"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeDetail(w, http.StatusUnprocessableEntity, "after_seq must be a stream sequence (a non-negative integer)")
			return
		}
		after = v
	}
	g := a.p.Graph()
	out := ChainView{Links: []ChainLinkView{}}
	if head, count, ok := g.ChainHead(); ok {
		out.Head, out.Count = &ChainLinkView{Seq: head.Seq, Hash: events.HashHex(head.Hash)}, count
	}
	for _, l := range g.Links(after, min(max(n, 0), MaxChainPage)) {
		out.Links = append(out.Links, ChainLinkView{Seq: l.Seq, Hash: events.HashHex(l.Hash)})
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) invalidate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var body struct {
		Reason *string `json:"reason"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil {
		writeDetail(w, http.StatusUnprocessableEntity, "body must be a JSON object with a reason")
		return
	}
	if body.Reason == nil || strings.TrimSpace(*body.Reason) == "" {
		writeDetail(w, http.StatusUnprocessableEntity, "reason is required")
		return
	}
	d, ok := a.p.Graph().Attempt(id)
	if !ok || d.Node == nil {
		writeDetail(w, http.StatusNotFound, fmt.Sprintf("Attempt %s not found", id))
		return
	}
	// An attempt is invalidated once: asking again changes nothing and
	// answers with the reason that stands. (The event id is a function of
	// attempt and type, so JetStream drops a repeat within its duplicate
	// window, and the graph ignores one after it.)
	answer := func(reason string, already bool) {
		writeJSON(w, http.StatusOK, map[string]any{
			"status": "invalidated", "attempt_id": id, "invalidated": true,
			"reason": reason, "already_invalidated": already,
		})
	}
	if d.Item.Status == "invalidated" || d.Item.Reason != "" {
		// Invalidated before (and maybe carried on since: a stage's event
		// may come after); an event from another producer may lack a reason.
		answer(d.Item.Reason, true)
		return
	}
	ref := events.Ref{AttemptID: id, TaskID: d.Item.TaskID, TargetID: d.Item.Target}
	env, err := events.New(events.AttemptInvalidated, a.cfg.Actor, ref, events.Invalidated{Ref: ref, Reason: *body.Reason}, time.Now())
	if err != nil {
		writeDetail(w, http.StatusInternalServerError, "cannot build the event")
		return
	}
	data, _ := env.Marshal()
	ack, err := a.res.JS.Publish(r.Context(), env.Subject(), data, jetstream.WithMsgID(env.EventID))
	if err != nil {
		a.logger.Warn("invalidate: publish failed", "attempt", id, "err", err)
		writeDetail(w, http.StatusServiceUnavailable, "the event stream is not available")
		return
	}
	a.waitApplied(r.Context(), ack.Sequence)
	reason := *body.Reason
	if ack.Duplicate {
		// Another request invalidated it a moment ago.
		if d, ok := a.p.Graph().Attempt(id); ok && d.Item.Reason != "" {
			reason = d.Item.Reason
		}
	}
	answer(reason, ack.Duplicate)
}

// waitApplied waits, for a short while, until the projector has applied
// the message at seq.
func (a *API) waitApplied(ctx context.Context, seq uint64) {
	ctx, cancel := context.WithTimeout(ctx, writeWait)
	defer cancel()
	_ = a.p.WaitApplied(ctx, seq)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeDetail writes the error shape of the Python control plane.
func writeDetail(w http.ResponseWriter, status int, detail string) {
	writeJSON(w, status, map[string]string{"detail": detail})
}

// errTooLarge is what http.MaxBytesReader's error looks like to callers.
func isTooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}
