package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunSmall runs the whole benchmark on a small stream, so that
// `make bench-projector` keeps working: every replay after a server
// restart applies the whole stream, and the results file gets the
// projector key with every measure while other keys stay.
func TestRunSmall(t *testing.T) {
	results := filepath.Join(t.TempDir(), "results.json")
	if err := os.WriteFile(results, []byte(`{"git": {"kept": true}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-events", "3000", "-requests", "40", "-replays", "2", "-results", results}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if got := strings.Count(stdout.String(), "replay: 3000 events in "); got != 2 {
		t.Errorf("%d replays of the whole stream printed, want 2:\n%s", got, stdout.String())
	}
	b, err := os.ReadFile(results)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Git       map[string]bool `json:"git"`
		Projector struct {
			Events          int     `json:"events"`
			Replay          float64 `json:"replay_events_per_s"`
			P50             float64 `json:"summary_p50_ms"`
			P99             float64 `json:"summary_p99_ms"`
			BytesPerAttempt float64 `json:"bytes_per_attempt"`
		} `json:"projector"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("results: %v\n%s", err, b)
	}
	pr := doc.Projector
	if !doc.Git["kept"] {
		t.Errorf("the git key was not kept:\n%s", b)
	}
	if pr.Events != 3000 || pr.Replay <= 0 || pr.P50 <= 0 || pr.P99 < pr.P50 || pr.BytesPerAttempt <= 0 {
		t.Errorf("projector results = %+v", pr)
	}
}

func TestRunRejectsNoReplays(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-replays", "0", "-results", filepath.Join(t.TempDir(), "r.json")}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "-replays") {
		t.Fatalf("run with -replays 0: %v", err)
	}
}
