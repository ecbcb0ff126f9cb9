// Package projector consumes the event stream into the graph and serves the
// control plane API over it.
package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/internal/stage"
)

// Projector keeps a Graph up to date with the stream.
//
// It reads the stream with an ordered consumer from the first event
// rather than a durable consumer: the graph lives in memory, so each
// start (and each replica) must see every event to rebuild it, and an
// ordered consumer needs no acks or server-side state for that.
type Projector struct {
	res    *stage.Resources
	graph  *Graph
	logger *slog.Logger

	applied atomic.Uint64 // stream sequence of the last event applied
	target  atomic.Uint64 // last stream sequence when the projector started
	ready   atomic.Bool
}

// New returns a projector over an empty graph.
func New(res *stage.Resources, logger *slog.Logger) *Projector {
	if logger == nil {
		logger = slog.Default()
	}
	return &Projector{res: res, graph: NewGraph(), logger: logger}
}

// Graph is the projected graph.
func (p *Projector) Graph() *Graph { return p.graph }

// Ready reports whether the projector has applied every event that was in
// the stream when it started: before that, a summary would be partial.
func (p *Projector) Ready() bool { return p.ready.Load() }

// Applied is the stream sequence of the last applied event.
func (p *Projector) Applied() uint64 { return p.applied.Load() }

// Run consumes events until ctx is done.
func (p *Projector) Run(ctx context.Context) error {
	info, err := p.res.Stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("projector: stream info: %w", err)
	}
	p.target.Store(info.State.LastSeq)
	if info.State.LastSeq == 0 {
		p.ready.Store(true)
	}
	cons, err := p.res.Stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.StreamSubjects},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("projector: consumer: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("projector: messages: %w", err)
	}
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			p.logger.Warn("projector: next", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		p.apply(msg)
	}
}

func (p *Projector) apply(msg jetstream.Msg) {
	md, err := msg.Metadata()
	if err != nil {
		return
	}
	env, err := events.Decode(msg.Data())
	if err != nil {
		// A bare request body: give it an envelope from its subject so it
		// is projected like any other request.
		env, err = bareRequest(msg, md)
	}
	if err == nil {
		p.graph.Apply(env)
	} else {
		p.logger.Warn("projector: skipping undecodable event", "subject", msg.Subject(), "seq", md.Sequence.Stream)
	}
	p.applied.Store(md.Sequence.Stream)
	if md.Sequence.Stream >= p.target.Load() {
		p.ready.Store(true)
	}
}

func bareRequest(msg jetstream.Msg, md *jetstream.MsgMetadata) (events.Envelope, error) {
	attempt, typ, err := events.ParseSubject(msg.Subject())
	if err != nil || typ != events.AttemptRequested {
		return events.Envelope{}, errors.New("not an event")
	}
	var body struct {
		events.Ref
		Target events.Target `json:"target"`
	}
	_ = json.Unmarshal(msg.Data(), &body)
	return events.Envelope{
		// Two bare copies of one request are two messages: key them by
		// stream sequence so both show in recent events.
		EventID:   "seq-" + strconv.FormatUint(md.Sequence.Stream, 10),
		EventType: typ, Timestamp: md.Timestamp.UTC(), ActorID: "user:nats",
		AttemptID: attempt, TargetID: firstNonEmpty(body.TargetID, body.Target.Name), Payload: msg.Data(),
	}, nil
}
