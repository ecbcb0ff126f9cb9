package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunSmall runs the whole benchmark at a small size: every service a
// process of its own, two concurrencies, the in-process chain and the
// round-trip phase. It checks that every figure is there and plausible,
// not how fast anything is.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole stack")
	}
	out := filepath.Join(t.TempDir(), "results.json")
	var stdout strings.Builder
	err := run(context.Background(), []string{"-n", "6", "-runs", "2", "-c", "1,3", "-targets", "2", "-inprocess-n", "3",
		"-rtt", "20ms", "-rtt-n", "2", "-out", out}, &stdout, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(stdout.String())
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Pipeline map[string]json.RawMessage `json:"pipeline"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"c1", "c3", "inprocess_c1"} {
		var r Result
		if err := json.Unmarshal(doc.Pipeline[k], &r); err != nil || r.AttemptsPerS <= 0 || r.P50S <= 0 || r.P99S < r.P50S {
			t.Errorf("%s: %s (%v)", k, doc.Pipeline[k], err)
		}
		want := 12
		if k == "inprocess_c1" {
			want = 6 // 3 in each round
		}
		if r.Runs != 2 || r.Attempts != want || r.AttemptsPerSMin > r.AttemptsPerS || r.AttemptsPerS > r.AttemptsPerSMax {
			t.Errorf("%s: two rounds of %d attempts: %s", k, want/2, doc.Pipeline[k])
		}
	}
	var cpu map[string]float64
	if err := json.Unmarshal(doc.Pipeline["cpu_ms_per_attempt"], &cpu); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"clone", "backlog-edit", "push", "pr", "projector", "nats-server", "localforge"} {
		if _, ok := cpu[s]; !ok {
			t.Errorf("no CPU figure for %s: %v", s, cpu)
		}
	}
	var wan RTTResult
	if err := json.Unmarshal(doc.Pipeline["wan"], &wan); err != nil {
		t.Fatal(err)
	}
	// Two round trips each for the fetch and the push at least, and the
	// create: a pipeline attempt at 20 ms cannot take less than 100 ms.
	if wan.GitRequests < 4 || wan.APIRequests < 1 || wan.P50S < 0.1 || wan.InProcessP50S < 0.1 {
		t.Errorf("wan: %+v", wan)
	}
	if !strings.Contains(stdout.String(), "pacing off") {
		t.Errorf("the output does not say pacing is off:\n%s", stdout.String())
	}
}
