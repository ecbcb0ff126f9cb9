package projector

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// flow is the events of one successful attempt.
func flow(attempt, target, task, sha string, pr int) []events.Envelope {
	ref := events.Ref{AttemptID: attempt, TaskID: task, TargetID: target}
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	mk := func(t events.Type, p any) events.Envelope {
		at = at.Add(time.Second)
		env, _ := events.New(t, "test", ref, p, at)
		return env
	}
	url := fmt.Sprintf("https://forge/%s/pull/%d", target, pr)
	return []events.Envelope{
		mk(events.AttemptRequested, events.Request{Ref: ref, Task: events.Task{ID: task, Title: "Title " + task}}),
		mk(events.AttemptCreated, events.Created{Ref: ref, Status: "created"}),
		mk(events.AttemptStarted, events.Started{Ref: ref, Status: "running"}),
		mk(events.BranchPushed, events.Pushed{Ref: ref, CommitSHA: sha, BranchName: "b"}),
		mk(events.PRCreated, events.PROpened{Ref: ref, PRNumber: pr, PRURL: url, Repo: "o/" + target}),
		mk(events.AttemptSucceeded, events.Succeeded{Ref: ref, Status: "succeeded", PRNumber: &pr, PRURL: &url}),
	}
}

func TestGraphCountsAndDuplicates(t *testing.T) {
	g := NewGraph()
	evs := append(flow("a-1", "alpha", "T-1", "c1", 1), flow("a-2", "beta", "T-1", "c1", 1)...)
	for _, e := range evs {
		if !g.Apply(e) {
			t.Fatalf("new event %s reported as duplicate", e.EventType)
		}
	}
	for _, e := range evs {
		if g.Apply(e) {
			t.Fatalf("duplicate %s applied", e.EventType)
		}
	}
	// An unknown type shows in recent events but makes no node.
	unknown := evs[0]
	unknown.EventID, unknown.EventType = "x-1", "attempt.reviewed"
	g.Apply(unknown)

	s := g.Summary()
	// Same task id and commit sha on two targets are different nodes.
	want := map[string]int{"Target": 2, "Task": 2, "Attempt": 2, "Commit": 2, "PullRequest": 2}
	if fmt.Sprint(s.NodesByType) != fmt.Sprint(want) {
		t.Fatalf("nodes %v, want %v", s.NodesByType, want)
	}
	if s.EdgesByType["DEPENDS_ON"] != 4 || s.EdgesByType["PRODUCED"] != 4 {
		t.Fatalf("edges %v", s.EdgesByType)
	}
	if len(s.RecentEvents) != 13 || s.RecentEvents[0].EventType != "attempt.reviewed" || s.RecentEvents[1].AttemptID != "a-2" {
		t.Fatalf("recent %+v", s.RecentEvents)
	}
	if n := g.Nodes(NodeAttempt); n[0].Props["status"] != "succeeded" {
		t.Fatalf("attempt status %v", n[0].Props)
	}
	if n := g.Nodes(NodeTask); n[0].Props["title"] != "Title T-1" {
		t.Fatalf("task props %v", n[0].Props)
	}
}

func TestGraphIsDeterministic(t *testing.T) {
	a, b := NewGraph(), NewGraph()
	for i := 0; i < 30; i++ {
		for _, e := range flow(fmt.Sprintf("a-%d", i), "t", fmt.Sprintf("T-%d", i%7), fmt.Sprintf("c%d", i), i) {
			a.Apply(e)
			b.Apply(e)
		}
	}
	ja, _ := json.Marshal(a.Summary())
	jb, _ := json.Marshal(b.Summary())
	if string(ja) != string(jb) {
		t.Fatal("same events gave different summaries")
	}
	if got := len(a.Summary().RecentEvents); got != recentLimit {
		t.Fatalf("recent events %d, want %d", got, recentLimit)
	}
}

func TestAPIAuth(t *testing.T) {
	p := &Projector{graph: NewGraph()}
	p.ready.Store(true)
	srv := httptest.NewServer(NewAPI(p, "s3cret").Handler())
	defer srv.Close()
	cases := []struct {
		path, auth string
		status     int
	}{
		{"/v1/graph/summary", "", 401},
		{"/v1/graph/summary", "Bearer wrong", 401},
		{"/v1/graph/summary", "Basic s3cret", 401},
		{"/v1/graph/summary", "Bearer s3cret", 200},
		{"/v1/nothing", "", 401},
		{"/v1/nothing", "Bearer s3cret", 404},
		{"/healthz", "", 200},
		{"/readyz", "", 200},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+c.path, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != c.status || err != nil || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %q: status %d (%v), want %d JSON", c.path, c.auth, resp.StatusCode, err, c.status)
		}
		if c.status == 401 && body["detail"] == nil {
			t.Errorf("%s: 401 without detail: %v", c.path, body)
		}
	}
}
