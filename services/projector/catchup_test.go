package projector

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// logLines is a slog handler that keeps the messages it is given.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logLines) WithGroup(string) slog.Handler            { return l }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := r.Message
	r.Attrs(func(a slog.Attr) bool {
		line += " " + a.String()
		return true
	})
	l.lines = append(l.lines, line)
	return nil
}

func (l *logLines) has(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(s string) bool { return strings.HasPrefix(s, prefix) })
}

// messyStream fills the stream with what a real one holds besides plain
// envelopes: duplicates stored again, a bare request and an envelope
// without its attempt id (both need their subject), a message that is no
// event, Python worker events (ids that are UUIDs of another form), and
// deleted messages (as clone erases requests holding a credential): the
// first, single ones, a run across several ranges, and the last ones. It
// returns the envelopes published.
func messyStream(t *testing.T, res *stage.Resources, n int) []events.Envelope {
	t.Helper()
	ctx := context.Background()
	evs := eventgen.Stream(n)
	publish(t, res, evs)
	for i := 0; i < n/20; i++ { // 5% duplicates, stored again
		data, _ := evs[(i*7919)%len(evs)].Marshal()
		if _, err := res.JS.Publish(ctx, evs[(i*7919)%len(evs)].Subject(), data); err != nil {
			t.Fatal(err)
		}
	}
	raw := map[string]string{
		events.Subject("a-bare", events.AttemptRequested): `{"target":{"name":"demo","repo_url":"https://x/y.git"},"task":{"id":"T-b","title":"Bare","allowed_paths":["a"]}}`,
		events.Subject("a-noid", events.AttemptStarted):   `{"event_id":"not-a-uuid","event_type":"attempt.started","timestamp":"2026-01-01T00:00:00Z","actor_id":"x","payload":{"status":"running"}}`,
		"leviathan.attempts.a-junk.attempt.created":       "not json",
	}
	for _, subj := range slices.Sorted(maps.Keys(raw)) {
		if _, err := res.JS.Publish(ctx, subj, []byte(raw[subj])); err != nil {
			t.Fatal(err)
		}
	}
	py := eventgen.Python("attempt-py", "radix")
	publish(t, res, py)
	evs = append(evs, py...)
	publish(t, res, eventgen.Stream(n + 40)[n:]) // a tail to delete
	info, err := res.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	last := info.State.LastSeq
	deleted := []uint64{1, 2, 500, 501, 777, last - 1, last}
	for s := uint64(1000); s < 1400; s++ { // a run across ranges
		deleted = append(deleted, s)
	}
	for i := uint64(0); i < 30; i++ { // the tail: every message after a point
		deleted = append(deleted, last-2-i)
	}
	for _, s := range deleted {
		if err := res.Stream.SecureDeleteMsg(ctx, s); err != nil && err != jetstream.ErrMsgNotFound {
			t.Fatalf("delete %d: %v", s, err)
		}
	}
	return evs
}

// replayed starts a projector without snapshots, tuned by tune, and
// waits until it is ready.
func replayed(t *testing.T, res *stage.Resources, tune replayTuning) (*running, *logLines) {
	t.Helper()
	logs := &logLines{}
	r := startProjectorWith(t, res, Config{NoSnapshots: true}, slog.New(logs), tune)
	r.waitReady(t)
	return r, logs
}

// TestCatchUpMatchesTheConsumer: the catch-up with parallel direct gets
// makes the byte-identical graph the ordered consumer alone makes, on a
// stream with duplicates, messages that need their subject, gaps and a
// deleted tail; it is ready only once it has all of it; and both tail the
// stream the same way afterwards.
func TestCatchUpMatchesTheConsumer(t *testing.T) {
	res := setupStream(t)
	messyStream(t, res, 3000)

	consumer, _ := replayed(t, res, replayTuning{off: true})
	want, _ := consumer.p.Graph().MarshalSnapshot(0)
	for _, tune := range []replayTuning{
		defaultReplay,
		{chunk: 97, workers: 3, window: 4},
		{chunk: 1, workers: 2, window: 3},
	} {
		t.Run(fmt.Sprintf("chunk=%d,workers=%d", tune.chunk, tune.workers), func(t *testing.T) {
			direct, logs := replayed(t, res, tune)
			if !logs.has("projector: caught up with direct gets") {
				t.Fatalf("not caught up with direct gets: %q", logs.lines)
			}
			if got, _ := direct.p.Graph().MarshalSnapshot(0); !bytes.Equal(got, want) {
				t.Fatalf("direct gets made another graph:\n got %s\nwant %s", direct.p.Graph().SummaryJSON(), consumer.p.Graph().SummaryJSON())
			}
			if d, c := direct.p.Applied(), consumer.p.Applied(); d != c {
				t.Fatalf("applied through %d, the consumer through %d", d, c)
			}
			direct.stop(t)
		})
	}

	// Live events after the catch-up: the ordered consumer tails.
	direct, _ := replayed(t, res, replayTuning{chunk: 97, workers: 3, window: 4})
	publish(t, res, eventgen.Stream(3100)[3040:])
	direct.waitCaughtUp(t, res)
	consumer.waitCaughtUp(t, res)
	got, _ := direct.p.Graph().MarshalSnapshot(0)
	want, _ = consumer.p.Graph().MarshalSnapshot(0)
	if !bytes.Equal(got, want) {
		t.Fatal("tailing after the catch-up made another graph")
	}
}

// TestCatchUpNeverPartial: /readyz stays unready until the catch-up has
// applied everything up to the stream's last message when it started.
func TestCatchUpNeverPartial(t *testing.T) {
	res := setupStream(t)
	publish(t, res, eventgen.Stream(5000))
	full := graph.New()
	for _, e := range eventgen.Stream(5000) {
		full.Apply(e)
	}
	r := startProjectorWith(t, res, Config{NoSnapshots: true}, quiet(), replayTuning{chunk: 50, workers: 2, window: 3})
	assertNeverPartial(t, r, full.SummaryJSON())
}

// TestCatchUpHandsOver: when a range cannot be read to its end, the
// catch-up applies what it has before it and the ordered consumer goes on
// from there: the same graph, each event once.
func TestCatchUpHandsOver(t *testing.T) {
	res := setupStream(t)
	messyStream(t, res, 2000)
	consumer, _ := replayed(t, res, replayTuning{off: true})
	want, _ := consumer.p.Graph().MarshalSnapshot(0)

	for _, at := range []uint64{1, 3, 640, 1200, 2001} {
		tune := replayTuning{chunk: 128, workers: 2, window: 4, failAt: at}
		r, logs := replayed(t, res, tune)
		r.waitApplied(t, consumer.p.Applied())
		if !logs.has("projector: catch-up with direct gets stopped") {
			t.Fatalf("failAt %d: the catch-up did not stop: %q", at, logs.lines)
		}
		if got, _ := r.p.Graph().MarshalSnapshot(0); !bytes.Equal(got, want) {
			t.Fatalf("failAt %d: another graph", at)
		}
		if a, c := testutil.ToFloat64(r.p.metrics.applied), testutil.ToFloat64(consumer.p.metrics.applied); a != c {
			t.Fatalf("failAt %d: applied %v events, the consumer %v", at, a, c)
		}
		r.stop(t)
	}
}

// TestCatchUpWithoutDirectGets: a stream made before direct gets were
// allowed is caught up with the ordered consumer.
func TestCatchUpWithoutDirectGets(t *testing.T) {
	res := setupStream(t)
	ctx := context.Background()
	info, err := res.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.AllowDirect = false
	if _, err := res.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	evs := eventgen.Stream(1000)
	publish(t, res, evs)
	r, logs := replayed(t, res, defaultReplay)
	r.waitCaughtUp(t, res)
	if logs.has("projector: caught up with direct gets") {
		t.Fatal("direct gets on a stream that does not allow them")
	}
	if n := testutil.ToFloat64(r.p.metrics.applied); n != float64(len(evs)) {
		t.Fatalf("applied %v", n)
	}

	// Ensure turns them on, on the existing stream.
	if _, err := stage.Ensure(ctx, res.JS, stage.ResourceConfig{}); err != nil {
		t.Fatal(err)
	}
	if info, err := res.Stream.Info(ctx); err != nil || !info.Config.AllowDirect {
		t.Fatalf("direct gets not allowed after Ensure: %v", err)
	}
}

func TestVersionAtLeast(t *testing.T) {
	for v, want := range map[string]bool{
		"2.15.2": true, "2.11.0": true, "2.11.0-beta.1": true, "3.0.0": true,
		"2.10.29": false, "1.99.0": false, "": false, "dev": false, "2.x": false,
	} {
		if got := versionAtLeast(v, 2, 11); got != want {
			t.Errorf("versionAtLeast(%q) = %v", v, got)
		}
	}
}

func TestAPIPrefix(t *testing.T) {
	for _, c := range []struct {
		o    jetstream.JetStreamOptions
		want string
	}{
		{jetstream.JetStreamOptions{}, "$JS.API."},
		{jetstream.JetStreamOptions{Domain: "hub"}, "$JS.hub.API."},
		{jetstream.JetStreamOptions{APIPrefix: "x.API"}, "x.API."},
		{jetstream.JetStreamOptions{APIPrefix: "x.API."}, "x.API."},
	} {
		if got := apiPrefix(c.o); got != c.want {
			t.Errorf("apiPrefix(%+v) = %q, want %q", c.o, got, c.want)
		}
	}
}

func TestNoneThrough(t *testing.T) {
	res := setupStream(t)
	publish(t, res, eventgen.Stream(10))
	ctx := context.Background()
	for _, s := range []uint64{4, 5, 6} {
		if err := res.Stream.DeleteMsg(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	info, err := res.Stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	last := info.State.LastSeq
	p := New(res, Config{Logger: quiet()})
	prefix := apiPrefix(res.JS.Options())
	for _, c := range []struct {
		seq, target uint64
		want        bool
	}{
		{4, 6, true},               // 4-6 deleted, 7 is past the target
		{4, 7, false},              // 7 is there
		{1, 3, false},              // 1 is there
		{last + 1, last + 9, true}, // past the last message
	} {
		if got := p.noneThrough(ctx, prefix, "LEVIATHAN_EVENTS", c.seq, c.target); got != c.want {
			t.Errorf("noneThrough(%d, %d) = %v", c.seq, c.target, got)
		}
	}
}
