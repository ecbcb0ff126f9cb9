package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/leviathan-dev/leviathan/bench/benchresults"
	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/backlogedit"
)

func TestMedianAndP95(t *testing.T) {
	for _, tc := range []struct {
		xs          []float64
		median, p95 float64
	}{
		{nil, 0, 0},
		{[]float64{3}, 3, 3},
		{[]float64{4, 1}, 2.5, 4},
		{[]float64{5, 1, 3}, 3, 5},
		{[]float64{7, 1, 6, 2, 5, 3, 4}, 4, 7},
		// Nearest rank: ceil(0.95 × 20) = 19th of 20.
		{[]float64{20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 10.5, 19},
	} {
		orig := append([]float64(nil), tc.xs...)
		if got := median(tc.xs); got != tc.median {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.median)
		}
		if got := p95(tc.xs); got != tc.p95 {
			t.Errorf("p95(%v) = %v, want %v", tc.xs, got, tc.p95)
		}
		if !reflect.DeepEqual(orig, tc.xs) {
			t.Errorf("the input was reordered: %v", tc.xs)
		}
	}
	if got := medianInt([]int64{10, 11}); got != 10 {
		t.Errorf("medianInt = %d, want 10 (rounded down)", got)
	}
}

func TestSummarize(t *testing.T) {
	r := summarize([]sample{
		{seconds: 0.2, bytesDown: 300},
		{seconds: 0.1, bytesDown: 100},
		{seconds: 0.3, bytesDown: 200},
	}, 20480)
	want := result{MedianS: 0.2, P95S: 0.3, BytesDown: 200, PeakRSSMB: 20}
	if r != want {
		t.Errorf("summarize = %+v, want %+v", r, want)
	}
}

func TestMergeResultsKeepsOtherKeys(t *testing.T) {
	existing := []byte(`{"projector": {"x": [1, 2]}, "git": {"old": {}}}`)
	out, err := benchresults.Merge(existing, "git", gitResults{"large": {"minimal": {MedianS: 0.08, BytesDown: 2000}}})
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(doc["projector"], map[string]any{"x": []any{1.0, 2.0}}) {
		t.Errorf("projector key changed: %v", doc["projector"])
	}
	git := doc["git"].(map[string]any)
	if _, ok := git["old"]; ok {
		t.Error("the git key was merged into, not replaced")
	}
	m := git["large"].(map[string]any)["minimal"].(map[string]any)
	for _, k := range []string{"median_s", "p95_s", "bytes_down", "peak_rss_mb"} {
		if _, ok := m[k]; !ok {
			t.Errorf("result lacks %q: %v", k, m)
		}
	}
}

func TestReplaceEntry(t *testing.T) {
	listing := []byte("100644 blob 1111111111111111111111111111111111111111\tREADME.md\x00" +
		"040000 tree 2222222222222222222222222222222222222222\tdir with space\x00" +
		"100755 blob 3333333333333333333333333333333333333333\tbacklog.yaml\x00")
	got, err := replaceEntry(listing, "backlog.yaml", "4444444444444444444444444444444444444444")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(string(listing), "3333333333333333333333333333333333333333", "4444444444444444444444444444444444444444", 1)
	if string(got) != want {
		t.Errorf("replaceEntry = %q, want %q", got, want)
	}
	if _, err := replaceEntry(listing, "missing", "44"); err == nil {
		t.Error("replacing a missing entry succeeded")
	}
}

func TestBacklogParses(t *testing.T) {
	// The generated backlog must be one the services can append to.
	for _, rev := range []int{1, 2} {
		doc := []byte(backlog(rev))
		out, err := backlogedit.Append(doc, events.Task{ID: "T-1", Title: "t", AllowedPaths: []string{"a/"}})
		if err != nil {
			t.Fatalf("Append to backlog(%d): %v", rev, err)
		}
		if !strings.HasPrefix(string(out), string(doc)) {
			t.Errorf("Append changed backlog(%d) instead of appending", rev)
		}
	}
}
