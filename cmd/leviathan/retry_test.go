package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/stack"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// TestRetryReusesThePushedBranch: an attempt fails at pr after pushing its
// branch (the forge refuses the token); its attempt.failed says which
// branch; `leviathan retry` starts a new attempt that reuses that branch,
// as it is, and opens the pull request from it.
func TestRetryReusesThePushedBranch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(t, ctx, stack.StackConfig{})
	s.Forge().InjectFault(localforge.Fault{Path: "/pulls", Status: http.StatusForbidden, Message: "Resource not accessible by integration", Times: 1000})
	var out, errOut bytes.Buffer
	err := run(ctx, []string{"submit", "--nats-url", s.NATSURL, "--target", "demo", "--repo-url", s.DemoRepoURL(),
		"--task-id", "T-retry", "--title", "Retried", "--attempt-id", "a-first", "--wait"}, env(nil), &out, &errOut)
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "auth_failed") {
		t.Fatalf("first attempt: %v\n%s", err, out.String())
	}
	s.Forge().ClearFaults()
	tipBefore, err := s.Forge().Branch("leviathan", "demo", "agent/backlog-propose-a-first")
	if err != nil || tipBefore == "" {
		t.Fatalf("the failed attempt left no branch: %v", err)
	}

	out.Reset()
	err = run(ctx, []string{"retry", "a-first", "--nats-url", s.NATSURL, "--attempt-id", "a-second", "--wait"}, env(nil), &out, &errOut)
	if err != nil {
		t.Fatalf("retry: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "after pushing agent/backlog-propose-a-first: the new attempt reuses it") ||
		!strings.Contains(out.String(), "succeeded: http://") {
		t.Fatalf("retry output:\n%s", out.String())
	}
	prs, _ := s.Forge().Pulls("leviathan", "demo")
	if len(prs) != 1 || prs[0].Head != "agent/backlog-propose-a-first" || prs[0].HeadSHA != tipBefore {
		t.Fatalf("pull requests %+v, want one from the first attempt's branch at %s", prs, tipBefore)
	}
	if tip, _ := s.Forge().Branch("leviathan", "demo", "agent/backlog-propose-a-second"); tip != "" {
		t.Fatal("the retry pushed a branch of its own")
	}

	// Nothing to retry: a succeeded attempt, an unknown one.
	for _, id := range []string{"a-second", "a-nothing"} {
		if err := run(ctx, []string{"retry", id, "--nats-url", s.NATSURL}, env(nil), &out, &errOut); err == nil || exitCode(err) != 2 {
			t.Errorf("retry %s: %v, want exit 2", id, err)
		}
	}
}
