package stage

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/natstest"
)

func setup(t *testing.T) (*Resources, *Publisher) {
	t.Helper()
	_, js := natstest.Connect(t, natstest.Run(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := Ensure(ctx, js, ResourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Ensure is idempotent: every service calls it at start-up.
	if _, err := Ensure(ctx, js, ResourceConfig{}); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	return res, &Publisher{JS: js, Actor: "test-1"}
}

// runStage runs a runner on the "repo.fetched" input until the test ends.
func runStage(t *testing.T, res *Resources, pub *Publisher, cfg Config, h HandlerFunc) *Runner {
	t.Helper()
	cfg.Name, cfg.Input = "t", events.RepoFetched
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := NewRunner(context.Background(), res, pub, cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func publishInput(t *testing.T, pub *Publisher, attempt string) {
	t.Helper()
	ref := events.Ref{AttemptID: attempt, TaskID: "T-1", TargetID: "demo"}
	if _, err := pub.Publish(context.Background(), events.RepoFetched, ref, events.Fetched{Ref: ref}); err != nil {
		t.Fatal(err)
	}
}

// waitEvent returns the first event of type typ for attempt.
func waitEvent(t *testing.T, res *Resources, attempt string, typ events.Type) events.Envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cons, err := res.Stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.Subject(attempt, typ)},
	})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchContext(ctx))
	if err != nil {
		t.Fatalf("no %s for %s: %v", typ, attempt, err)
	}
	env, err := events.Decode(msg.Data())
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestTransientErrorIsRetried(t *testing.T) {
	res, pub := setup(t)
	var mu sync.Mutex
	var seen []time.Time
	r := runStage(t, res, pub, Config{RetryDelays: []time.Duration{50 * time.Millisecond}},
		func(ctx context.Context, in *Input) error {
			mu.Lock()
			seen = append(seen, time.Now())
			n := len(seen)
			mu.Unlock()
			if n < 3 {
				return errors.New("connection reset")
			}
			return in.Publish(ctx, events.BacklogEdited, events.Edited{Ref: in.Ref})
		})
	publishInput(t, pub, "a-1")
	env := waitEvent(t, res, "a-1", events.BacklogEdited)
	if env.ActorID != "test-1" || env.TargetID != "demo" {
		t.Fatalf("envelope %+v", env)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("deliveries = %d, want 3", len(seen))
	}
	// The event is out before the runner acks and counts it.
	deadline := time.Now().Add(5 * time.Second)
	for st := r.Stats(); (st.Processed != 1 || st.InFlight != 0) && time.Now().Before(deadline); st = r.Stats() {
		time.Sleep(5 * time.Millisecond)
	}
	if st := r.Stats(); st.Processed != 1 || st.Failed != 0 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFailures(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		wantType   events.FailureType
		deliveries int
	}{
		{"permanent", Failf(events.PathViolation, "changed README.md"), events.PathViolation, 1},
		{"exhausted", Retry(errors.New("503")), events.RetriesExhausted, 3},
		{"unclassified", errors.New("boom"), events.RetriesExhausted, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, pub := setup(t)
			var mu sync.Mutex
			calls := 0
			r := runStage(t, res, pub, Config{MaxDeliver: 3, RetryDelays: []time.Duration{20 * time.Millisecond}},
				func(ctx context.Context, in *Input) error {
					mu.Lock()
					calls++
					mu.Unlock()
					return c.err
				})
			publishInput(t, pub, "a-f")
			env := waitEvent(t, res, "a-f", events.AttemptFailed)
			var p events.Failed
			if err := env.DecodePayload(&p); err != nil {
				t.Fatal(err)
			}
			if p.FailureType != c.wantType || p.Stage != "t" || p.Deliveries != c.deliveries || p.Status != "failed" ||
				p.TaskID != "T-1" || p.ErrorSummary == "" {
				t.Fatalf("attempt.failed = %+v", p)
			}
			time.Sleep(100 * time.Millisecond) // a terminated message is not redelivered
			mu.Lock()
			defer mu.Unlock()
			if calls != c.deliveries {
				t.Fatalf("handler ran %d times, want %d", calls, c.deliveries)
			}
			if st := r.Stats(); st.Failed != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	res, pub := setup(t)
	var mu sync.Mutex
	var seen []time.Time
	runStage(t, res, pub, Config{RetryDelays: []time.Duration{10 * time.Millisecond}},
		func(ctx context.Context, in *Input) error {
			mu.Lock()
			seen = append(seen, time.Now())
			n := len(seen)
			mu.Unlock()
			if n == 1 {
				return RetryAfter(700*time.Millisecond, errors.New("429"))
			}
			return in.Publish(ctx, events.BacklogEdited, events.Edited{Ref: in.Ref})
		})
	publishInput(t, pub, "a-r")
	waitEvent(t, res, "a-r", events.BacklogEdited)
	mu.Lock()
	defer mu.Unlock()
	if gap := seen[1].Sub(seen[0]); gap < 700*time.Millisecond {
		t.Fatalf("redelivered after %v, want >= 700ms", gap)
	}
}

func TestClaim(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	if err := res.Claim(ctx, "a-1", 7); err != nil {
		t.Fatal(err)
	}
	if err := res.Claim(ctx, "a-1", 7); err != nil {
		t.Fatalf("redelivery of the claiming message: %v", err)
	}
	if err := res.Claim(ctx, "a-1", 9); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("second message: %v, want ErrDuplicate", err)
	}
}

func TestConfigValidation(t *testing.T) {
	res, pub := setup(t)
	if _, err := NewRunner(context.Background(), res, pub, Config{Input: events.RepoFetched}, HandlerFunc(nil)); err == nil {
		t.Fatal("missing name accepted")
	}
	if _, err := NewRunner(context.Background(), res, pub, Config{Name: "x"}, HandlerFunc(nil)); err == nil {
		t.Fatal("missing input accepted")
	}
}

// TestStopFinishesTheMessageInHand: stopping a runner while its handler
// works lets the handler finish and ack within the grace period, so a
// rolling deploy spends no delivery of the message.
func TestStopFinishesTheMessageInHand(t *testing.T) {
	res, pub := setup(t)
	cfg := Config{Name: "t", Input: events.RepoFetched, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Grace: 10 * time.Second}
	started := make(chan struct{})
	var calls atomic.Int32
	r, err := NewRunner(context.Background(), res, pub, cfg, HandlerFunc(func(ctx context.Context, in *Input) error {
		calls.Add(1)
		close(started)
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		return in.Publish(ctx, events.BacklogEdited, events.Edited{Ref: in.Ref})
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	publishInput(t, pub, "a-stop")
	<-started
	cancel() // the deploy stops the pod
	<-done
	waitEvent(t, res, "a-stop", events.BacklogEdited)
	info, err := res.JS.Consumer(context.Background(), StreamName, "t")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := info.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumAckPending != 0 || ci.NumRedelivered != 0 || ci.AckFloor.Stream == 0 || calls.Load() != 1 {
		t.Fatalf("after a stop mid-handler: %d pending, %d redelivered, ack floor %d, %d calls; want it finished and acked once",
			ci.NumAckPending, ci.NumRedelivered, ci.AckFloor.Stream, calls.Load())
	}
}

// TestOneEndPerAttempt: a handler that published the attempt's end and
// then failed does not end it a second time with attempt.failed.
func TestOneEndPerAttempt(t *testing.T) {
	res, pub := setup(t)
	runStage(t, res, pub, Config{}, func(ctx context.Context, in *Input) error {
		if err := in.Publish(ctx, events.AttemptSucceeded, events.Succeeded{Ref: in.Ref, Status: "succeeded"}); err != nil {
			return err
		}
		return Failf(events.ExecutionError, "something after the end")
	})
	publishInput(t, pub, "a-end")
	waitEvent(t, res, "a-end", events.AttemptSucceeded)
	cons, err := res.JS.Consumer(context.Background(), StreamName, "t")
	if err != nil {
		t.Fatal(err)
	}
	for {
		ci, err := cons.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ci.NumAckPending == 0 && ci.NumPending == 0 {
			break // the delivery was answered (terminated)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := res.Stream.GetLastMsgForSubject(context.Background(), events.Subject("a-end", events.AttemptFailed)); err == nil {
		t.Fatal("attempt.failed after attempt.succeeded")
	}
}

// TestRequestIsTheClaimingOne: Request gives the request that claimed
// the attempt id, also when a duplicate with another task came after it
// (the last request on the attempt's subject is then not the one), and
// the request itself when nothing came after it.
func TestRequestIsTheClaimingOne(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	body := func(task string) []byte {
		return []byte(`{"target":{"name":"demo","repo_url":"http://forge.test/o/r.git"},"task":{"id":"` + task + `","title":"t","allowed_paths":["x"]}}`)
	}
	publish := func(id, task string) uint64 {
		t.Helper()
		ack, err := res.JS.Publish(ctx, events.Subject(id, events.AttemptRequested), body(task))
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	for _, dup := range []bool{false, true} {
		id := "attempt-T-1-0000000" + map[bool]string{false: "1", true: "2"}[dup]
		if err := res.Claim(ctx, id, publish(id, "T-first")); err != nil {
			t.Fatal(err)
		}
		if dup {
			publish(id, "T-duplicate")
		}
		req, err := res.Request(ctx, id)
		if err != nil {
			t.Fatalf("duplicate after it %v: %v", dup, err)
		}
		if req.Task.ID != "T-first" || req.AttemptID != id {
			t.Fatalf("duplicate after it %v: got task %s of %s, want T-first of %s", dup, req.Task.ID, req.AttemptID, id)
		}
	}
	if _, err := res.Request(ctx, "attempt-T-1-00000009"); err == nil {
		t.Fatal("an attempt nobody claimed has a request")
	}
}
