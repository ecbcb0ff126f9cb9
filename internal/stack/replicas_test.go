package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// startPRReplica runs a second pr service next to the stack's, as a
// second pod of the Deployment would: its own process state (forge
// driver, pacing), the same NATS consumer.
func startPRReplica(t *testing.T, s *Stack) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunService(ctx, ServiceConfig{Name: "pr", NATSURL: s.NATSURL, Listener: ln, Replicas: 1,
			ForgeToken: s.cfg.ForgeToken, ForgeAPIURL: s.ForgeURL + "/api/v3/", Forge: testForge,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("second pr replica: %v", err)
		}
	})
}

// TestPRReplicasShareTheGuardrails runs two pr replicas with slow pull
// request lists, so that both look at a target's open pull requests while
// the other is about to create one. The guardrails must hold across
// replicas as they do in one: max_open_prs exactly, and one pull request
// per task, however many attempts propose it at once; and the token's
// creates stay serial and spaced, whichever replica makes them.
func TestPRReplicasShareTheGuardrails(t *testing.T) {
	s := startTestStackWith(t, StackConfig{Forge: testForge}, nil)
	startPRReplica(t, s)
	ctx := context.Background()
	for _, repo := range []string{"capped", "same"} {
		if err := s.Forge().CreateRepo(ctx, "o", repo, "main", map[string][]byte{events.BacklogPath: []byte("tasks: []\n")}); err != nil {
			t.Fatal(err)
		}
		s.Forge().InjectFault(localforge.Fault{Method: "GET", Path: "/repos/o/" + repo + "/pulls", Delay: 150 * time.Millisecond, AfterEffect: true, Times: 1000})
	}
	three := 3
	if err := (policy.Store{KV: s.deps.res.Config}).Put(ctx, "capped", policy.Policy{MaxOpenPRs: &three}); err != nil {
		t.Fatal(err)
	}
	req := func(target, task string) []byte {
		b, _ := json.Marshal(map[string]any{
			"target": map[string]any{"name": target, "repo_url": s.Forge().CloneURL("o", target), "branch": "main"},
			"task":   map[string]any{"id": task, "title": "Task " + task, "allowed_paths": []string{events.BacklogPath}},
		})
		return b
	}
	const capped, same = 10, 6
	for i := range capped {
		publishBare(t, s, fmt.Sprint("a-capped-", i), req("capped", fmt.Sprint("T-capped-", i)))
	}
	for i := range same {
		publishBare(t, s, fmt.Sprint("a-same-", i), req("same", "T-same"))
	}

	opened, blocked := 0, 0
	for i := range capped {
		evs := attemptEvents(t, s, fmt.Sprint("a-capped-", i))
		switch last := evs[len(evs)-1]; last.EventType {
		case events.AttemptSucceeded:
			opened++
		case events.AttemptFailed:
			if f := failure(t, evs); f.FailureType != events.GuardrailBlocked || !strings.Contains(f.ErrorSummary, "max_open_prs reached") {
				t.Errorf("attempt %d: %+v", i, f)
			}
			blocked++
		}
	}
	if prs, _ := s.Forge().Pulls("o", "capped"); opened != three || blocked != capped-three || len(prs) != three {
		t.Errorf("max_open_prs %d: %d opened, %d blocked, %d pull requests on the forge", three, opened, blocked, len(prs))
	}

	numbers := map[int]bool{}
	for i := range same {
		evs := attemptEvents(t, s, fmt.Sprint("a-same-", i))
		if last := evs[len(evs)-1]; last.EventType != events.AttemptSucceeded {
			t.Errorf("attempt a-same-%d: %v", i, types(evs))
			continue
		}
		numbers[payload[events.PROpened](t, evs, events.PRCreated).PRNumber] = true
	}
	if prs, _ := s.Forge().Pulls("o", "same"); len(prs) != 1 || len(numbers) != 1 {
		t.Errorf("%d attempts of one task: %d pull requests on the forge, attempts name %d", same, len(prs), len(numbers))
	}
}

// TestPRReplicasPaceTheToken: two pr replicas creating pull requests on
// different repositories with one token still make the token's mutating
// calls one at a time and at least the minimum interval apart (DESIGN.md
// §7), as one process does.
func TestPRReplicasPaceTheToken(t *testing.T) {
	s := startTestStackWith(t, StackConfig{Forge: testForge}, nil)
	startPRReplica(t, s)
	ctx := context.Background()
	const repos, each = 4, 3
	for r := range repos {
		name := fmt.Sprint("paced-", r)
		if err := s.Forge().CreateRepo(ctx, "o", name, "main", map[string][]byte{events.BacklogPath: []byte("tasks: []\n")}); err != nil {
			t.Fatal(err)
		}
		// Slow creates: a call in flight for a while.
		s.Forge().InjectFault(localforge.Fault{Method: "POST", Path: "/repos/o/" + name + "/pulls", Delay: 80 * time.Millisecond, Times: 100})
	}
	for i := range each {
		for r := range repos {
			name := fmt.Sprint("paced-", r)
			b, _ := json.Marshal(map[string]any{
				"target": map[string]any{"name": name, "repo_url": s.Forge().CloneURL("o", name), "branch": "main"},
				"task":   map[string]any{"id": fmt.Sprint("T-", i), "title": "Task", "allowed_paths": []string{events.BacklogPath}},
			})
			publishBare(t, s, fmt.Sprintf("a-paced-%d-%d", r, i), b)
		}
	}
	for i := range each {
		for r := range repos {
			if evs := attemptEvents(t, s, fmt.Sprintf("a-paced-%d-%d", r, i)); evs[len(evs)-1].EventType != events.AttemptSucceeded {
				t.Fatalf("attempt a-paced-%d-%d: %v", r, i, types(evs))
			}
		}
	}
	assertPaced(t, s, testForge.MinInterval)
}

// assertPaced checks localforge's journal: pull requests were created one
// at a time and at least interval apart, whichever replica made them.
func assertPaced(t *testing.T, s *Stack, interval time.Duration) {
	t.Helper()
	var creates []localforge.RequestRecord
	for _, r := range s.Forge().Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/pulls") {
			creates = append(creates, r)
		}
	}
	slices.SortFunc(creates, func(a, b localforge.RequestRecord) int { return a.Start.Compare(b.Start) })
	for i := 1; i < len(creates); i++ {
		// From the moment the forge began to answer the previous create
		// (no client can have had its answer before; the journal's End
		// comes later, after the body, when a busy machine may delay it)
		// to the start of the next. 20 ms of slack: the journal's clock
		// is read after the listener.
		if gap := creates[i].Start.Sub(creates[i-1].Answered); creates[i-1].Answered.IsZero() || gap < interval-20*time.Millisecond {
			t.Errorf("creates %d and %d (%s, %s): %v apart, want at least %v (the first took %v, status %d)",
				i-1, i, creates[i-1].Path, creates[i].Path, gap, interval, creates[i-1].End.Sub(creates[i-1].Start), creates[i-1].Status)
		}
	}
	if len(creates) < 2 {
		t.Errorf("%d creates in the journal", len(creates))
	}
}

// TestRateLimitPausesEveryReplica: a rate limit that one replica's read
// meets holds the other replica's calls at once, through the shared
// state, without a request of its own reaching the forge; the pause ends
// when the wait it was told ends, and a pause whose holder stops renewing
// lapses for the others.
func TestRateLimitPausesEveryReplica(t *testing.T) {
	s := startTestStackWith(t, StackConfig{Forge: testForge}, nil)
	ctx := context.Background()
	if err := s.Forge().CreateRepo(ctx, "o", "paused", "main", map[string][]byte{events.BacklogPath: []byte("tasks: []\n")}); err != nil {
		t.Fatal(err)
	}
	repo := s.Forge().CloneURL("o", "paused")
	driver := func(holder string) *forge.GitHub {
		d, err := forge.NewGitHub(forge.GitHubConfig{Token: s.cfg.ForgeToken, BaseURL: s.ForgeURL + "/api/v3/",
			Turns: s.deps.res.Turns("forge/paused-test", holder)})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	a, b := driver("replica a"), driver("replica b")
	lists := func() (n int) {
		for _, r := range s.Forge().Requests() {
			if r.Method == "GET" && strings.HasSuffix(r.Path, "/repos/o/paused/pulls") {
				n++
			}
		}
		return n
	}

	s.Forge().InjectFault(localforge.Fault{Method: "GET", Path: "/repos/o/paused/pulls", Status: 429, RetryAfter: 2 * time.Second})
	var re *forge.RetryError
	if _, err := a.OpenPRs(ctx, repo); !errors.As(err, &re) || !errors.Is(err, forge.ErrRateLimited) {
		t.Fatalf("replica a's list under a 429: %v", err)
	}
	paused := time.Now()
	before := lists()
	if _, err := b.OpenPRs(ctx, repo); !errors.As(err, &re) || !errors.Is(err, forge.ErrRateLimited) {
		t.Fatalf("replica b's list while a is paused: %v, want a rate-limit wait", err)
	}
	if n := lists(); n != before {
		t.Fatalf("replica b reached the forge %d times during a's pause", n-before)
	}
	// Once a's wait has passed, both call again.
	for {
		_, err := b.OpenPRs(ctx, repo)
		if err == nil {
			break
		}
		if !errors.As(err, &re) {
			t.Fatalf("replica b after the pause: %v", err)
		}
		time.Sleep(re.After)
	}
	if waited := time.Since(paused); waited < 1500*time.Millisecond {
		t.Fatalf("replica b called again %v after a's 2 s pause began", waited)
	}
	if _, err := a.OpenPRs(ctx, repo); err != nil {
		t.Fatalf("replica a after its pause: %v", err)
	}
}
