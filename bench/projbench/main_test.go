package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
)

// TestRunSmall runs the whole benchmark on a small stream, so that
// `make bench-projector` keeps working: every replay and every read pass
// after a server restart covers the whole stream, and the results file
// gets the projector key with every measure while other keys stay.
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
	if got := strings.Count(stdout.String(), "read:   3000 events in "); got != 2 {
		t.Errorf("%d read passes of the whole stream printed, want 2:\n%s", got, stdout.String())
	}
	for _, target := range []string{"replay ≥ 0.6× the read limit", "≤ 2048 RSS bytes per attempt"} {
		if !strings.Contains(stdout.String(), "  "+target+" ") {
			t.Errorf("target %q not printed:\n%s", target, stdout.String())
		}
	}
	b, err := os.ReadFile(results)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Git       map[string]bool `json:"git"`
		Projector struct {
			Events             int     `json:"events"`
			Replay             float64 `json:"replay_events_per_s"`
			ReadLimit          float64 `json:"read_limit_events_per_s"`
			Ratio              float64 `json:"replay_to_read_ratio"`
			P50                float64 `json:"summary_p50_ms"`
			P99                float64 `json:"summary_p99_ms"`
			P50UnderReplay     float64 `json:"summary_p50_under_replay_ms"`
			P99UnderReplay     float64 `json:"summary_p99_under_replay_ms"`
			BytesPerAttempt    float64 `json:"bytes_per_attempt"`
			RSSBytesPerAttempt float64 `json:"rss_bytes_per_attempt"`
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
	// The new measures: a read limit and its ratio (rounded to 3 places), the
	// summary under a replay, and RSS. On so small a graph (under 1 MB) the
	// RSS figure is within the noise of the runtime's own (the pages it
	// keeps cached per P after returning the rest to the system: about
	// 1.5 MB, and tens of MB under the race detector on busy cores, where
	// one run gave 66 KB per attempt), so only that it was read (run
	// fails when it cannot read it) and is a number are checked: not its
	// sign or size (in a test binary run with -count 4, the fourth run
	// gave -52 bytes per attempt).
	if pr.ReadLimit <= 0 || pr.Ratio <= 0 || math.Abs(pr.Ratio-pr.Replay/pr.ReadLimit) > 0.001 {
		t.Errorf("read limit %v events/s, ratio %v, replay %v", pr.ReadLimit, pr.Ratio, pr.Replay)
	}
	if pr.P50UnderReplay <= 0 || pr.P99UnderReplay < pr.P50UnderReplay {
		t.Errorf("summary under replay: p50 %v ms, p99 %v ms", pr.P50UnderReplay, pr.P99UnderReplay)
	}
	if !strings.Contains(stdout.String(), "process RSS: ") || math.IsNaN(pr.RSSBytesPerAttempt) || math.IsInf(pr.RSSBytesPerAttempt, 0) {
		t.Errorf("rss_bytes_per_attempt = %v", pr.RSSBytesPerAttempt)
	}
}

func TestRunRejectsNoReplays(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"-replays", "0", "-results", filepath.Join(t.TempDir(), "r.json")}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "-replays") {
		t.Fatalf("run with -replays 0: %v", err)
	}
}

// TestBenchAttempt checks the stream's events: attempt ids of the shape
// `leviathan submit` makes (cmd/leviathan/submit.go), distinct, in place
// of eventgen's everywhere, event ids derived from them, and 16 targets.
func TestBenchAttempt(t *testing.T) {
	defer useBenchTargets()()
	shape := regexp.MustCompile(`^a-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$`)
	seen := map[string]bool{}
	targets := map[string]bool{}
	for i := range 20_000 {
		id := submitID(i)
		if !shape.MatchString(id) || len(id) != 26 || !events.ValidAttemptID(id) {
			t.Fatalf("attempt %d: id %q is not of submit's shape", i, id)
		}
		if seen[id] {
			t.Fatalf("attempt %d: id %q made twice", i, id)
		}
		seen[id] = true
		if i%97 != 0 && i >= 64 {
			continue // every event of a sample, and every target
		}
		old := eventgen.Attempt(i, eventgen.Mix(i))
		evs := benchAttempt(i, eventgen.Mix(i))
		if len(evs) != len(old) {
			t.Fatalf("attempt %d: %d events, eventgen made %d", i, len(evs), len(old))
		}
		for k, e := range evs {
			targets[e.TargetID] = true
			if e.AttemptID != id || e.EventID != events.EventID(id, e.EventType) {
				t.Errorf("attempt %d: event %s: attempt id %q, event id %q", i, e.EventType, e.AttemptID, e.EventID)
			}
			if bytes.Contains(e.Payload, []byte(old[k].AttemptID)) ||
				bytes.Count(e.Payload, []byte(id)) != bytes.Count(old[k].Payload, []byte(old[k].AttemptID)) {
				t.Errorf("attempt %d: %s payload not rewritten: %s", i, e.EventType, e.Payload)
			}
			var ref events.Ref
			if err := json.Unmarshal(e.Payload, &ref); err != nil || ref.AttemptID != id {
				t.Errorf("attempt %d: %s payload's attempt id %q (%v)", i, e.EventType, ref.AttemptID, err)
			}
			data, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if got, err := events.Decode(data); err != nil || got.AttemptID != id {
				t.Errorf("attempt %d: %s does not decode: %v", i, e.EventType, err)
			}
		}
	}
	if len(targets) != 16 {
		t.Errorf("events over %d targets, want 16: %v", len(targets), targets)
	}
}
