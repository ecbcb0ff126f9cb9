package stack

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// goBuild builds the main package pkg (from the repository root, with
// CGO off) into a temp dir and returns the binary's path.
func goBuild(t *testing.T, pkg, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// buildLeviathan builds the binary, for tests that kill a service with
// SIGKILL as a crash would.
func buildLeviathan(t *testing.T) string { return goBuild(t, "./cmd/leviathan", "leviathan") }

// lockedBuffer is a process's output, written by its copier goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPRKilledAfterACreate: the pr service, a process of its own, is
// SIGKILLed 30 ms after the forge answered a create, before it published
// or acked anything, and restarted after a second. Its lock and its
// pacing turn die with it within seconds: the next pull request comes
// within 10 s, and the killed attempt, redelivered, re-enters its own lock
// and adopts its pull request, so every attempt has exactly one.
func TestPRKilledAfterACreate(t *testing.T) {
	bin := buildLeviathan(t)
	s := startTestStackWith(t, StackConfig{Forge: testForge, Without: []string{"pr"}}, nil)
	var outs []*lockedBuffer
	startPR := func() *exec.Cmd {
		out := &lockedBuffer{}
		outs = append(outs, out)
		cmd := exec.Command(bin, "run", "pr", "--http-addr", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "NATS_URL="+s.NATSURL, "LEVIATHAN_FORGE_TOKEN="+s.cfg.ForgeToken,
			"LEVIATHAN_FORGE_API_URL="+s.ForgeURL+"/api/v3/", "LEVIATHAN_FORGE_MIN_INTERVAL=100ms", "LEVIATHAN_LOG_LEVEL=info")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	created := func() []time.Time {
		var at []time.Time
		for _, r := range s.Forge().Requests() {
			if r.Method == "POST" && strings.HasSuffix(r.Path, "/pulls") && r.Status == http.StatusCreated {
				at = append(at, r.End)
			}
		}
		return at
	}

	first := startPR()
	const n = 4
	for i := range n {
		publishBare(t, s, fmt.Sprint("a-kill-", i), bareRequest(s, fmt.Sprint("T-kill-", i)))
	}
	for deadline := time.Now().Add(time.Minute); len(created()) == 0; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no pull request created:\n%s", outs[0].String())
		}
	}
	time.Sleep(30 * time.Millisecond)
	if err := first.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = first.Wait()
	killed := time.Now()
	before := len(created())
	time.Sleep(time.Second)
	startPR()

	for i := range n {
		evs := attemptEvents(t, s, fmt.Sprint("a-kill-", i))
		if last := evs[len(evs)-1]; last.EventType != events.AttemptSucceeded {
			t.Fatalf("a-kill-%d: %v\n%s", i, types(evs), outs[len(outs)-1].String())
		}
	}
	prs, _ := s.Forge().Pulls(demoOwner, demoRepo)
	heads := map[string]bool{}
	for _, pr := range prs {
		heads[pr.Head] = true
	}
	if len(prs) != n || len(heads) != n {
		t.Fatalf("%d pull requests on %d branches, want %d and one per attempt", len(prs), len(heads), n)
	}
	var next time.Duration
	for _, at := range created()[before:] {
		if at.After(killed) {
			next = at.Sub(killed)
			break
		}
	}
	t.Logf("pr killed after a create: the next pull request came %v later (restart after 1s)", next.Round(10*time.Millisecond))
	if next <= 0 || next > 10*time.Second {
		t.Fatalf("the next pull request came %v after the kill, want within 10s", next)
	}
}
