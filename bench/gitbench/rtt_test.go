package main

import (
	"encoding/json"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/bench/benchresults"
	"github.com/leviathan-dev/leviathan/bench/rttproxy"
	"github.com/leviathan-dev/leviathan/events"
)

func TestNeededRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		path      string
		handshake int
		want      int64
	}{
		// discovery + (depth+1) upload-pack + receive-pack + handshake
		{events.BacklogPath, 2, 1 + 2 + 1 + 2},
		{"backlog.yaml", 2, 1 + 1 + 1 + 2},
		{"a/b/c/backlog.yaml", 1, 1 + 4 + 1 + 1},
	} {
		if got := neededRoundTrips(tc.path, tc.handshake); got != tc.want {
			t.Errorf("neededRoundTrips(%q, %d) = %d, want %d", tc.path, tc.handshake, got, tc.want)
		}
	}
}

func TestSummarizeRTT(t *testing.T) {
	git := func(req, conns int64) rttproxy.Count {
		return rttproxy.Count{Requests: req, Conns: conns, RoundTrips: req + 2*conns}
	}
	same := summarizeRTT([]sample{
		{seconds: 0.4, git: git(4, 1)},
		{seconds: 0.3, git: git(4, 1)},
		{seconds: 0.5, git: git(4, 1)},
	})
	want := rttResult{MedianS: 0.4, P95S: 0.5, RoundTrips: 6, Requests: 4, Conns: 1, Runs: 3}
	if same != want {
		t.Errorf("summarizeRTT (equal counts) = %+v, want %+v", same, want)
	}
	// Counts that differ: the most round trips, with that attempt's
	// requests and connections, and the fewest beside them.
	varied := summarizeRTT([]sample{
		{seconds: 0.4, git: git(4, 1)},
		{seconds: 0.6, git: git(5, 2), api: rttproxy.Count{Requests: 1, RoundTrips: 1}},
		{seconds: 0.2, git: git(4, 0)},
		{seconds: 0.3, git: git(4, 1)},
	})
	want = rttResult{MedianS: 0.35, P95S: 0.6, RoundTrips: 9, RoundTripsMin: 4, Requests: 5, Conns: 2, APIRoundTrips: 1, Runs: 4}
	if varied != want {
		t.Errorf("summarizeRTT (varied counts) = %+v, want %+v", varied, want)
	}
}

func TestGitRTTResultsJSON(t *testing.T) {
	res := &gitRTTResults{RTTMs: 50, HandshakeRoundTrips: 2, PathDepth: 1, MinimalNeeded: 6}
	res.setRepo("large", map[string]rttResult{
		approachMinimal:     {MedianS: 0.4, RoundTrips: 6, Requests: 4, Conns: 1, Runs: 5},
		approachCLIBlobNone: {MedianS: 0.9, RoundTrips: 13, RoundTripsMin: 11, Requests: 7, Conns: 3, Runs: 5},
	})
	existing := []byte(`{"git": {"large": {}}, "git_rtt": {"old": 1}}`)
	out, err := benchresults.Merge(existing, "git_rtt", res)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]map[string]any
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(doc["git"], map[string]any{"large": map[string]any{}}) {
		t.Errorf("git key changed: %v", doc["git"])
	}
	g := doc["git_rtt"]
	if g["rtt_ms"] != 50.0 {
		t.Errorf("rtt_ms = %v", g["rtt_ms"])
	}
	for _, k := range []string{"old", "small"} {
		if _, ok := g[k]; ok {
			t.Errorf("git_rtt has %q: %v", k, g)
		}
	}
	large := g["large"].(map[string]any)
	m := large[approachMinimal].(map[string]any)
	for _, k := range []string{"median_s", "round_trips", "requests", "conns", "api_round_trips"} {
		if _, ok := m[k]; !ok {
			t.Errorf("minimal lacks %q: %v", k, m)
		}
	}
	if _, ok := m["round_trips_min"]; ok {
		t.Errorf("round_trips_min set though the attempts agreed: %v", m)
	}
	if b := large[approachCLIBlobNone].(map[string]any); b["round_trips"] != 13.0 || b["round_trips_min"] != 11.0 {
		t.Errorf("cli-blob-none: %v", b)
	}
}

func TestRTTFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-root", t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.rtt != 50*time.Millisecond || cfg.rttN != 5 || cfg.rttHandshake != 2 || cfg.rttOnly ||
		!reflect.DeepEqual(cfg.rttApproaches, []string{"minimal", "cli-blob-none", "cli-depth1"}) {
		t.Errorf("defaults: rtt %v, n %d, handshake %d, only %v, approaches %v", cfg.rtt, cfg.rttN, cfg.rttHandshake, cfg.rttOnly, cfg.rttApproaches)
	}
	if _, err := parseFlags([]string{"-root", t.TempDir(), "-rtt", "0"}, io.Discard); err != nil {
		t.Errorf("-rtt 0: %v", err)
	}
	for _, args := range [][]string{
		{"-rtt", "0", "-rtt-only"},
		{"-rtt", "-1ms"},
		{"-rtt-n", "0"},
		{"-rtt-handshake", "0"},
		{"-rtt-approaches", "minimal,cli-nothing"},
	} {
		if _, err := parseFlags(append([]string{"-root", t.TempDir()}, args...), io.Discard); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
