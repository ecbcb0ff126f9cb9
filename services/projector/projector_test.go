package projector

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector/api"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
	"github.com/leviathan-dev/leviathan/services/projector/internal/projtest"
)

const testToken = "s3cret-test-token"

func quiet() *slog.Logger { return projtest.Quiet() }

func setupStream(t *testing.T) *stage.Resources { return projtest.Stream(t) }

func publish(t *testing.T, res *stage.Resources, envs []events.Envelope) int {
	return projtest.Publish(t, res, envs)
}

// happy is the graph of one successful attempt.
const happy = "map[Attempt:1 Commit:1 PullRequest:1 Target:1 Task:1] map[DEPENDS_ON:2 PRODUCED:2]"

func summaryOf(g *graph.Graph) string {
	s := g.Summary()
	return fmt.Sprint(s.NodesByType, s.EdgesByType)
}

// running is a projector running in the test, with its API.
type running struct {
	p      *Projector
	reg    *prometheus.Registry
	srv    *httptest.Server
	cancel context.CancelFunc
	done   chan error
}

func startProjector(t *testing.T, res *stage.Resources, cfg Config) *running {
	t.Helper()
	return startProjectorWith(t, res, cfg, quiet(), defaultReplay)
}

// startProjectorWith starts a projector that logs to logger and catches
// up as tune says.
func startProjectorWith(t *testing.T, res *stage.Resources, cfg Config, logger *slog.Logger, tune replayTuning) *running {
	t.Helper()
	cfg.Logger = logger
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	p := New(res, cfg)
	p.replay = tune
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, reg: reg, cancel: cancel, done: make(chan error, 1)}
	cp := api.New(p, res, api.Config{Token: testToken, Logger: quiet(), Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})})
	r.srv = httptest.NewServer(cp.Handler())
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop stops the projector (which stores its last snapshot) and its API.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if err := <-r.done; err != nil {
		t.Errorf("projector: %v", err)
	}
	r.srv.Close()
}

// stallLimit is how long a wait in these tests lets the projector go
// without applying anything before it fails: waits are bounded by the
// work done, not by the clock, so a loaded machine slows them but does
// not fail them.
const stallLimit = 30 * time.Second

// waitFor waits until done reports true, failing with what once the
// projector has applied nothing new for stallLimit.
func (r *running) waitFor(t *testing.T, what string, done func() bool) {
	t.Helper()
	last, since := r.p.Applied(), time.Now()
	for !done() {
		if now := r.p.Applied(); now != last {
			last, since = now, time.Now()
		} else if time.Since(since) > stallLimit {
			t.Fatalf("%s: nothing applied for %v (applied through %d)", what, stallLimit, now)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitReady waits until the projector has caught up with the stream as it
// was when it started.
func (r *running) waitReady(t *testing.T) {
	t.Helper()
	r.waitFor(t, "projector never ready", r.p.Ready)
}

// waitCaughtUp waits until the projector is ready and has applied the
// stream's last message.
func (r *running) waitCaughtUp(t *testing.T, res *stage.Resources) {
	t.Helper()
	r.waitReady(t)
	info, err := res.Stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	r.waitApplied(t, info.State.LastSeq)
}

// waitApplied waits until the projector has applied the message at seq.
func (r *running) waitApplied(t *testing.T, seq uint64) {
	t.Helper()
	r.waitFor(t, fmt.Sprintf("message %d never applied", seq), func() bool { return r.p.Applied() >= seq })
}

func (r *running) get(t *testing.T, path, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestRestartWithAndWithoutSnapshot: a projector resumed from its
// snapshot and one that replays the whole stream serve byte-identical
// summaries, and neither serves a partial one: /readyz says ready only
// once the summary is the whole stream's.
func TestRestartWithAndWithoutSnapshot(t *testing.T) {
	res := setupStream(t)
	ctx := context.Background()
	evs := eventgen.Stream(3000)
	publish(t, res, evs[:2000])
	// A bare request body, as `nats pub` sends it, and a message that is
	// no event at all.
	if _, err := res.JS.Publish(ctx, events.Subject("a-bare", events.AttemptRequested),
		[]byte(`{"target":{"name":"demo","repo_url":"https://x/y.git"},"task":{"id":"T-b","title":"Bare","allowed_paths":["a"]}}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := res.JS.Publish(ctx, "leviathan.attempts.a-junk.attempt.created", []byte("not json")); err != nil {
		t.Fatal(err)
	}

	first := startProjector(t, res, Config{SnapshotInterval: time.Hour})
	first.waitCaughtUp(t, res)
	publish(t, res, evs[2000:]) // applied live, after catching up
	publish(t, res, eventgen.Python("attempt-py", "radix"))
	first.waitCaughtUp(t, res)
	first.stop(t) // stores the snapshot
	want := first.p.Graph().SummaryJSON()
	wantSnap, _ := first.p.Graph().MarshalSnapshot(0)
	if testutil.ToFloat64(first.p.metrics.undecodable) != 1 {
		t.Fatal("the junk message was not counted as undecodable")
	}
	info, _ := res.JS.ObjectStore(ctx, SnapshotBucket)
	if oi, err := info.GetInfo(ctx, SnapshotObject); err != nil || oi.Metadata["stream_seq"] == "" {
		t.Fatalf("no snapshot stored: %v", err)
	}

	// With the snapshot: nothing to replay, ready at once.
	resumed := startProjector(t, res, Config{SnapshotInterval: time.Hour})
	assertNeverPartial(t, resumed, want)
	if n := testutil.ToFloat64(resumed.p.metrics.applied); n != 0 {
		t.Fatalf("resumed projector re-applied %v events", n)
	}
	resumed.stop(t)

	// Without it: the whole stream again, same bytes.
	obs, _ := res.JS.ObjectStore(ctx, SnapshotBucket)
	if err := obs.Delete(ctx, SnapshotObject); err != nil {
		t.Fatal(err)
	}
	replayed := startProjector(t, res, Config{SnapshotInterval: time.Hour})
	assertNeverPartial(t, replayed, want)
	if n := testutil.ToFloat64(replayed.p.metrics.applied); n < 3000 {
		t.Fatalf("replayed only %v events", n)
	}
	gotSnap, _ := replayed.p.Graph().MarshalSnapshot(0)
	if !bytes.Equal(gotSnap, wantSnap) {
		t.Fatal("replayed graph differs from the resumed one")
	}
}

// assertNeverPartial polls /readyz from the projector's start: the first
// time it says ready, the summary must already be the whole one.
func assertNeverPartial(t *testing.T, r *running, want []byte) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		status, _ := r.get(t, "/readyz", "")
		if status == http.StatusOK {
			_, got := r.get(t, "/v1/graph/summary", testToken)
			if !bytes.Equal(got, want) {
				t.Fatalf("ready with a different summary:\n got %s\nwant %s", got, want)
			}
			return
		}
		if status != http.StatusServiceUnavailable {
			t.Fatalf("/readyz = %d", status)
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("never ready")
}

// TestTenThousandEventsWithDuplicates: 10,000 events of which 5% are
// duplicates, half dropped by JetStream (same Nats-Msg-Id within the
// window) and half stored again (published without one, as a producer
// outside the window would): the graph counts each event once.
func TestTenThousandEventsWithDuplicates(t *testing.T) {
	res := setupStream(t)
	unique := eventgen.Stream(9500)[:9500]
	if dropped := publish(t, res, unique); dropped != 0 {
		t.Fatalf("%d unique events dropped", dropped)
	}
	var again []events.Envelope
	for i := 0; i < 500; i++ {
		again = append(again, unique[(i*7919)%len(unique)])
	}
	if dropped := publish(t, res, again[:250]); dropped != 250 {
		t.Fatalf("JetStream dropped %d of 250 duplicates", dropped)
	}
	for _, e := range again[250:] {
		data, _ := e.Marshal()
		if _, err := res.JS.Publish(context.Background(), e.Subject(), data); err != nil {
			t.Fatal(err)
		}
	}

	r := startProjector(t, res, Config{})
	r.waitCaughtUp(t, res)
	if a, d := testutil.ToFloat64(r.p.metrics.applied), testutil.ToFloat64(r.p.metrics.duplicates); a != 9500 || d != 250 {
		t.Fatalf("applied %v, duplicates %v; want 9500, 250", a, d)
	}
	got := r.p.Graph().Summary()
	want := expectedCounts(unique)
	if fmt.Sprint(got.NodesByType, got.EdgesByType) != want {
		t.Fatalf("counts %v %v\nwant %s", got.NodesByType, got.EdgesByType, want)
	}
}

// expectedCounts counts what the graph must hold for events, from the
// events alone (a model independent of the graph's code).
func expectedCounts(evs []events.Envelope) string {
	type key struct{ a, b string }
	targets, tasks, attempts := map[string]bool{}, map[key]bool{}, map[string]bool{}
	commits, pulls := 0, 0
	for _, e := range evs {
		switch e.EventType {
		case events.AttemptCreated:
			var p events.Created
			_ = e.DecodePayload(&p)
			targets[e.TargetID] = true
			tasks[key{e.TargetID, p.TaskID}] = true
			attempts[e.AttemptID] = true
		case events.BranchPushed:
			commits++
		case events.PRCreated:
			pulls++
		}
	}
	nodes := map[string]int{graph.NodeTarget: len(targets), graph.NodeTask: len(tasks), graph.NodeAttempt: len(attempts),
		graph.NodeCommit: commits, graph.NodePullRequest: pulls}
	edges := map[string]int{graph.EdgeDependsOn: len(tasks) + len(attempts), graph.EdgeProduced: commits + pulls}
	return fmt.Sprint(nodes, edges)
}

// TestSnapshotOfAnotherStreamIsIgnored: a stream deleted and made again
// (a new dev data directory, say) must not resume from the old snapshot.
func TestSnapshotOfAnotherStreamIsIgnored(t *testing.T) {
	res := setupStream(t)
	ctx := context.Background()
	publish(t, res, eventgen.Stream(200))
	r := startProjector(t, res, Config{})
	r.waitCaughtUp(t, res)
	r.stop(t)

	if err := res.JS.DeleteStream(ctx, stage.StreamName); err != nil {
		t.Fatal(err)
	}
	res2, err := stage.Ensure(ctx, res.JS, stage.ResourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	publish(t, res2, eventgen.Attempt(5000, eventgen.Succeeded))
	r2 := startProjector(t, res2, Config{})
	r2.waitCaughtUp(t, res2)
	if got := summaryOf(r2.p.Graph()); got != happy {
		t.Fatalf("summary %s, want only the new stream's attempt", got)
	}
}

func TestSnapshotTakenWhileRunning(t *testing.T) {
	res := setupStream(t)
	ctx := context.Background()
	r := startProjector(t, res, Config{SnapshotEvery: 100, SnapshotInterval: time.Hour})
	publish(t, res, eventgen.Stream(500))
	r.waitCaughtUp(t, res)
	obs, err := res.JS.ObjectStore(ctx, SnapshotBucket)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A read may race with the next snapshot replacing the object:
		// try again.
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		data, err := obs.GetBytes(gctx, SnapshotObject)
		cancel()
		if err == nil {
			if _, meta, err := graph.UnmarshalSnapshot(data); err == nil && meta.Seq >= 100 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no snapshot after 100 events")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStageMetrics checks the per-stage counts and durations of /metrics:
// stages ended by events applied once the projector is ready (not the
// history it replays at start), with durations from the events'
// timestamps (eventgen spaces an attempt's events 137 ms apart), and the
// attempts by status of the whole graph.
func TestStageMetrics(t *testing.T) {
	res := setupStream(t)
	publish(t, res, eventgen.Attempt(0, eventgen.Succeeded)) // history
	r := startProjector(t, res, Config{NoSnapshots: true})
	r.waitCaughtUp(t, res)
	var live []events.Envelope
	for i, o := range []eventgen.Outcome{eventgen.Succeeded, eventgen.Failed, eventgen.Rejected, eventgen.Unchanged} {
		live = append(live, eventgen.Attempt(i+1, o)...)
	}
	publish(t, res, live)
	r.waitCaughtUp(t, res)

	families, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	type key struct{ stage, outcome string }
	counts, hist := map[key]float64{}, map[key][2]float64{}
	status := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			k := key{l["stage"], l["outcome"]}
			switch f.GetName() {
			case "leviathan_projector_stage_attempts_total":
				counts[k] = m.GetCounter().GetValue()
			case "leviathan_projector_stage_duration_seconds":
				h := m.GetHistogram()
				hist[k] = [2]float64{float64(h.GetSampleCount()), h.GetSampleSum()}
			case "leviathan_projector_attempts":
				status[l["status"]] = m.GetGauge().GetValue()
			}
		}
	}
	step := 0.137
	want := map[key][2]float64{ // count, total seconds
		{"clone", "ok"}:        {3, 3 * 3 * step}, // requested, created, started, fetched
		{"clone", "rejected"}:  {1, step},
		{"backlog-edit", "ok"}: {3, 3 * step},
		{"push", "ok"}:         {1, step},
		{"push", "failed"}:     {1, step},
		{"pr", "ok"}:           {1, step},
	}
	if len(counts) != len(want) || len(hist) != len(want) {
		t.Errorf("stage counts %v, durations %v; want %v", counts, hist, want)
	}
	for k, w := range want {
		h := hist[k]
		if counts[k] != w[0] || h[0] != w[0] || math.Abs(h[1]-w[1]) > 1e-9 {
			t.Errorf("%v: count %v, durations %v; want %v", k, counts[k], h, w)
		}
	}
	if want := map[string]float64{"succeeded": 3, "failed": 1, "rejected": 1}; !maps.Equal(status, want) {
		t.Errorf("attempts by status %v, want %v", status, want)
	}
}
