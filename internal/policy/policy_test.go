package policy

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/natstest"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr bool
		auto    bool
		limit   int
	}{
		{`{}`, false, true, DefaultMaxOpenPRs},
		{`{"autonomy_enabled": false}`, false, false, DefaultMaxOpenPRs},
		{`{"autonomy_enabled": true, "max_open_prs": 0}`, false, true, 0},
		{`{"max_open_prs": 5, "allowed_path_prefixes": [".leviathan/"]}`, false, true, 5},
		{`{"max_open_pr": 5}`, true, false, 0},                  // a typo must not disable the cap
		{`{"autonomy_enabled": "no"}`, true, false, 0},          // wrong type
		{`{"max_open_prs": -1}`, true, false, 0},                // negative
		{`{"allowed_path_prefixes": ["../x"]}`, true, false, 0}, // escapes
		{`not json`, true, false, 0},
	} {
		p, err := Parse([]byte(tc.in))
		if tc.wantErr {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: err %v, want ErrInvalid", tc.in, err)
			}
			continue
		}
		if err != nil || p.Autonomy() != tc.auto || p.OpenPRLimit() != tc.limit {
			t.Errorf("%s: %+v autonomy %v limit %d err %v", tc.in, p, p.Autonomy(), p.OpenPRLimit(), err)
		}
	}
}

func TestPathsOutside(t *testing.T) {
	p := Policy{AllowedPathPrefixes: []string{".leviathan", "docs/"}}
	got := p.PathsOutside([]string{".leviathan/backlog.yaml", "docs/a.md", "docsx/b.md", "README.md", ".leviathanx"})
	if strings.Join(got, ",") != "docsx/b.md,README.md,.leviathanx" {
		t.Fatalf("outside = %v", got)
	}
	if got := (Policy{}).PathsOutside([]string{"anything"}); got != nil {
		t.Fatalf("no prefixes: %v", got)
	}
}

func TestMarkerAndGuardrails(t *testing.T) {
	body := "text\n" + Marker("T-1.a:b", "a-1") + "\nmore"
	if task, attempt, ok := MarkedTask(body); !ok || task != "T-1.a:b" || attempt != "a-1" {
		t.Fatalf("MarkedTask = %q %q %v", task, attempt, ok)
	}
	const prefix = "agent/backlog-propose-"
	open := []forge.PullRequest{
		{Number: 1, State: forge.StateOpen, Head: prefix + "a-1", Body: Marker("T-1", "a-1")},
		{Number: 2, State: forge.StateOpen, Head: "custom/branch", Body: Marker("T-2", "a-2")},
		{Number: 3, State: forge.StateOpen, Head: "human/feature", Body: "a human's PR"},
	}
	if pr, ok := OpenForTask(open, "T-2"); !ok || pr.Number != 2 {
		t.Fatalf("OpenForTask(T-2) = %+v %v", pr, ok)
	}
	if _, ok := OpenForTask(open, "T-3"); ok {
		t.Fatal("found a PR for T-3")
	}
	two := 2
	err := CheckCapacity(Policy{MaxOpenPRs: &two}, "demo", open, prefix)
	if !errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), "2 of 2 open (#1, #2)") {
		t.Fatalf("capacity at the limit: %v", err)
	}
	three := 3
	if err := CheckCapacity(Policy{MaxOpenPRs: &three}, "demo", open, prefix); err != nil {
		t.Fatalf("a human's PR counted: %v", err)
	}
	off := false
	if err := CheckAutonomy(Policy{AutonomyEnabled: &off}, "demo"); !errors.Is(err, ErrBlocked) || !strings.Contains(err.Error(), "autonomy_enabled=false") {
		t.Fatalf("kill switch: %v", err)
	}
	if err := CheckAutonomy(Policy{}, "demo"); err != nil {
		t.Fatalf("default autonomy: %v", err)
	}
}

func TestStore(t *testing.T) {
	_, js := natstest.Connect(t, natstest.Run(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := stage.Ensure(ctx, js, stage.ResourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s := Store{KV: res.Config}
	if p, err := s.Get(ctx, "demo"); err != nil || !p.Autonomy() || p.OpenPRLimit() != DefaultMaxOpenPRs {
		t.Fatalf("no policy: %+v %v", p, err)
	}
	five, off := 5, false
	if err := s.Put(ctx, "demo", Policy{AutonomyEnabled: &off, MaxOpenPRs: &five}); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Get(ctx, "demo"); err != nil || p.Autonomy() || p.OpenPRLimit() != 5 {
		t.Fatalf("stored policy: %+v %v", p, err)
	}
	// What an operator types with `nats kv put` is read the same way,
	// and a broken value is an error, never the defaults.
	if _, err := res.Config.Put(ctx, "other", []byte(`{"max_open_prs": "5"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "other"); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "other") {
		t.Fatalf("broken policy: %v", err)
	}
	if ts, err := s.Targets(ctx); err != nil || strings.Join(ts, ",") != "demo,other" {
		t.Fatalf("targets %v %v", ts, err)
	}
	neg := -1
	if err := s.Put(ctx, "demo", Policy{MaxOpenPRs: &neg}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative cap stored: %v", err)
	}
	if err := s.Delete(ctx, "demo"); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Get(ctx, "demo"); err != nil || !p.Autonomy() {
		t.Fatalf("after delete: %+v %v", p, err)
	}
}

// markerPattern is what MarkedTask finds, as a regular expression.
var markerPattern = regexp.MustCompile(`<!-- leviathan:task=([A-Za-z0-9_.:-]{1,128}) attempt=([A-Za-z0-9_-]{1,128}) -->`)

// FuzzMarkedTask: MarkedTask finds what markerPattern finds, the first
// match, in any body.
func FuzzMarkedTask(f *testing.F) {
	long := strings.Repeat("t", 128)
	for _, body := range []string{
		"", Marker("T-1", "a-1"), "x" + Marker("T-1.a:b", "attempt-T-1-0a") + "y",
		Marker("T 1", "a") + Marker("T-2", "a-2"), // the first is no marker
		"<!-- leviathan:task=<!-- leviathan:task=T-3 attempt=a-3 -->",
		Marker(long, long), Marker(long+"t", "a"), Marker("T", long+"a"),
		Marker("", "a"), Marker("T", ""), Marker("T", "a.b"), Marker("T-é", "a"),
		"<!-- leviathan:task=T attempt=a --", "<!-- leviathan:task=T  attempt=a -->",
		Marker("T-4", "a-4") + Marker("T-5", "a-5"),
	} {
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		task, attempt, ok := MarkedTask(body)
		m := markerPattern.FindStringSubmatch(body)
		if ok != (m != nil) || ok && (task != m[1] || attempt != m[2]) {
			t.Fatalf("MarkedTask(%q) = %q %q %v; the expression finds %q", body, task, attempt, ok, m)
		}
	})
}
