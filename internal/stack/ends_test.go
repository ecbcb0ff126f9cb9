package stack

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// lastFailure is the attempt's attempt.failed payload; the attempt must
// have ended with it.
func lastFailure(t *testing.T, evs []events.Envelope) events.Failed {
	t.Helper()
	last := evs[len(evs)-1]
	var f events.Failed
	if last.EventType != events.AttemptFailed || last.DecodePayload(&f) != nil {
		t.Fatalf("ended with %v, want attempt.failed", types(evs))
	}
	return f
}

// TestPanicEndsTheAttemptAndTheProcessLivesOn: a stage that panics ends
// its attempt with execution_error, and the services go on serving.
func TestPanicEndsTheAttemptAndTheProcessLivesOn(t *testing.T) {
	s := startTestStack(t, func(c *stage.Config) {
		if c.Name == "backlog-edit" {
			c.BeforeHandle = func(in *stage.Input) error {
				if in.Ref.AttemptID == "a-panic" {
					panic("a nil map, say")
				}
				return nil
			}
		}
	})
	publishBare(t, s, "a-panic", bareRequest(s, "T-panic"))
	f := lastFailure(t, attemptEvents(t, s, "a-panic"))
	if f.FailureType != events.ExecutionError || f.Stage != "backlog-edit" || !strings.Contains(f.ErrorSummary, "panicked") {
		t.Fatalf("failure %+v, want execution_error in backlog-edit naming the panic", f)
	}
	publishBare(t, s, "a-after-panic", bareRequest(s, "T-after-panic"))
	if evs := attemptEvents(t, s, "a-after-panic"); evs[len(evs)-1].EventType != events.AttemptSucceeded {
		t.Fatalf("after the panic: %v", types(evs))
	}
}

// TestCrashLoopEndsTheAttempt: a stage that dies on one message on every
// delivery (the message never reaches an answer) ends the attempt with
// retries_exhausted, on the delivery past the attempt's budget.
func TestCrashLoopEndsTheAttempt(t *testing.T) {
	var crashes atomic.Int32
	s := startTestStack(t, func(c *stage.Config) {
		if c.Name == "push" {
			c.BeforeHandle = func(in *stage.Input) error {
				if in.Ref.AttemptID == "a-loop" {
					crashes.Add(1)
					return errors.New("killed")
				}
				return nil
			}
		}
	})
	publishBare(t, s, "a-loop", bareRequest(s, "T-loop"))
	f := lastFailure(t, attemptEvents(t, s, "a-loop"))
	if f.FailureType != events.RetriesExhausted || f.Stage != "push" || f.Deliveries != 3 || !strings.Contains(f.ErrorSummary, "ran out of its 3 deliveries") {
		t.Fatalf("failure %+v, want retries_exhausted in push after 3 deliveries", f)
	}
	if n := crashes.Load(); n != 3 {
		t.Fatalf("%d crashes, want one per delivery (3)", n)
	}
}

// TestRateLimitSpendsNoRetries: five 429s in a row with Retry-After: 2
// while eight attempts wait for pr. Waiting is not failing: all eight
// succeed, each with one pull request, although each message may be
// delivered only three times.
func TestRateLimitSpendsNoRetries(t *testing.T) {
	s := startTestStackWith(t, StackConfig{Forge: testForge}, nil)
	s.Forge().InjectFault(localforge.Fault{Method: "POST", Path: "/pulls", Status: http.StatusTooManyRequests, RetryAfter: 2 * time.Second, Times: 5})
	const n = 8
	for i := range n {
		publishBare(t, s, fmt.Sprint("a-rl-", i), bareRequest(s, fmt.Sprint("T-rl-", i)))
	}
	for i := range n {
		evs := attemptEvents(t, s, fmt.Sprint("a-rl-", i))
		if last := evs[len(evs)-1]; last.EventType != events.AttemptSucceeded {
			t.Errorf("a-rl-%d: %v", i, types(evs))
		}
	}
	prs, _ := s.Forge().Pulls(demoOwner, demoRepo)
	if len(prs) != n {
		t.Fatalf("%d pull requests, want %d", len(prs), n)
	}
	limited := 0
	for _, r := range s.Forge().Requests() {
		if r.Method == "POST" && r.Status == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited != 5 {
		t.Fatalf("%d rate-limited creates, want the 5 injected", limited)
	}
}

// TestSlowGitServerTimesOut: a git server that sends one byte a second.
// The clone stage gives up at its deadline on every delivery (without one,
// the first would never end), the attempt ends with timeout, and clone's
// one worker serves the next attempt.
func TestSlowGitServerTimesOut(t *testing.T) {
	drip := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-git-upload-pack-advertisement")
		w.WriteHeader(http.StatusOK)
		for {
			if _, err := w.Write([]byte("0")); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(time.Second):
			}
		}
	}))
	defer drip.Close()
	dripHost := strings.TrimPrefix(drip.URL, "http://")
	s := startTestStackWith(t, StackConfig{AllowedHosts: []string{"http://" + dripHost}}, func(c *stage.Config) {
		if c.Name == "clone" {
			c.Deadline = time.Second
			c.Workers = 1
		}
	})
	body, _ := json.Marshal(map[string]any{
		"target": map[string]any{"name": "slow", "repo_url": drip.URL + "/slow/repo.git"},
		"task":   map[string]any{"id": "T-slow", "title": "slow", "allowed_paths": []string{events.BacklogPath}},
	})
	start := time.Now()
	publishBare(t, s, "a-slow", body)
	f := lastFailure(t, attemptEvents(t, s, "a-slow"))
	if f.FailureType != events.Timeout || f.Stage != "clone" || f.Deliveries != 3 {
		t.Fatalf("failure %+v, want timeout in clone on the 3rd delivery", f)
	}
	t.Logf("ended %s after %v (deadline 1s, 3 deliveries)", f.FailureType, time.Since(start).Round(10*time.Millisecond))
	publishBare(t, s, "a-after-slow", bareRequest(s, "T-after-slow"))
	if evs := attemptEvents(t, s, "a-after-slow"); evs[len(evs)-1].EventType != events.AttemptSucceeded {
		t.Fatalf("after the slow server: %v", types(evs))
	}
}

// TestStageKilledInALoopEndsTheAttempt: clone, a process of its own, is
// SIGKILLed whenever it works on one attempt (while it fetches from a git
// server that never finishes an answer) and started again at once. Each
// of the attempt's deliveries dies with it; after the last, no clone runs
// for a while. The delivery past the budget goes to the process started
// after that, which ends the attempt with retries_exhausted without
// running the handler again.
func TestStageKilledInALoopEndsTheAttempt(t *testing.T) {
	bin := buildLeviathan(t)
	var fetches atomic.Int32
	arrived := make(chan struct{}, 16)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		arrived <- struct{}{}
		w.Header().Set("Content-Type", "application/x-git-upload-pack-advertisement")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	defer hang.Close()
	hangHost := strings.TrimPrefix(hang.URL, "http://")
	s := startTestStackWith(t, StackConfig{Without: []string{"clone"}}, nil)
	var out lockedBuffer
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "run", "clone", "--http-addr", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "NATS_URL="+s.NATSURL, "LEVIATHAN_GIT_TOKEN="+s.cfg.ForgeToken,
			"LEVIATHAN_FORGE_API_URL="+s.ForgeURL+"/api/v3/", "LEVIATHAN_ALLOWED_HOSTS=http://"+hangHost, "LEVIATHAN_LOG_LEVEL=info")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	clone := start()
	defer func() { _ = clone.Process.Kill(); _ = clone.Wait() }()
	body, _ := json.Marshal(map[string]any{
		"target": map[string]any{"name": "hang", "repo_url": hang.URL + "/o/r.git"},
		"task":   map[string]any{"id": "T-hang", "title": "hang", "allowed_paths": []string{events.BacklogPath}},
	})
	publishBare(t, s, "a-killed", body)
	kills := 0
	failed := events.Subject("a-killed", events.AttemptFailed)
	for deadline := time.Now().Add(2 * time.Minute); countSubject(t, s, failed) == 0; {
		select {
		case <-arrived:
			_ = clone.Process.Kill() // SIGKILL, mid-fetch
			_ = clone.Wait()
			kills++
			if kills == 3 {
				// No replica at all while the last allowed delivery's
				// AckWait (1 s) runs out: JetStream's advisory, if it were
				// what ended the attempt, would reach nobody.
				time.Sleep(3 * time.Second)
			}
			clone = start()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the attempt did not end after %d kills:\n%s", kills, lastLines(out.String(), 30))
		}
	}
	f := lastFailure(t, attemptEvents(t, s, "a-killed"))
	if f.FailureType != events.RetriesExhausted || f.Stage != "clone" || f.Deliveries != 3 || !strings.Contains(f.ErrorSummary, "ran out of its 3 deliveries") {
		t.Fatalf("failure %+v, want retries_exhausted in clone after 3 deliveries", f)
	}
	if kills != 3 || fetches.Load() != 3 {
		t.Fatalf("%d kills and %d fetches, want one of each per delivery (3)", kills, fetches.Load())
	}
}
