package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// buildBinary builds cmd/leviathan into a temp dir.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "leviathan")
	// Built from the repository root so it works with and without go.work.
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/leviathan")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestDemoBinary runs `leviathan demo` as a separate process, exactly as
// the README tells a user to, and checks what it prints and its exit code.
func TestDemoBinary(t *testing.T) {
	bin := buildBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "demo")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("leviathan demo: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	if !regexp.MustCompile(`(?m)^succeeded: http://127\.0\.0\.1:\d+/leviathan/demo/pull/1$`).MatchString(out) {
		t.Fatalf("no PR URL:\n%s", out)
	}
	if !strings.Contains(out, "PullRequest 1") || !strings.Contains(out, "PRODUCED 2") {
		t.Fatalf("no graph summary:\n%s", out)
	}
}
