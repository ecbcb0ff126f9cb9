package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
)

// Handler does one stage's work for one input event. It publishes the
// events that follow (through Input.Publish) and returns nil; the runner
// then acknowledges the input. A Handler must be idempotent: the same input
// may be delivered again after a crash between publish and ack.
type Handler interface {
	Handle(ctx context.Context, in *Input) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, in *Input) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, in *Input) error { return f(ctx, in) }

// Input is one delivery of an input event.
type Input struct {
	// Subject and Data are the message as received.
	Subject string
	Data    []byte
	// Event is the decoded envelope; zero when the body was not an
	// envelope (a bare attempt request).
	Event events.Envelope
	// Ref names the attempt. The runner fills it from the subject and the
	// payload; a handler that learns more (the request) may update it, and
	// attempt.failed then carries the fuller reference.
	Ref events.Ref
	// Seq is the stream sequence of the message.
	Seq uint64
	// Deliveries counts deliveries of this message, 1 on the first.
	Deliveries int

	pub *Publisher
}

// Publish publishes an event of the input's attempt.
func (in *Input) Publish(ctx context.Context, t events.Type, payload any) error {
	_, err := in.pub.Publish(ctx, t, in.Ref, payload)
	return err
}

// Config configures a Runner. Zero fields get working defaults.
type Config struct {
	// Name is the stage: the durable consumer's name and the stage of
	// attempt.failed.
	Name string
	// Input is the one event type the stage reacts to.
	Input events.Type
	// MaxDeliver bounds deliveries of one message (default 5).
	MaxDeliver int
	// AckWait is how long a delivery may go without an ack or a progress
	// heartbeat before it is redelivered (default 30 s).
	AckWait time.Duration
	// RetryDelays are the delays before redelivering after a transient
	// error, indexed by delivery count (default 1 s, 5 s, 15 s, 30 s).
	RetryDelays []time.Duration
	// Logger receives one line per failure; slog.Default when nil.
	Logger *slog.Logger
	// Metrics records each delivery's outcome and handling time; nothing
	// is recorded when nil.
	Metrics *Metrics
	// BeforeAck is a fault-injection point for tests. When it returns an
	// error the runner abandons the delivery without acknowledging it, as
	// a process that crashed between publishing and acking would; the
	// server redelivers it after AckWait.
	BeforeAck func(*Input) error
}

func (c *Config) setDefaults() {
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 5
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if len(c.RetryDelays) == 0 {
		c.RetryDelays = []time.Duration{time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	switch {
	case c.Name == "":
		return errors.New("stage: Config.Name is required")
	case c.Input == "":
		return errors.New("stage: Config.Input is required")
	}
	return nil
}

// Stats are a stage's counters, reported through nats micro.
type Stats struct {
	Processed int64 `json:"processed"`
	Failed    int64 `json:"failed"`
	InFlight  int64 `json:"in_flight"`
}

// Runner pulls a stage's input events one at a time and applies the
// handler rules of DESIGN.md §3.
type Runner struct {
	cfg  Config
	res  *Resources
	pub  *Publisher
	h    Handler
	cons jetstream.Consumer

	processed, failed, inFlight atomic.Int64
}

// NewRunner creates (or updates) the stage's durable consumer when res
// may manage resources, and otherwise binds to the one SetupConsumer made.
func NewRunner(ctx context.Context, res *Resources, pub *Publisher, cfg Config, h Handler) (*Runner, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	var cons jetstream.Consumer
	var err error
	if res.Manage {
		cons, err = SetupConsumer(ctx, res.JS, cfg, res.Stream.CachedInfo().Config.Replicas)
	} else if cons, err = res.JS.Consumer(ctx, StreamName, cfg.Name); errors.Is(err, jetstream.ErrConsumerNotFound) {
		err = ErrNotSetUp
	}
	if err != nil {
		return nil, fmt.Errorf("stage %s: consumer: %w", cfg.Name, err)
	}
	return &Runner{cfg: cfg, res: res, pub: pub, h: h, cons: cons}, nil
}

// SetupConsumer creates or updates the durable consumer of a stage: part
// of the set-up step.
func SetupConsumer(ctx context.Context, js jetstream.JetStream, cfg Config, replicas int) (jetstream.Consumer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	// No consumer BackOff: with BackOff set, nats-server 2.15 delays a
	// message NAKed with a delay on its second delivery until the backoff
	// step instead of the requested delay (reproduced in a test while
	// writing this). AckWait covers a crashed worker; NakWithDelay gives
	// each transient error the delay the stage chooses.
	return js.CreateOrUpdateConsumer(ctx, StreamName, jetstream.ConsumerConfig{
		Durable:       cfg.Name,
		Description:   "leviathan " + cfg.Name + " stage",
		FilterSubject: events.SubjectFilter(cfg.Input),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxDeliver:    cfg.MaxDeliver,
		AckWait:       cfg.AckWait,
		MaxAckPending: 1000,
		Replicas:      replicas,
	})
}

// Stats returns the runner's counters.
func (r *Runner) Stats() Stats {
	return Stats{Processed: r.processed.Load(), Failed: r.failed.Load(), InFlight: r.inFlight.Load()}
}

// Run processes messages until ctx is done.
func (r *Runner) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		fetchCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		msg, err := r.cons.Next(jetstream.FetchContext(fetchCtx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
				r.cfg.Logger.Warn("fetch failed", "stage", r.cfg.Name, "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		r.process(ctx, msg)
	}
	return nil
}

// process handles one message: handler, then ack, nak or term.
func (r *Runner) process(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	outcome := OutcomeAbandoned
	defer func() { r.cfg.Metrics.observe(r.cfg.Name, outcome, time.Since(start)) }()
	in, err := r.input(msg)
	if err != nil {
		// A message on our subject we cannot even attribute: nothing to
		// report it against, so drop it loudly.
		outcome = OutcomeDropped
		r.cfg.Logger.Error("dropping undecodable message", "stage", r.cfg.Name, "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	r.inFlight.Add(1)
	defer r.inFlight.Add(-1)

	herr := r.handle(ctx, msg, in)
	if herr == nil {
		if r.cfg.BeforeAck != nil {
			if err := r.cfg.BeforeAck(in); err != nil {
				r.cfg.Logger.Warn("abandoning delivery (fault injection)", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "err", err)
				return
			}
		}
		outcome = OutcomeSucceeded
		r.processed.Add(1)
		if err := msg.DoubleAck(ctx); err != nil {
			// The work is published; a redelivery republishes duplicates
			// that JetStream drops.
			r.cfg.Logger.Warn("ack failed", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "err", err)
		}
		return
	}
	if ctx.Err() != nil {
		// Shutting down mid-work: let the message be redelivered.
		_ = msg.Nak()
		return
	}
	se := classify(herr)
	if se.Retry && in.Deliveries < r.cfg.MaxDeliver {
		delay := se.After
		if delay <= 0 {
			delay = r.cfg.RetryDelays[min(in.Deliveries-1, len(r.cfg.RetryDelays)-1)]
		}
		r.cfg.Logger.Info("retrying", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID,
			"delivery", in.Deliveries, "delay", delay, "err", herr)
		outcome = OutcomeRetried
		_ = msg.NakWithDelay(delay)
		return
	}
	// Permanent, or transient on the last allowed delivery.
	ft := se.Type
	if se.Retry {
		ft = events.RetriesExhausted
	}
	failed := events.Failed{
		Ref: in.Ref, Status: "failed", Stage: r.cfg.Name, FailureType: ft,
		ErrorSummary: summary(se.Err), Deliveries: in.Deliveries,
	}
	if err := in.Publish(ctx, events.AttemptFailed, failed); err != nil {
		r.cfg.Logger.Warn("publishing attempt.failed failed; will retry", "stage", r.cfg.Name, "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	outcome = OutcomeFailed
	r.failed.Add(1)
	r.cfg.Logger.Warn("attempt failed", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID,
		"failure_type", ft, "err", se.Err)
	_ = msg.Term()
	return
}

// handle runs the handler while a heartbeat keeps the delivery alive.
func (r *Runner) handle(ctx context.Context, msg jetstream.Msg, in *Input) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(r.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return r.h.Handle(ctx, in)
}

func (r *Runner) input(msg jetstream.Msg) (*Input, error) {
	attemptID, _, err := events.ParseSubject(msg.Subject())
	if err != nil {
		return nil, err
	}
	md, err := msg.Metadata()
	if err != nil {
		return nil, err
	}
	in := &Input{
		Subject: msg.Subject(), Data: msg.Data(), Seq: md.Sequence.Stream,
		Deliveries: int(md.NumDelivered), pub: r.pub,
	}
	body := msg.Data()
	if env, err := events.Decode(body); err == nil {
		in.Event = env
		body = env.Payload
	}
	// Every payload embeds Ref; a bare request body has the same fields.
	_ = json.Unmarshal(body, &in.Ref)
	in.Ref.AttemptID = attemptID
	if in.Ref.TargetID == "" {
		in.Ref.TargetID = in.Event.TargetID
	}
	return in, nil
}

// summary is the error_summary of a failure: the error's text, bounded.
func summary(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 1000 {
		s = s[:1000] + "…"
	}
	return s
}
