package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/stack"
)

// TestSummaryAndWatch runs one attempt on a stack, then reads it back the
// ways a user would: `leviathan summary` (table and JSON), `leviathan
// watch <attempt>` and `leviathan watch` (every event). The token is never
// printed.
func TestSummaryAndWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const token = "tok-summary-secret"
	s := startStack(t, ctx, stack.StackConfig{ControlToken: token})
	var out, errOut bytes.Buffer
	err := run(ctx, []string{"submit", "--nats-url", s.NATSURL, "--target", "demo", "--repo-url", s.DemoRepoURL(),
		"--task-id", "T-sum", "--title", "Summarised", "--attempt-id", "a-sum", "--wait"}, env(nil), &out, &errOut)
	if err != nil {
		t.Fatalf("submit: %v\n%s%s", err, out.String(), errOut.String())
	}
	vars := map[string]string{"LEVIATHAN_CONTROL_PLANE_URL": s.ControlURL, "LEVIATHAN_CONTROL_PLANE_TOKEN": token}

	// The summary must include the attempt's last event.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out.Reset()
		if err := run(ctx, []string{"summary"}, env(vars), &out, &errOut); err != nil {
			t.Fatalf("summary: %v", err)
		}
		if strings.Contains(out.String(), "attempt.succeeded") || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	o := out.String()
	for _, want := range []string{"nodes: Attempt 1, Commit 1, PullRequest 1, Target 1, Task 1", "edges: DEPENDS_ON 2, PRODUCED 2", "a-sum", "attempt.succeeded"} {
		if !strings.Contains(o, want) {
			t.Errorf("summary without %q:\n%s", want, o)
		}
	}

	// JSON, with the token from a file.
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := run(ctx, []string{"summary", "--json", "--url", s.ControlURL, "--token-file", tokenFile}, env(nil), &out, &errOut); err != nil {
		t.Fatalf("summary --json: %v", err)
	}
	var sum struct {
		Nodes map[string]int `json:"nodes_by_type"`
	}
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil || sum.Nodes["PullRequest"] != 1 {
		t.Fatalf("summary --json: %v %s", err, out.String())
	}
	// A wrong token is an error that does not repeat it.
	err = run(ctx, []string{"summary"}, env(map[string]string{"LEVIATHAN_CONTROL_PLANE_URL": s.ControlURL, "LEVIATHAN_CONTROL_PLANE_TOKEN": "wrong-token"}), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "wrong-token") {
		t.Fatalf("wrong token: %v", err)
	}

	// watch <attempt>: its events, then its outcome.
	out.Reset()
	if err := run(ctx, []string{"watch", "a-sum", "--nats-url", s.NATSURL}, env(nil), &out, &errOut); err != nil {
		t.Fatalf("watch a-sum: %v", err)
	}
	if o := out.String(); !strings.Contains(o, "branch.pushed") || !strings.Contains(o, "succeeded: http://") {
		t.Fatalf("watch a-sum:\n%s", o)
	}
	// watch (all): from the start of the stream, until the timeout.
	out.Reset()
	if err := run(ctx, []string{"watch", "--all", "--timeout", "1s", "--nats-url", s.NATSURL}, env(nil), &out, &errOut); err != nil {
		t.Fatalf("watch --all: %v", err)
	}
	if o := out.String(); !strings.Contains(o, "a-sum") || !strings.Contains(o, "pr.created") {
		t.Fatalf("watch --all:\n%s", o)
	}
	if err := run(ctx, []string{"watch", "not an id"}, env(nil), &out, &errOut); exitCode(err) != 2 {
		t.Fatalf("bad attempt id: %v", err)
	}
	if strings.Contains(out.String()+errOut.String(), token) {
		t.Fatal("the token was printed")
	}
}
