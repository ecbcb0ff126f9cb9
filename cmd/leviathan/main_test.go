package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stack"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// startStack starts the embedded stack on free ports in a temporary
// directory for one test; cfg sets anything else.
func startStack(t *testing.T, ctx context.Context, cfg stack.StackConfig) *stack.Stack {
	t.Helper()
	cfg.DataDir, cfg.NATSAddr, cfg.ForgeAddr, cfg.HTTPAddr = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := stack.StartStack(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// TestDemo runs the README's run command as a user would, in-process.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	err := run(ctx, []string{"demo", "--data-dir", t.TempDir()}, env(map[string]string{"LEVIATHAN_CONTROL_PLANE_TOKEN": "tok-demo-secret"}), &out, &errOut)
	if err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	o := out.String()
	// The PR URL once (succeeded: <url>), the summary as the table of
	// leviathan summary, and the note that the URL dies with the demo.
	url := regexp.MustCompile(`http://127\.0\.0\.1:\d+/leviathan/demo/pull/1`)
	if !regexp.MustCompile(`(?m)^succeeded: http://127\.0\.0\.1:\d+/leviathan/demo/pull/1$`).MatchString(o) || len(url.FindAllString(o, -1)) != 2 {
		// twice: the pr.created line of the timeline and succeeded:
		t.Fatalf("PR URL not shown as expected:\n%s", o)
	}
	for _, stage := range []string{"attempt.created", "repo.fetched", "backlog.edited", "branch.pushed", "pr.created", "attempt.succeeded"} {
		if !strings.Contains(o, stage) {
			t.Errorf("output does not show %s", stage)
		}
	}
	if !strings.Contains(o, "nodes: Attempt 1, Commit 1, PullRequest 1, Target 1, Task 1") || !strings.Contains(o, "edges: DEPENDS_ON 2, PRODUCED 2") ||
		!strings.Contains(o, "leviathan dev") {
		t.Fatalf("summary table or note missing:\n%s", o)
	}
	if strings.Contains(o+errOut.String(), "tok-demo-secret") {
		t.Fatal("the token is in the output")
	}
}

func TestUsageErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"run"}, 2},
		{[]string{"run", "nosuch"}, 1},
		{[]string{"demo", "--no-such-flag"}, 2},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		err := run(context.Background(), c.args, env(nil), &out, &errOut)
		if err == nil || exitCode(err) != c.code {
			t.Errorf("%v: err %v (code %d), want code %d", c.args, err, exitCode(err), c.code)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, env(nil), &out, &out); err != nil || !strings.HasPrefix(out.String(), "leviathan ") {
		t.Fatalf("version: %v %q", err, out.String())
	}
}

func TestSubmitWithoutServer(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"submit", "--nats-url", "nats://127.0.0.1:1", "--target", "x"}, env(nil), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "connect to NATS") {
		t.Fatalf("err = %v", err)
	}
}

// TestSubmitWait follows an attempt through the CLI against a running
// stack, then a rejected one.
func TestSubmitWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(t, ctx, stack.StackConfig{})
	var out, errOut bytes.Buffer
	err := run(ctx, []string{"submit", "--nats-url", s.NATSURL, "--target", "demo", "--repo-url", s.DemoRepoURL(),
		"--task-id", "T-cli", "--title", "From the CLI", "--attempt-id", "a-cli", "--wait"}, env(nil), &out, &errOut)
	if err != nil {
		t.Fatalf("submit: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "attempt a-cli accepted") || !strings.Contains(out.String(), "succeeded: http://") {
		t.Fatalf("output:\n%s", out.String())
	}
	out.Reset()
	err = run(ctx, []string{"submit", "--nats-url", s.NATSURL, "--target", "demo", "--repo-url", s.DemoRepoURL(),
		"--task-id", "T-bad", "--title", "x", "--allowed-path", "../up", "--wait"}, env(nil), &out, &errOut)
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "task.allowed_paths[0]") {
		t.Fatalf("invalid submit: %v", err)
	}
}

// TestHelpAndVersion: -h on every command, and --version, exit 0.
func TestHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{
		{"-h"}, {"--help"}, {"--version"}, {"version"},
		{"dev", "-h"}, {"demo", "-h"}, {"setup", "-h"}, {"run", "-h"}, {"run", "clone", "-h"}, {"submit", "-h"},
		{"watch", "-h"}, {"retry", "-h"}, {"summary", "-h"}, {"config", "-h"}, {"verify", "-h"}, {"forge", "-h"}, {"forge", "repo", "-h"}, {"forge", "repo", "create", "-h"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), args, env(nil), &out, &out); err != nil {
			t.Errorf("leviathan %v: %v (exit %d)\n%s", args, err, exitCode(err), out.String())
		}
	}
}

// TestWatchUnknownAndRejected: watch says so, and exits non-zero within
// seconds, for an attempt the stream has never seen; it exits 2 for a
// rejected attempt, as submit --wait does.
func TestWatchUnknownAndRejected(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(t, ctx, stack.StackConfig{})
	var out bytes.Buffer
	err := run(ctx, []string{"watch", "--nats-url", s.NATSURL, "a-never"}, env(nil), &out, &out)
	if err == nil || exitCode(err) != 1 || !strings.Contains(err.Error(), "has no attempt a-never") {
		t.Fatalf("watch of an unknown attempt: %v", err)
	}
	if err := s.NATS().Publish("leviathan.attempts.a-rej.attempt.requested", []byte(`{"target":{"name":"demo"}}`)); err != nil {
		t.Fatal(err)
	}
	err = run(ctx, []string{"watch", "--nats-url", s.NATSURL, "a-rej"}, env(nil), &out, &out)
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "attempt rejected") {
		t.Fatalf("watch of a rejected attempt: %v\n%s", err, out.String())
	}
}

// TestVerify: the hash chain of a stack that ran an attempt, a rejected
// request with a credential (erased from the stream by clone) and an
// ingested bundle holds; once an event is deleted from the stream,
// verify names its sequence and exits 1.
func TestVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(t, ctx, stack.StackConfig{})
	e := env(map[string]string{"LEVIATHAN_CONTROL_PLANE_TOKEN": s.ControlToken(), "LEVIATHAN_CONTROL_PLANE_URL": s.ControlURL, "NATS_URL": s.NATSURL})
	var out bytes.Buffer
	if err := run(ctx, []string{"submit", "--target", "demo", "--repo-url", s.DemoRepoURL(),
		"--task-id", "T-v", "--title", "Chained", "--attempt-id", "a-v", "--wait"}, e, &out, &out); err != nil {
		t.Fatalf("submit: %v\n%s", err, out.String())
	}
	// A request carrying a credential: rejected, then erased.
	secret := `{"target":{"name":"demo","repo_url":"https://x-access-token:ghp_0123456789abcdef0123456789abcdef0123@example.com/o/r.git"},"task":{"id":"T-s","title":"x"}}`
	if err := s.NATS().Publish("leviathan.attempts.a-secret.attempt.requested", []byte(secret)); err != nil {
		t.Fatal(err)
	}
	err := run(ctx, []string{"watch", "a-secret"}, e, &out, &out)
	if exitCode(err) != 2 {
		t.Fatalf("watch of the rejected request: %v\n%s", err, out.String())
	}
	js, _ := jetstream.New(s.NATS())
	st, err := js.Stream(ctx, stage.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the projector to have applied everything in the stream.
	for {
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Applied() >= info.State.LastSeq {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The projector's status counts what it applied.
	status, err := s.NATS().Request("leviathan.svc.projector.status", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(status.Data), `"processed":0`) {
		t.Fatalf("projector status: %s", status.Data)
	}
	out.Reset()
	if err := run(ctx, []string{"verify"}, e, &out, &out); err != nil || !strings.Contains(out.String(), "chain verified") {
		t.Fatalf("verify of an intact stream: %v\n%s", err, out.String())
	}
	// Delete the attempt's attempt.created from the stream.
	msg, err := st.GetLastMsgForSubject(ctx, events.Subject("a-v", events.AttemptCreated))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, msg.Sequence); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err = run(ctx, []string{"verify"}, e, &out, &out)
	want := fmt.Sprintf("chain broken at stream sequence %d", msg.Sequence)
	if exitCode(err) != 1 || !strings.Contains(out.String(), want) || !strings.Contains(out.String(), "no longer in the stream") {
		t.Fatalf("verify after a deletion: %v\n%s\nwant %q", err, out.String(), want)
	}
}

// TestForgeRepoCreate: a repository made with `leviathan forge repo
// create --from DIR --backlog` takes an attempt end to end; `--repos`
// makes more demo repositories.
func TestForgeRepoCreate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := startStack(t, ctx, stack.StackConfig{DemoRepos: 2})
	if urls := s.DemoRepoURLs(); len(urls) != 2 || urls[1][0] != "demo-2" {
		t.Fatalf("demo repositories %v", urls)
	}
	// The sign-in page names this data directory's token file.
	resp, err := http.Get(s.ControlURL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), filepath.Join(s.DataDir(), "control-plane.token")) {
		t.Fatalf("sign-in page does not name %s:\n%s", filepath.Join(s.DataDir(), "control-plane.token"), page)
	}
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "docs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "docs", "guide.md"), []byte("# Guide\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(s.DataDir(), "forge.token")
	var out bytes.Buffer
	if err := run(ctx, []string{"forge", "repo", "create", "acme/atlas", "--from", src, "--backlog", "--forge-url", s.ForgeURL,
		"--token-file", tokenFile}, env(nil), &out, &out); err != nil {
		t.Fatalf("forge repo create: %v\n%s", err, out.String())
	}
	cloneURL := s.ForgeURL + "/git/acme/atlas.git"
	if !strings.Contains(out.String(), "created acme/atlas") || !strings.Contains(out.String(), cloneURL) {
		t.Fatalf("output:\n%s", out.String())
	}
	err = run(ctx, []string{"forge", "repo", "create", "acme/atlas", "--forge-url", s.ForgeURL, "--token-file", tokenFile}, env(nil), &out, &out)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second create: %v", err)
	}
	for target, url := range map[string]string{"atlas": cloneURL, "demo-2": s.DemoRepoURLs()[1][1]} {
		out.Reset()
		if err := run(ctx, []string{"submit", "--nats-url", s.NATSURL, "--target", target, "--repo-url", url,
			"--task-id", "T-1", "--title", "First task", "--wait"}, env(nil), &out, &out); err != nil || !strings.Contains(out.String(), "succeeded") {
			t.Fatalf("submit to %s: %v\n%s", target, err, out.String())
		}
	}
}

// TestDevPortInUse: dev says at once that its NATS port is taken.
func TestDevPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	err = run(ctx, []string{"dev", "--data-dir", t.TempDir(), "--nats-addr", ln.Addr().String(), "--forge-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0"}, env(nil), &out, &out)
	if err == nil || !strings.Contains(err.Error(), "cannot listen on "+ln.Addr().String()) {
		t.Fatalf("dev on a taken port: %v", err)
	}
}
