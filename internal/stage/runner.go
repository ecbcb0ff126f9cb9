package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
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

// pushed is the branch and commit an attempt has pushed when the input is
// branch.pushed: a failure from here on leaves the branch behind.
func (in *Input) pushed() (branch, commit string) {
	if in.Event.EventType != events.BranchPushed {
		return "", ""
	}
	var p events.Pushed
	if in.Event.DecodePayload(&p) != nil {
		return "", ""
	}
	return p.BranchName, p.CommitSHA
}

// Publish publishes an event of the input's attempt.
func (in *Input) Publish(ctx context.Context, t events.Type, payload any) error {
	_, err := in.pub.Publish(ctx, t, in.Ref, payload)
	return err
}

// PublishAsync sends an event of the input's attempt without waiting for
// the stream's acknowledgement (Publisher.PublishAsync): wait does.
func (in *Input) PublishAsync(t events.Type, payload any) (wait func(context.Context) error, err error) {
	return in.pub.PublishAsync(t, in.Ref, payload)
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
	// heartbeat before it is redelivered (default 10 s: a crashed worker's
	// message goes to another within seconds).
	AckWait time.Duration
	// RetryDelays are the delays before redelivering after a transient
	// error, indexed by delivery count (default 1 s, 5 s, 15 s, 30 s).
	RetryDelays []time.Duration
	// Logger receives one line per failure; slog.Default when nil.
	Logger *slog.Logger
	// Metrics records each delivery's outcome and handling time; nothing
	// is recorded when nil.
	Metrics *Metrics
	// Deadline bounds one run of the handler (default 2 min): expiry is a
	// transient failure, and timeout on the last delivery. Waits (Wait)
	// are not counted in it.
	Deadline time.Duration
	// MaxWait bounds the waits of one delivery (default 65 min, so that
	// GitHub's hourly rate-limit window fits); beyond it the message is
	// handed back with a delay, spending a delivery.
	MaxWait time.Duration
	// Grace is how long a handler may go on finishing its message after
	// the runner is stopped (default 20 s), so a rolling deploy spends no
	// delivery; past it the handler is cancelled.
	Grace time.Duration
	// Workers is how many messages one process handles at once (default
	// DefaultWorkers). A stage spends most of an attempt waiting for the
	// forge, git or NATS; with one at a time, its throughput is one
	// attempt per wait.
	Workers int
	// BeforeHandle is a fault-injection point for tests, called on every
	// delivery before the handler. When it returns an error the runner
	// abandons the delivery without an answer, as a process that crashed
	// on it would; it panics for a handler that panics.
	BeforeHandle func(*Input) error
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
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.AckWait <= 0 {
		c.AckWait = 10 * time.Second
	}
	if c.Deadline <= 0 {
		c.Deadline = 2 * time.Minute
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 65 * time.Minute
	}
	if c.Grace <= 0 {
		c.Grace = 20 * time.Second
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

	processed, failed, inFlight, waiting atomic.Int64
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
	// The consumer's own limits are the ones the server applies: heartbeat
	// within its AckWait, count deliveries against its MaxDeliver.
	if ci := cons.CachedInfo(); ci != nil {
		if ci.Config.AckWait > 0 {
			cfg.AckWait = ci.Config.AckWait
		}
		if ci.Config.MaxDeliver > 0 {
			cfg.MaxDeliver = ci.Config.MaxDeliver
		}
		if n, err := strconv.Atoi(ci.Config.Metadata[maxTriesKey]); err == nil && n > 0 {
			cfg.MaxDeliver = min(n, cfg.MaxDeliver)
		}
	}
	return &Runner{cfg: cfg, res: res, pub: pub, h: h, cons: cons}, nil
}

// The consumer delivers a message ExtraDeliveries times more than the
// attempt's budget of tries (Config.MaxDeliver, kept in its metadata under
// maxTriesKey): a delivery past the budget means that every allowed one
// went unanswered (a crash loop, a kill, an OOM), and whichever replica
// receives it ends the attempt at once, without running the handler. Being
// a delivery, it reaches a replica that starts after the others died,
// where the max-deliveries advisory, a core NATS message, would have
// reached nobody; the advisory stays as the last resort.
const (
	ExtraDeliveries = 2
	maxTriesKey     = "leviathan_max_tries"
)

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
		MaxDeliver:    cfg.MaxDeliver + ExtraDeliveries,
		AckWait:       cfg.AckWait,
		MaxAckPending: 1000,
		Replicas:      replicas,
		Metadata:      map[string]string{maxTriesKey: strconv.Itoa(cfg.MaxDeliver)},
	})
}

// Stats returns the runner's counters.
func (r *Runner) Stats() Stats {
	return Stats{Processed: r.processed.Load(), Failed: r.failed.Load(), InFlight: r.inFlight.Load()}
}

// MaxDeliveriesSubject is where JetStream tells that a message of the
// stage's consumer ran out of deliveries without an answer.
func MaxDeliveriesSubject(stage string) string {
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + StreamName + "." + stage
}

// watchMaxDeliveries ends the attempts whose message ran out of
// deliveries without reaching an answer (a process that crashed on it
// every time, or never answered): JetStream drops such a message silently,
// and the attempt would stay running for ever. One replica of the stage
// (a queue group) answers each advisory with attempt.failed.
func (r *Runner) watchMaxDeliveries(ctx context.Context) (stop func(), err error) {
	nc := r.res.JS.Conn()
	sub, err := nc.QueueSubscribe(MaxDeliveriesSubject(r.cfg.Name), "leviathan-"+r.cfg.Name, func(m *nats.Msg) {
		defer Recover(r.cfg.Logger, "max-deliveries advisory")
		var adv struct {
			StreamSeq  uint64 `json:"stream_seq"`
			Deliveries int    `json:"deliveries"`
		}
		if err := json.Unmarshal(m.Data, &adv); err != nil || adv.StreamSeq == 0 {
			return
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		r.endExhausted(actx, adv.StreamSeq, adv.Deliveries)
	})
	if err != nil {
		return nil, fmt.Errorf("stage %s: subscribe to max-deliveries advisories: %w", r.cfg.Name, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// endExhausted publishes attempt.failed for the message at seq, unless its
// attempt has ended already.
func (r *Runner) endExhausted(ctx context.Context, seq uint64, deliveries int) {
	raw, err := r.res.Stream.GetMsg(ctx, seq)
	if err != nil {
		r.cfg.Logger.Warn("max deliveries: message gone", "stage", r.cfg.Name, "seq", seq, "err", err)
		return
	}
	in, err := r.inputOf(raw.Subject, raw.Data, seq, deliveries)
	if err != nil {
		return
	}
	_ = r.endUnanswered(ctx, in, deliveries)
}

// endUnanswered publishes attempt.failed (retries_exhausted) for an
// attempt whose message ran out of its deliveries without an answer,
// unless the attempt has ended already.
func (r *Runner) endUnanswered(ctx context.Context, in *Input, deliveries int) error {
	if r.ended(ctx, in.Ref.AttemptID, events.AttemptSucceeded, events.AttemptFailed, events.AttemptRejected) {
		return nil // it ended after all
	}
	if req, err := r.res.Request(ctx, in.Ref.AttemptID); err == nil {
		in.Ref = req.Ref
	}
	failed := events.Failed{
		Ref: in.Ref, Status: "failed", Stage: r.cfg.Name, FailureType: events.RetriesExhausted, Deliveries: deliveries,
		ErrorSummary: fmt.Sprintf("the %s stage ran out of its %d deliveries without finishing one (it crashed or never answered)", r.cfg.Name, deliveries),
	}
	failed.BranchName, failed.CommitSHA = in.pushed()
	if err := in.Publish(ctx, events.AttemptFailed, failed); err != nil {
		r.cfg.Logger.Warn("out of deliveries: publishing attempt.failed failed", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "err", err)
		return err
	}
	r.failed.Add(1)
	r.cfg.Logger.Warn("attempt failed: out of deliveries", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "deliveries", deliveries)
	return nil
}

// ended reports whether the stream holds an event of one of types for
// the attempt.
func (r *Runner) ended(ctx context.Context, attemptID string, types ...events.Type) bool {
	for _, t := range types {
		if _, err := r.res.Stream.GetLastMsgForSubject(ctx, events.Subject(attemptID, t)); err == nil {
			return true
		}
	}
	return false
}

// DefaultWorkers is the messages one process of a stage handles at once
// unless its Config says otherwise.
const DefaultWorkers = 4

// Run processes messages, Workers at a time, until ctx is done; it returns
// when every handler has finished.
func (r *Runner) Run(ctx context.Context) error {
	stop, err := r.watchMaxDeliveries(ctx)
	if err != nil {
		return err
	}
	defer stop()
	var wg sync.WaitGroup
	for range r.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(ctx)
		}()
	}
	wg.Wait()
	return nil
}

// work fetches and processes one message at a time until ctx is done.
func (r *Runner) work(ctx context.Context) {
	for ctx.Err() == nil {
		fetchCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		msg, err := r.cons.Next(jetstream.FetchContext(fetchCtx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
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
	if in.Deliveries > r.cfg.MaxDeliver {
		outcome = OutcomeFailed
		if err := r.endUnanswered(ctx, in, r.cfg.MaxDeliver); err != nil {
			_ = msg.NakWithDelay(time.Second)
			return
		}
		_ = msg.Term()
		return
	}

	// The handler finishes its message even when the runner is stopped,
	// within the grace period, so a rolling deploy spends no delivery.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	stopWatch := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(r.cfg.Grace, hcancel)
		context.AfterFunc(hctx, func() { t.Stop() })
	})
	defer stopWatch()
	herr := r.handleWaiting(hctx, msg, in)
	var ab *abandoned
	if errors.As(herr, &ab) {
		r.cfg.Logger.Warn("abandoning delivery (fault injection)", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "err", ab.err)
		return
	}
	if herr == nil {
		if r.cfg.BeforeAck != nil {
			if err := r.cfg.BeforeAck(in); err != nil {
				r.cfg.Logger.Warn("abandoning delivery (fault injection)", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "err", err)
				return
			}
		}
		outcome = OutcomeSucceeded
		r.processed.Add(1)
		if err := msg.DoubleAck(hctx); err != nil {
			// The work is published; a redelivery republishes duplicates
			// that JetStream drops.
			r.cfg.Logger.Warn("ack failed", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "err", err)
		}
		return
	}
	if hctx.Err() != nil {
		// Stopped, and the grace period is over: leave the message to be
		// redelivered.
		_ = msg.Nak()
		return
	}
	ctx = hctx
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
	if se.Retry && ft != events.Timeout {
		ft = events.RetriesExhausted
	}
	failed := events.Failed{
		Ref: in.Ref, Status: "failed", Stage: r.cfg.Name, FailureType: ft,
		ErrorSummary: summary(se.Err), Deliveries: in.Deliveries,
	}
	failed.BranchName, failed.CommitSHA = in.pushed()
	if r.ended(ctx, in.Ref.AttemptID, events.AttemptSucceeded, events.AttemptRejected) {
		// It ended already (this delivery's handler published its end and
		// then failed at something after it): one end per attempt.
		r.cfg.Logger.Warn("failure after the attempt ended", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "err", se.Err)
		outcome = OutcomeFailed
		_ = msg.Term()
		return
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

// handleWaiting runs the handler, and again after each wait it asks for
// (Wait), on this one delivery, while a heartbeat keeps it alive.
func (r *Runner) handleWaiting(ctx context.Context, msg jetstream.Msg, in *Input) error {
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
	started := time.Now()
	for {
		err := r.handle(ctx, in)
		var se *Error
		if !errors.As(err, &se) || !se.Wait {
			return err
		}
		d := max(se.After, 100*time.Millisecond)
		// The whole time this delivery has been held counts, the handler's
		// own waits (a lock's) included.
		if time.Since(started)+d > r.cfg.MaxWait {
			// Too long to hold the message: hand it back, with the wait.
			return RetryAfter(d, se.Err)
		}
		r.cfg.Logger.Info("waiting", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "for", d, "reason", se.Err)
		r.waiting.Add(1)
		ok := sleep(ctx, d)
		r.waiting.Add(-1)
		if !ok {
			return ctx.Err()
		}
	}
}

// abandoned is BeforeHandle's "crash": the delivery gets no answer.
type abandoned struct{ err error }

func (a *abandoned) Error() string { return "abandoned: " + a.err.Error() }

// handle runs the handler once under the stage's deadline, with a panic
// turned into a permanent failure (logged with its stack).
func (r *Runner) handle(ctx context.Context, in *Input) (err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Deadline)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			r.cfg.Logger.Error("handler panicked", "stage", r.cfg.Name, "attempt", in.Ref.AttemptID, "panic", v, "stack", string(debug.Stack()))
			err = Fail(events.ExecutionError, fmt.Errorf("the %s stage panicked: %v", r.cfg.Name, v))
		}
	}()
	if r.cfg.BeforeHandle != nil {
		if err := r.cfg.BeforeHandle(in); err != nil {
			return &abandoned{err}
		}
	}
	err = r.h.Handle(ctx, in)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && context.Cause(ctx) == context.DeadlineExceeded {
		var se *Error
		if !errors.As(err, &se) || se.Retry {
			return &Error{Type: events.Timeout, Retry: true, Err: fmt.Errorf("the %s stage did not finish within %v: %w", r.cfg.Name, r.cfg.Deadline, err)}
		}
	}
	return err
}

func (r *Runner) input(msg jetstream.Msg) (*Input, error) {
	md, err := msg.Metadata()
	if err != nil {
		return nil, err
	}
	return r.inputOf(msg.Subject(), msg.Data(), md.Sequence.Stream, int(md.NumDelivered))
}

// inputOf is the Input of a stream message.
func (r *Runner) inputOf(subject string, data []byte, seq uint64, deliveries int) (*Input, error) {
	attemptID, _, err := events.ParseSubject(subject)
	if err != nil {
		return nil, err
	}
	in := &Input{Subject: subject, Data: data, Seq: seq, Deliveries: deliveries, pub: r.pub}
	body := data
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
