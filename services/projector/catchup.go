package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// Catching up.
//
// A start has to apply every message between its snapshot (or the start of
// the stream) and the stream's last sequence before it is ready. The
// ordered consumer alone did that at about 170k messages a second on the
// benchmark's two cores, with the server in the same process: its delivery
// costs the server and the client more than the projector's own decoding
// and applying (an ack subject to build and parse, the stored Nats-Msg-Id
// header to copy and parse into a map, for every message).
//
// So, when the stream allows direct gets, the messages up to that last
// sequence are read with batched direct gets instead ($JS.API.DIRECT.GET
// with batch and no_hdr: bare payloads, one request per range of
// sequences), by a few workers that each fetch and decode a range while
// the applier applies the ranges strictly in sequence order; it keeps
// only a bounded window of ranges fetched ahead. The ordered consumer then
// tails the stream from the first sequence after what was covered, as it
// did before.
//
// A response without headers does not say which sequence each message
// has: it is used only when it is gap-free, that is when the number of
// messages equals the span from the requested sequence to the last
// sequence the end-of-batch status reports. Anything else (deleted
// messages in the range, a message that is not an envelope with its
// attempt id and so needs its subject and time) is read again with
// headers, which carry the subject, sequence and time of each message.
// When a range cannot be covered for sure (an error, a timeout, or a range
// that ends early with nothing after it, which a replica behind the leader
// would answer too), the catch-up applies what it has up to there and
// stops: the ordered consumer goes on from that sequence, so nothing is
// skipped or applied twice.

// Defaults of replayTuning.
const (
	// defaultReplayChunk is how many sequences a range (and a request)
	// spans: about 1 MB of messages.
	defaultReplayChunk = 2048
	// defaultReplayWorkers fetch and decode ranges in parallel.
	defaultReplayWorkers = 2
	// defaultReplayWindow bounds the ranges fetched and not yet applied,
	// and so the memory a catch-up holds.
	defaultReplayWindow = 6
	// replayTimeout is how long a worker waits for the next message of a
	// response before it gives up (and the ordered consumer takes over).
	replayTimeout = 10 * time.Second
)

// replayTuning configures the catch-up with direct gets.
type replayTuning struct {
	off                    bool // the ordered consumer does it all (tests compare the two)
	chunk, workers, window int
	// failAt (tests) makes the range holding this sequence stop short
	// just before it, as a failed read does.
	failAt uint64
}

var defaultReplay = replayTuning{chunk: defaultReplayChunk, workers: defaultReplayWorkers, window: defaultReplayWindow}

// errReplayShort is why a range stopped before its end: the server had no
// message at or after the next sequence (the messages up to the end of
// the range were deleted, or a replica behind the leader answered).
var errReplayShort = errors.New("direct get: no message at or after the sequence")

// span is a range of stream sequences, fetched and decoded by a worker.
type span struct {
	from, to uint64
	target   uint64 // the catch-up's last sequence
	items    []graph.Item
	// covered is the last sequence up to which every message of the stream
	// is in items (from-1 when none is known); it is to when the whole
	// range was read.
	covered uint64
	err     error // why covered < to
	done    chan struct{}
}

// newItem appends an item to s.items for a message to be decoded into,
// in place: an Item is large and full of pointers, and copying one in
// while the collector runs costs a write barrier for each.
func (s *span) newItem() *graph.Item {
	if n := len(s.items); n < cap(s.items) {
		s.items = s.items[:n+1] // Decode and DecodeEnvelope set all of it
	} else {
		s.items = append(s.items, graph.Item{})
	}
	return &s.items[len(s.items)-1]
}

// canCatchUp reports whether the catch-up with direct gets can read the
// stream: it allows direct gets, holds only the subjects the ordered
// consumer reads (direct gets read every message), and the server answers
// batched ones (2.11 and later).
func (p *Projector) canCatchUp(info *jetstream.StreamInfo) bool {
	if p.replay.off || !info.Config.AllowDirect || !slices.Equal(info.Config.Subjects, events.AllStreamSubjects) {
		return false
	}
	return versionAtLeast(p.res.JS.Conn().ConnectedServerVersion(), 2, 11)
}

// catchUp applies the messages of sequences start through target with
// batched direct gets and returns the sequence to go on from: target+1,
// or the first sequence it could not be sure about.
func (p *Projector) catchUp(ctx context.Context, stream string, start, target uint64) uint64 {
	began := time.Now()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nc := p.res.JS.Conn()
	prefix := apiPrefix(p.res.JS.Options())
	tune := p.replay

	todo := make(chan *span, tune.window)
	var wg sync.WaitGroup
	for range tune.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := newFetcher(nc, prefix+"DIRECT.GET."+stream, tune.chunk)
			f.failAt = tune.failAt
			defer f.close()
			for s := range todo {
				f.fill(wctx, s)
				close(s.done)
			}
		}()
	}
	defer func() {
		close(todo)
		cancel()
		wg.Wait()
	}()

	var (
		fifo   []*span
		from   = start
		next   = start // every sequence before next is applied or known absent
		pool   [][]graph.Item
		failed error
	)
	enqueue := func() {
		if from > target {
			return
		}
		s := &span{from: from, to: min(from+uint64(tune.chunk)-1, target), target: target, done: make(chan struct{})}
		if n := len(pool); n > 0 {
			s.items, pool = pool[n-1], pool[:n-1]
		} else {
			s.items = make([]graph.Item, 0, tune.chunk)
		}
		from = s.to + 1
		fifo = append(fifo, s)
		todo <- s
	}
	for range tune.window {
		enqueue()
	}
	for len(fifo) > 0 && failed == nil {
		s := fifo[0]
		fifo = fifo[1:]
		select {
		case <-s.done:
		case <-ctx.Done():
			return next
		}
		for i := 0; i < len(s.items); i += applyChunk {
			p.applyItems(s.items[i:min(i+applyChunk, len(s.items))])
		}
		next = s.covered + 1
		if s.covered < s.to {
			failed = s.err
			if failed == nil {
				failed = errors.New("range not read to its end")
			}
		}
		// Not cleared: the items go straight back to a range being
		// fetched, and decoding into an item sets all of it, which drops
		// the old message's data then. (Clearing them too cost 1% of a
		// replay's CPU: zeroing pointers while the collector runs.)
		pool = append(pool, s.items[:0])
		enqueue()
	}
	if ctx.Err() != nil {
		return next
	}
	if failed != nil && errors.Is(failed, errReplayShort) && p.noneThrough(ctx, prefix, stream, next, target) {
		failed = nil // the messages left up to target were deleted
	}
	if failed != nil {
		p.logger.Info("projector: catch-up with direct gets stopped; the ordered consumer goes on",
			"seq", next, "err", failed)
		return next
	}
	p.logger.Info("projector: caught up with direct gets", "from", start, "to", target,
		"took", time.Since(began).Round(time.Millisecond))
	p.metrics.lag.Set(0) // as of the start; the consumer counts what came since
	p.markReady(target)
	return target + 1
}

// noneThrough asks the stream's leader (not a direct get, which any
// replica may answer) whether the stream holds no message from seq
// through target.
func (p *Projector) noneThrough(ctx context.Context, prefix, stream string, seq, target uint64) bool {
	req := fmt.Appendf(nil, `{"seq":%d,"next_by_subj":">","no_hdr":true}`, seq)
	rctx, cancel := context.WithTimeout(ctx, replayTimeout)
	defer cancel()
	msg, err := p.res.JS.Conn().RequestWithContext(rctx, prefix+"STREAM.MSG.GET."+stream, req)
	if err != nil {
		return false
	}
	var resp struct {
		Message *struct {
			Seq uint64 `json:"seq"`
		} `json:"message"`
		Error *struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(msg.Data, &resp) != nil {
		return false
	}
	switch {
	case resp.Error != nil:
		return resp.Error.Code == 404
	case resp.Message != nil:
		return resp.Message.Seq > target
	}
	return false
}

// fetcher reads ranges with batched direct gets on one inbox.
type fetcher struct {
	nc      *nats.Conn
	subject string
	chunk   int
	sub     *nats.Subscription
	ch      chan *nats.Msg
	timer   *time.Timer
	req     []byte
	broken  bool   // a response was cut short: late messages may follow
	failAt  uint64 // replayTuning.failAt
}

func newFetcher(nc *nats.Conn, subject string, chunk int) *fetcher {
	f := &fetcher{nc: nc, subject: subject, chunk: chunk, timer: time.NewTimer(time.Hour)}
	f.timer.Stop()
	return f
}

func (f *fetcher) close() {
	if f.sub != nil {
		_ = f.sub.Unsubscribe()
	}
}

// fill fetches s (unless ctx is done) and sets every item's pending.
func (f *fetcher) fill(ctx context.Context, s *span) {
	s.covered = s.from - 1
	if s.err = ctx.Err(); s.err == nil {
		s.err = f.fetch(ctx, s)
	}
	if at := f.failAt; s.from <= at && at <= s.covered {
		s.items = slices.DeleteFunc(s.items, func(it graph.Item) bool { return it.Seq() >= at })
		s.covered, s.err = at-1, errors.New("failing as told")
	}
	// Pending, for the lag metric and readiness, is counted up to the
	// sequence that was last when the projector started: 0 only there.
	for i := range s.items {
		s.items[i].Pending = s.target - s.items[i].Seq()
	}
}

// fetch appends the messages of s to s.items, in sequence order, and sets
// s.covered; it returns why it stopped short of s.to.
func (f *fetcher) fetch(ctx context.Context, s *span) error {
	if f.broken {
		return errors.New("inbox unusable after an earlier error")
	}
	if s.to-s.from >= uint64(f.chunk) {
		return errors.New("range longer than a chunk")
	}
	if f.sub == nil {
		// Room for a whole response: a channel subscription drops what does
		// not fit (and request checks that it dropped nothing).
		f.ch = make(chan *nats.Msg, f.chunk+8)
		sub, err := f.nc.ChanSubscribe(f.nc.NewInbox(), f.ch)
		if err != nil {
			return err
		}
		f.sub = sub
	}
	headers := false // once a range needs headers, the rest of it is read with them
	for s.covered < s.to {
		mark := len(s.items)
		n, last, err := f.request(ctx, s, headers)
		if err != nil {
			s.items = s.items[:mark]
			f.broken = true
			return err
		}
		if !headers {
			// Usable only if gap-free and every message decoded without its
			// subject.
			ok := n > 0 && last-s.covered == uint64(n)
			for i := mark; ok && i < len(s.items); i++ {
				ok = s.items[i].Err() == nil
			}
			if !ok {
				s.items = s.items[:mark]
				headers = true
				continue
			}
			s.covered = last
			continue
		}
		switch {
		case last > s.to:
			// The server skipped to past the range (whose messages past it
			// were dropped): the rest of the range was deleted.
			s.covered = s.to
		case n == 0:
			return errReplayShort
		default:
			s.covered = last
		}
	}
	return nil
}

// request asks for the messages from s.covered+1 to s.to and appends them
// to s.items, decoded; without headers, the ones that do not decode as
// envelopes with their attempt id are appended with err set. It returns
// how many messages came and the last sequence the server sent (past s.to
// with headers, when it skipped deleted ones).
func (f *fetcher) request(ctx context.Context, s *span, headers bool) (n int, last uint64, err error) {
	seq := s.covered + 1
	f.req = append(f.req[:0], `{"seq":`...)
	f.req = strconv.AppendUint(f.req, seq, 10)
	f.req = append(f.req, `,"batch":`...)
	f.req = strconv.AppendUint(f.req, s.to-seq+1, 10)
	if !headers {
		f.req = append(f.req, `,"no_hdr":true`...)
	}
	f.req = append(f.req, '}')
	if err := f.nc.PublishRequest(f.subject, f.sub.Subject, f.req); err != nil {
		return 0, 0, err
	}
	expect := seq
	for {
		m, err := f.next(ctx)
		if err != nil {
			return 0, 0, err
		}
		if status := m.Header.Get("Status"); status != "" && m.Header.Get(jetstream.SequenceHeader) == "" {
			switch status {
			case "204": // end of the batch
				if dropped, _ := f.sub.Dropped(); dropped > 0 {
					return 0, 0, fmt.Errorf("direct get: %d messages dropped", dropped)
				}
				last, err := strconv.ParseUint(m.Header.Get(jetstream.LastSequenceHeader), 10, 64)
				if err != nil {
					return 0, 0, fmt.Errorf("direct get: end of batch without its last sequence: %v", m.Header)
				}
				return n, last, nil
			case "404": // no message at or after seq
				if n == 0 {
					return 0, seq - 1, nil
				}
			}
			return 0, 0, fmt.Errorf("direct get: status %s %s", status, m.Header.Get("Description"))
		}
		n++
		if !headers {
			if m.Header != nil {
				return 0, 0, errors.New("direct get: headers in a response asked without them")
			}
			s.newItem().DecodeEnvelope(expect, m.Data)
			expect++
			continue
		}
		seqOf, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil || seqOf < expect {
			return 0, 0, fmt.Errorf("direct get: bad or out-of-order sequence %q", m.Header.Get(jetstream.SequenceHeader))
		}
		expect = seqOf + 1
		if seqOf > s.to {
			continue
		}
		subject := m.Header.Get(jetstream.SubjectHeader)
		at, _ := time.Parse(time.RFC3339Nano, m.Header.Get(jetstream.TimeStampHeaer))
		s.newItem().Decode(seqOf, subject, m.Data, at)
	}
}

// next waits for the next message of the inbox.
func (f *fetcher) next(ctx context.Context) (*nats.Msg, error) {
	select {
	case m := <-f.ch:
		return m, nil
	default:
	}
	f.timer.Reset(replayTimeout)
	defer f.timer.Stop()
	select {
	case m := <-f.ch:
		return m, nil
	case <-f.timer.C:
		return nil, errors.New("direct get: no response in time")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// apiPrefix is the JetStream API prefix of js, with its domain if any.
func apiPrefix(o jetstream.JetStreamOptions) string {
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		if !strings.HasSuffix(o.APIPrefix, ".") {
			return o.APIPrefix + "."
		}
		return o.APIPrefix
	}
	return jetstream.DefaultAPIPrefix
}

// versionAtLeast reports whether the server version v (major.minor.patch,
// maybe with a suffix) is at least major.minor.
func versionAtLeast(v string, major, minor int) bool {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}
