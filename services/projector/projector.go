// Package projector consumes the event stream into the graph and serves the
// control plane over it: the API of DESIGN.md §8 and a web page.
package projector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// Names of the projector's own NATS resources.
const (
	// SnapshotBucket is the Object Store holding the graph snapshot
	// (created by the set-up step).
	SnapshotBucket = stage.ProjectorBucket
	// SnapshotObject is the snapshot's name in the bucket.
	SnapshotObject = "graph"
)

// Config configures a Projector. The zero value works.
type Config struct {
	Logger *slog.Logger
	// Registerer receives the projector's metrics; none when nil.
	Registerer prometheus.Registerer
	// SnapshotEvery and SnapshotInterval say when to store a snapshot:
	// after that many new events (once caught up) or that much time,
	// whichever comes first, and always on shutdown (defaults 50,000 and
	// 30 s).
	SnapshotEvery    uint64
	SnapshotInterval time.Duration
	// NoSnapshots neither loads nor stores snapshots: every start replays
	// the stream (benchmarks of the replay use it).
	NoSnapshots bool
	// Actor is the actor_id of the events the API publishes
	// (attempt.invalidated); default "user:control-plane".
	Actor string
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 50_000
	}
	if c.SnapshotInterval <= 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.Actor == "" {
		c.Actor = "user:control-plane"
	}
}

// Projector keeps a Graph up to date with the stream.
//
// It reads the stream with an ordered consumer rather than a durable one:
// the graph lives in memory, so each start (and each replica) must see
// every event after its snapshot to rebuild it, and an ordered consumer
// needs no acks or server-side state for that. On start it loads the
// snapshot from the Object Store and resumes after the snapshot's
// sequence; without one (or with one of another format version, or of a
// stream since made again) it replays the stream from the start. Up to the
// stream's last sequence at start, it catches up with batched direct gets
// when the stream allows them (catchup.go), and tails the stream with the
// ordered consumer from there.
type Projector struct {
	res     *stage.Resources
	cfg     Config
	logger  *slog.Logger
	graph   atomic.Pointer[graph.Graph]
	metrics *metrics

	target   atomic.Uint64 // last stream sequence when the projector started
	ready    atomic.Bool
	lastSnap atomic.Uint64 // sequence of the last snapshot stored or loaded
	snapNow  chan struct{}
	replay   replayTuning // the catch-up with direct gets (catchup.go)
}

// New returns a projector over an empty graph.
func New(res *stage.Resources, cfg Config) *Projector {
	cfg.setDefaults()
	p := &Projector{res: res, cfg: cfg, logger: cfg.Logger, snapNow: make(chan struct{}, 1), replay: defaultReplay}
	p.graph.Store(graph.New())
	p.metrics = newMetrics(cfg.Registerer, p)
	return p
}

// Graph is the projected graph.
func (p *Projector) Graph() *graph.Graph { return p.graph.Load() }

// Ready reports whether the projector has applied every event that was in
// the stream when it started: before that, a summary would be partial.
func (p *Projector) Ready() bool { return p.ready.Load() }

// Applied is the stream sequence of the last message applied.
func (p *Projector) Applied() uint64 { return p.Graph().Seq() }

// WaitApplied waits until the message at seq is applied or ctx ends.
func (p *Projector) WaitApplied(ctx context.Context, seq uint64) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for p.Applied() < seq {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Run consumes events until ctx is done, then stores a last snapshot.
// It returns an error only when it cannot start.
func (p *Projector) Run(ctx context.Context) error {
	err := p.run(ctx)
	if err != nil && ctx.Err() != nil {
		return nil // stopped while starting
	}
	return err
}

func (p *Projector) run(ctx context.Context) error {
	var info *jetstream.StreamInfo
	err := stage.RetryTransient(ctx, p.logger, "projector: stream info", func() (err error) {
		info, err = p.res.Stream.Info(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("projector: stream info: %w", err)
	}
	created := info.Created.UnixNano()
	p.target.Store(info.State.LastSeq)

	var obs jetstream.ObjectStore
	if !p.cfg.NoSnapshots {
		err = stage.RetryTransient(ctx, p.logger, "projector: object store", func() (err error) {
			obs, err = p.res.JS.ObjectStore(ctx, SnapshotBucket)
			return err
		})
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			err = stage.ErrNotSetUp
		}
		if err != nil {
			return fmt.Errorf("projector: object store %s: %w", SnapshotBucket, err)
		}
		p.loadSnapshot(ctx, obs, created, info.State.LastSeq)
	}
	start := p.Applied() + 1
	if start > info.State.LastSeq {
		p.ready.Store(true)
	}

	p.Graph().Reserve(int(info.State.Msgs))
	stopSnapshots := func() {}
	if obs != nil {
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.snapshotLoop(sctx, obs, created)
		}()
		stopSnapshots = func() {
			cancel()
			<-done
		}
	}
	if start <= info.State.LastSeq && p.canCatchUp(info) {
		start = p.catchUp(ctx, info.Config.Name, start, info.State.LastSeq)
	}
	if ctx.Err() == nil {
		err = p.tail(ctx, start)
	}
	stopSnapshots()
	if err != nil {
		return err
	}
	if obs != nil && p.Applied() > p.lastSnap.Load() {
		// The run's context is over; the last snapshot gets its own time.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		p.saveSnapshot(sctx, obs, created)
	}
	return nil
}

// tail applies the stream from sequence start with an ordered consumer
// until ctx is done.
func (p *Projector) tail(ctx context.Context, start uint64) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: events.AllStreamSubjects}
	if start > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	// After a catch-up, NATS may be electing a leader (a node restarted):
	// wait for it, as for NATS itself, instead of exiting.
	var cons jetstream.Consumer
	err := stage.RetryTransient(ctx, p.logger, "projector: consumer", func() (err error) {
		cons, err = p.res.Stream.OrderedConsumer(ctx, cfg)
		return err
	})
	if err != nil {
		return fmt.Errorf("projector: consumer: %w", err)
	}
	q := newQueue(8192)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.applyLoop(q)
	}()
	defer func() {
		q.close()
		wg.Wait()
	}()
	cc, err := cons.Consume(p.receive(q), jetstream.PullMaxMessages(pullBatch),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if ctx.Err() == nil {
				p.logger.Warn("projector: consume", "err", err)
			}
		}))
	if err != nil {
		return fmt.Errorf("projector: consume: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	q.close() // a receive blocked on a full queue returns
	<-cc.Closed()
	wg.Wait()
	return nil
}

// The consumer is a two-stage pipeline, so that reading and decoding run
// on one core while applying runs on another: receive runs on the
// subscription's goroutine (metadata, decode) and queues records;
// applyLoop applies them in order, in chunks under one lock.

// receive returns the consumer's callback: it decodes each message and
// queues it, waiting while the queue is full.
func (p *Projector) receive(q *queue) func(jetstream.Msg) {
	return func(msg jetstream.Msg) {
		md, err := msg.Metadata()
		if err != nil {
			return
		}
		it := graph.Item{Pending: md.NumPending}
		it.Decode(md.Sequence.Stream, msg.Subject(), msg.Data(), md.Timestamp)
		q.push(&it)
	}
}

// pullBatch is how many messages the consumer asks for at a time: large,
// because a replay is bound by round trips to the server (measured with
// projbench: 1,000 → 10,000 gave about 10% more).
const pullBatch = 5000

// applyChunk bounds how long readers wait for the graph's lock.
const applyChunk = 256

// applyLoop applies queued records in order until the queue is closed.
func (p *Projector) applyLoop(q *queue) {
	var spare []graph.Item
	for {
		batch := q.take(spare)
		if batch == nil {
			return
		}
		for i := 0; i < len(batch); i += applyChunk {
			p.applyItems(batch[i:min(i+applyChunk, len(batch))])
		}
		clear(batch) // drop the references to message data
		spare = batch[:0]
	}
}

func (p *Projector) applyItems(items []graph.Item) {
	g := p.Graph()
	var onStage graph.StageFunc
	if p.ready.Load() {
		onStage = p.metrics.stageEnded
	}
	applied, dups := g.ApplyItems(items, onStage)
	p.metrics.applied.Add(float64(applied))
	p.metrics.duplicates.Add(float64(dups))
	for i := range items {
		if it := &items[i]; it.Err() != nil {
			p.metrics.undecodable.Inc()
			p.logger.Warn("projector: skipping an event it cannot project", "subject", it.Subject(), "seq", it.Seq(), "err", it.Err())
		}
	}
	last := &items[len(items)-1]
	seq := last.Seq()
	p.metrics.lag.Set(float64(last.Pending))
	p.metrics.seq.Set(float64(seq))
	if !p.ready.Load() && (seq >= p.target.Load() || last.Pending == 0) {
		p.markReady(seq)
	}
	if p.ready.Load() && seq-p.lastSnap.Load() >= p.cfg.SnapshotEvery {
		select {
		case p.snapNow <- struct{}{}:
		default:
		}
	}
}

// markReady notes that the projector has caught up (through seq).
func (p *Projector) markReady(seq uint64) {
	if !p.ready.Swap(true) {
		p.logger.Info("projector: caught up", "seq", seq)
	}
}

// queue hands items from receive to applyLoop. push waits while it holds
// max items, so a replay never buffers more than that.
type queue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []graph.Item
	max    int
	closed bool
	wake   chan struct{}
}

func newQueue(max int) *queue {
	q := &queue{max: max, items: make([]graph.Item, 0, max), wake: make(chan struct{}, 1)}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue) push(it *graph.Item) {
	q.mu.Lock()
	for len(q.items) >= q.max && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.items = append(q.items, *it)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take waits for items and returns them appended to buf (whose array it
// keeps for the next push); nil once the queue is closed.
func (q *queue) take(buf []graph.Item) []graph.Item {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return nil
		}
		if len(q.items) > 0 {
			out := q.items
			q.items = buf
			q.cond.Broadcast()
			q.mu.Unlock()
			return out
		}
		q.mu.Unlock()
		<-q.wake
	}
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// loadSnapshot replaces the graph with the stored snapshot when it fits
// this stream; otherwise the graph stays empty and the stream is replayed.
func (p *Projector) loadSnapshot(ctx context.Context, obs jetstream.ObjectStore, created int64, lastSeq uint64) {
	start := time.Now()
	data, err := obs.GetBytes(ctx, SnapshotObject)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		p.logger.Info("projector: no snapshot; replaying the stream")
		return
	}
	if err != nil {
		p.logger.Warn("projector: cannot read the snapshot; replaying the stream", "err", err)
		return
	}
	g, meta, err := graph.UnmarshalSnapshot(data)
	switch {
	case err != nil:
		p.logger.Warn("projector: unusable snapshot; replaying the stream", "err", err)
		return
	case meta.StreamCreated != created || meta.Seq > lastSeq:
		p.logger.Warn("projector: snapshot of another stream; replaying the stream",
			"snapshot_seq", meta.Seq, "stream_last_seq", lastSeq)
		return
	}
	p.graph.Store(g)
	p.lastSnap.Store(meta.Seq)
	p.logger.Info("projector: resumed from snapshot", "seq", meta.Seq, "bytes", len(data), "took", time.Since(start).Round(time.Millisecond))
}

func (p *Projector) snapshotLoop(ctx context.Context, obs jetstream.ObjectStore, created int64) {
	t := time.NewTicker(p.cfg.SnapshotInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.snapNow:
		}
		if p.Applied() > p.lastSnap.Load() {
			p.saveSnapshot(ctx, obs, created)
		}
	}
}

// saveSnapshot stores the graph. Replicas of the projector all write the
// same object: each snapshot is a function of a prefix of the stream, so
// whichever is stored last is a correct place to resume from.
func (p *Projector) saveSnapshot(ctx context.Context, obs jetstream.ObjectStore, created int64) {
	start := time.Now()
	data, meta := p.Graph().MarshalSnapshot(created)
	_, err := obs.Put(ctx, jetstream.ObjectMeta{
		Name:        SnapshotObject,
		Description: "projector graph snapshot",
		Metadata: map[string]string{
			"format_version": strconv.Itoa(graph.SnapshotVersion),
			"stream_seq":     strconv.FormatUint(meta.Seq, 10),
		},
	}, bytes.NewReader(data))
	if err != nil {
		p.metrics.snapshots.WithLabelValues("error").Inc()
		p.logger.Warn("projector: storing the snapshot failed", "seq", meta.Seq, "err", err)
		return
	}
	p.lastSnap.Store(meta.Seq)
	p.metrics.snapshots.WithLabelValues("ok").Inc()
	p.metrics.snapshotBytes.Set(float64(len(data)))
	p.logger.Debug("projector: snapshot stored", "seq", meta.Seq, "bytes", len(data), "took", time.Since(start).Round(time.Millisecond))
}

// Replay projects the stream into a new graph, as a projector started
// without a snapshot does, up to the stream's last sequence when it
// starts, and returns that graph. start, when not nil, is the chain hash
// the first event links to: for a stream whose first messages have aged
// out, the hash recorded before them. `leviathan verify` compares the
// replay's chain with the running projector's.
func Replay(ctx context.Context, res *stage.Resources, start *graph.Hash, logger *slog.Logger) (*graph.Graph, error) {
	p := New(res, Config{NoSnapshots: true, Logger: logger})
	if start != nil {
		p.Graph().StartChain(*start)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !p.Ready() {
		select {
		case err := <-done:
			if err == nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("replay: %w", err)
		case <-t.C:
		}
	}
	cancel()
	<-done
	return p.Graph(), nil
}
