package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// IngestBundle is the body of POST /v1/events/ingest: the Python worker's
// event bundle, unchanged.
type IngestBundle struct {
	Target    string            `json:"target"`
	BundleID  string            `json:"bundle_id"`
	Events    []json.RawMessage `json:"events"`
	Artifacts []json.RawMessage `json:"artifacts"`
}

// IngestEvent is one event of a bundle. attempt_id and target_id may be in
// the payload instead (the Python worker puts them there); the timestamp
// may have no zone, and is then UTC.
type IngestEvent struct {
	EventID   string          `json:"event_id"`
	EventType string          `json:"event_type"`
	Timestamp string          `json:"timestamp"`
	ActorID   string          `json:"actor_id"`
	AttemptID string          `json:"attempt_id"`
	TargetID  string          `json:"target_id"`
	Payload   json.RawMessage `json:"payload"`
}

// IngestResponse is the answer to an ingest: ingested counts the bundle's
// events now in the stream, duplicates those of them that were there
// already (a retried bundle), so a retry answers the same ingested.
// The graph's artifacts (commits, pull requests) come from the events, so
// a bundle's artifacts are not stored: ArtifactsIgnored says how many
// there were (the Python worker sends none).
//
// Events are checked one by one, as upstream does: a bad one is skipped
// and listed in Skipped with the reason, and the others are ingested.
type IngestResponse struct {
	Ingested         int           `json:"ingested"`
	BundleID         string        `json:"bundle_id"`
	Status           string        `json:"status"`
	Duplicates       int           `json:"duplicates"`
	ArtifactsIgnored int           `json:"artifacts_ignored,omitempty"`
	Skipped          []SkippedItem `json:"skipped,omitempty"`
}

// SkippedItem is an event of a bundle that was not ingested, and why.
type SkippedItem struct {
	Index   int    `json:"index"`
	EventID string `json:"event_id,omitempty"`
	Reason  string `json:"reason"`
}

var (
	// eventTypePattern keeps event types valid as subject tokens.
	eventTypePattern = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	// eventIDPattern keeps event ids valid as a Nats-Msg-Id header value.
	eventIDPattern = regexp.MustCompile(`^[\x21-\x7e]{1,128}$`)
)

// ingest publishes a bundle's events into the stream, each on its
// attempt's subject with Nats-Msg-Id = event_id, so existing HTTP
// producers feed the same stream the services do and a retried bundle
// adds nothing. A bundle without target, bundle_id or events is refused
// (422); otherwise each event is checked on its own, and a bad one, or
// one of a type a stage consumes (ingest only records what happened; it
// never starts or steers work), is skipped and reported.
func (a *API) ingest(w http.ResponseWriter, r *http.Request) {
	var b IngestBundle
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxIngestBytes))
	if err := dec.Decode(&b); err != nil {
		if isTooLarge(err) {
			writeDetail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("bundle larger than %d bytes", maxIngestBytes))
			return
		}
		writeDetail(w, http.StatusUnprocessableEntity, "body is not an event bundle: "+jsonReason(err))
		return
	}
	envs, skipped, err := b.envelopes()
	if err != nil {
		writeDetail(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	futures := make([]jetstream.PubAckFuture, 0, len(envs))
	for _, env := range envs {
		data, _ := env.Marshal() // the payload was checked to be an object
		subject := env.Subject()
		if env.AttemptID == "" {
			// A record event (no attempt): its own subject, which no
			// stage consumes.
			subject = events.RecordSubject(env.EventType)
		}
		msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
		f, err := a.res.JS.PublishMsgAsync(msg, jetstream.WithMsgID(env.EventID))
		if err != nil {
			a.unavailable(w, err)
			return
		}
		futures = append(futures, f)
	}
	resp := IngestResponse{Ingested: len(envs), BundleID: b.BundleID, Status: "ok", ArtifactsIgnored: len(b.Artifacts), Skipped: skipped}
	if len(skipped) > 0 {
		a.logger.Info("ingest: events skipped", "bundle", b.BundleID, "skipped", len(skipped), "first", skipped[0].Reason)
	}
	if len(b.Artifacts) > 0 {
		a.logger.Info("ingest: artifacts not stored (the graph's come from the events)", "bundle", b.BundleID, "artifacts", len(b.Artifacts))
	}
	var last uint64
	timeout := time.After(10 * time.Second)
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			last = max(last, ack.Sequence)
			if ack.Duplicate {
				resp.Duplicates++
			}
		case err := <-f.Err():
			a.unavailable(w, err)
			return
		case <-timeout:
			a.unavailable(w, fmt.Errorf("no acknowledgement in 10 s"))
			return
		}
	}
	a.waitApplied(r.Context(), last)
	writeJSON(w, http.StatusOK, resp)
}

func (a *API) unavailable(w http.ResponseWriter, err error) {
	a.logger.Warn("ingest: publish failed", "err", err)
	writeDetail(w, http.StatusServiceUnavailable, "the event stream is not available")
}

// envelopes checks the bundle and turns its good events into envelopes;
// the others are skipped, each with its reason.
func (b *IngestBundle) envelopes() ([]events.Envelope, []SkippedItem, error) {
	switch {
	case b.Target == "":
		return nil, nil, fmt.Errorf("target is required")
	case b.BundleID == "":
		return nil, nil, fmt.Errorf("bundle_id is required")
	case b.Events == nil:
		return nil, nil, fmt.Errorf("events is required")
	case len(b.Events) > maxIngestEvents:
		return nil, nil, fmt.Errorf("events: at most %d in one bundle", maxIngestEvents)
	}
	out := make([]events.Envelope, 0, len(b.Events))
	var skipped []SkippedItem
	for i, raw := range b.Events {
		env, err := b.envelope(raw)
		if err == nil && events.ConsumedByStage(env.EventType) {
			err = fmt.Errorf("event_type: %s is published by the services only (a stage acts on it); ingest records, it does not start work", env.EventType)
		}
		if err != nil {
			var id struct {
				EventID string `json:"event_id"`
			}
			_ = json.Unmarshal(raw, &id)
			if !eventIDPattern.MatchString(id.EventID) {
				id.EventID = ""
			}
			skipped = append(skipped, SkippedItem{Index: i, EventID: id.EventID, Reason: fmt.Sprintf("events[%d].%v", i, err)})
			continue
		}
		out = append(out, env)
	}
	return out, skipped, nil
}

func (b *IngestBundle) envelope(raw json.RawMessage) (events.Envelope, error) {
	var e IngestEvent
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&e); err != nil {
		return events.Envelope{}, fmt.Errorf("body: not an event: %s", jsonReason(err))
	}
	if len(e.Payload) == 0 || string(e.Payload) == "null" {
		e.Payload = json.RawMessage("{}")
	}
	var p struct {
		AttemptID string `json:"attempt_id"`
		TargetID  string `json:"target_id"`
	}
	if e.Payload[0] != '{' || json.Unmarshal(e.Payload, &p) != nil {
		return events.Envelope{}, fmt.Errorf("payload: must be an object")
	}
	switch {
	case !eventIDPattern.MatchString(e.EventID):
		return events.Envelope{}, fmt.Errorf("event_id: required, 1 to 128 printable characters without spaces")
	case len(e.EventType) > 128 || !eventTypePattern.MatchString(e.EventType):
		return events.Envelope{}, fmt.Errorf("event_type: required, dot-separated words of letters, digits, '_' and '-'")
	}
	ts, err := graph.ParseTimestamp(e.Timestamp)
	if err != nil {
		return events.Envelope{}, fmt.Errorf("timestamp: %v", err)
	}
	attempt := firstNonEmpty(e.AttemptID, p.AttemptID)
	if attempt != "" && !events.ValidExternalAttemptID(attempt) {
		return events.Envelope{}, fmt.Errorf("attempt_id: 1 to 128 letters, digits and _ . : @ + = -")
	}
	if attempt == "" && strings.HasPrefix(e.EventType, "attempt.") {
		return events.Envelope{}, fmt.Errorf("attempt_id: required for %s (in the event or its payload)", e.EventType)
	}
	return events.Envelope{
		EventID: e.EventID, EventType: events.Type(e.EventType), Timestamp: ts,
		ActorID: e.ActorID, AttemptID: attempt, TargetID: firstNonEmpty(e.TargetID, p.TargetID, b.Target),
		Payload: e.Payload,
	}, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func jsonReason(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
