package graph

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
)

func applyAll(t *testing.T, g *Graph, envs []events.Envelope) {
	t.Helper()
	for _, e := range envs {
		if !g.Apply(e) {
			t.Fatalf("new event %s %s reported as duplicate", e.AttemptID, e.EventType)
		}
	}
}

func summaryOf(g *Graph) string {
	s := g.Summary()
	return fmt.Sprint(s.NodesByType, s.EdgesByType)
}

// happy is the graph of one successful attempt.
const happy = "map[Attempt:1 Commit:1 PullRequest:1 Target:1 Task:1] map[DEPENDS_ON:2 PRODUCED:2]"

func TestOneAttempt(t *testing.T) {
	g := New()
	applyAll(t, g, eventgen.Attempt(7, eventgen.Succeeded))
	if got := summaryOf(g); got != happy {
		t.Fatalf("summary %s, want %s", got, happy)
	}
	d, ok := g.Attempt("a-0000007")
	if !ok || d.Node == nil {
		t.Fatal("no attempt node")
	}
	p := d.Node.Properties
	if d.Node.NodeID != "a-0000007" || p["status"] != "succeeded" || p["target"] != "atlas" || p["task_id"] != "T-2" ||
		*p["pr_url"].(*string) != "https://github.com/leviathan-dev/atlas/pull/8" {
		t.Fatalf("attempt node %+v", d.Node)
	}
	if len(d.Steps) != 8 || d.Steps[0].EventType != "attempt.requested" || d.Steps[7].EventType != "attempt.succeeded" {
		t.Fatalf("steps %+v", d.Steps)
	}
	if len(d.Artifacts) != 2 || d.Artifacts[0].NodeType != NodeCommit || d.Artifacts[1].NodeID != "pr:github.com/leviathan-dev/atlas#8" {
		t.Fatalf("artifacts %+v", d.Artifacts)
	}
	if it := g.Attempts("", 10)[0]; it.TaskTitle != "Propose backlog entry 2 for the atlas team" || it.CommitSHA == "" {
		t.Fatalf("attempt item %+v", it)
	}
	// The page's box reads owner/repo#N, not the host's first letters.
	if pic := g.Picture(5); len(pic.Columns[4]) != 1 || pic.Columns[4][0].Label != "leviathan-dev/atlas#8" {
		t.Fatalf("pull request boxes %+v", pic.Columns[4])
	}
}

func TestDuplicatesAndUnknownTypes(t *testing.T) {
	g := New()
	evs := append(eventgen.Attempt(1, eventgen.Succeeded), eventgen.Attempt(5, eventgen.Succeeded)...)
	applyAll(t, g, evs)
	before := summaryOf(g)
	for _, e := range evs {
		if g.Apply(e) {
			t.Fatalf("duplicate %s applied", e.EventType)
		}
	}
	if summaryOf(g) != before {
		t.Fatal("duplicates changed the graph")
	}
	// Attempts 1 and 5 propose different tasks to the same target.
	if before != "map[Attempt:2 Commit:2 PullRequest:2 Target:1 Task:2] map[DEPENDS_ON:4 PRODUCED:4]" {
		t.Fatalf("summary %s", before)
	}
	// An unknown type is stored (recent events, the attempt's timeline)
	// but makes no node or edge.
	unknown := evs[0]
	unknown.EventID, unknown.EventType = "x-1", "attempt.reviewed"
	if !g.Apply(unknown) {
		t.Fatal("unknown type not applied")
	}
	if summaryOf(g) != before {
		t.Fatal("unknown type changed the graph")
	}
	s := g.Summary()
	if len(s.RecentEvents) != len(evs)+1 || s.RecentEvents[0].EventType != "attempt.reviewed" || s.RecentEvents[0].AttemptID != "a-0000001" {
		t.Fatalf("recent %+v", s.RecentEvents[0])
	}
	if d, _ := g.Attempt("a-0000001"); d.Steps[len(d.Steps)-1].EventType != "attempt.reviewed" {
		t.Fatal("unknown event not in the timeline")
	}
}

func TestIDsAreUniqueAcrossTargets(t *testing.T) {
	g := New()
	ref := func(target string) events.Ref {
		return events.Ref{AttemptID: "a-" + target, TaskID: "T-1", TargetID: target}
	}
	for _, target := range []string{"alpha", "beta"} {
		r := ref(target)
		for _, ev := range []struct {
			t events.Type
			p any
		}{
			{events.AttemptCreated, events.Created{Ref: r, Status: "created"}},
			{events.BranchPushed, events.Pushed{Ref: r, CommitSHA: "c0ffee", BranchName: "b"}},
			// The same PR number in two repositories.
			{events.PRCreated, events.PROpened{Ref: r, PRNumber: 1, PRURL: "https://forge.example/o/" + target + "/pull/1"}},
		} {
			env, _ := events.New(ev.t, "test", r, ev.p, time.Now())
			g.Apply(env)
		}
	}
	if got := summaryOf(g); got != "map[Attempt:2 Commit:2 PullRequest:2 Target:2 Task:2] map[DEPENDS_ON:4 PRODUCED:4]" {
		t.Fatalf("summary %s", got)
	}
	d, _ := g.Attempt("a-beta")
	if d.Artifacts[0].NodeID != "commit:beta/c0ffee" || d.Artifacts[1].NodeID != "pr:forge.example/o/beta#1" {
		t.Fatalf("ids %s %s", d.Artifacts[0].NodeID, d.Artifacts[1].NodeID)
	}
}

// TestPythonEventsMakeTheSameGraph: the Python worker's four events give
// the graph a Go attempt gives, PR node included (the Python control
// plane lost it: its PR node needed fields the worker never sent).
func TestPythonEventsMakeTheSameGraph(t *testing.T) {
	g := New()
	applyAll(t, g, eventgen.Python("attempt-1", "radix"))
	if got := summaryOf(g); got != happy {
		t.Fatalf("summary %s, want %s", got, happy)
	}
	d, _ := g.Attempt("attempt-1")
	if d.Node.Properties["status"] != "succeeded" || len(d.Artifacts) != 2 || d.Artifacts[1].NodeID != "pr:github.com/o/radix#42" {
		t.Fatalf("attempt %+v %+v", d.Node, d.Artifacts)
	}
}

func TestRejectedAndFailedAttempts(t *testing.T) {
	g := New()
	applyAll(t, g, eventgen.Attempt(49, eventgen.Rejected))
	applyAll(t, g, eventgen.Attempt(45, eventgen.Failed))
	applyAll(t, g, eventgen.Attempt(48, eventgen.Unchanged))
	// A rejected request is no node; a failed and an unchanged attempt are.
	if got := summaryOf(g); got != "map[Attempt:2 Target:2 Task:2] map[DEPENDS_ON:4]" {
		t.Fatalf("summary %s", got)
	}
	f := g.Failures("", 10)
	if len(f) != 2 || f[0].FailureType != "path_violation" || f[0].Stage != "push" || f[0].Target != "radix" ||
		f[1].EventType != "attempt.rejected" || f[1].Target != "radix" || f[1].Error == "" {
		t.Fatalf("failures %+v", f)
	}
	if len(g.Failures("demo", 10)) != 0 || len(g.Failures("radix", 1)) != 1 {
		t.Fatal("failures filter")
	}
	if d, ok := g.Attempt("a-0000049"); !ok || d.Node != nil || d.Item.Status != "rejected" {
		t.Fatalf("rejected attempt %+v", d)
	}
}

func TestAttemptsListNewestFirst(t *testing.T) {
	g := New()
	applyAll(t, g, eventgen.Stream(400))
	all := g.Attempts("", 1000)
	if len(all) == 0 || all[0].Timestamp.Before(all[len(all)-1].Timestamp.Time) {
		t.Fatal("not newest first")
	}
	demo := g.Attempts("demo", 3)
	if len(demo) != 3 || demo[0].Target != "demo" || demo[0].AttemptID <= demo[1].AttemptID {
		t.Fatalf("demo %+v", demo)
	}
	if len(g.Attempts("nosuch", 3)) != 0 {
		t.Fatal("unknown target listed attempts")
	}
}

// TestSnapshotResumesExactly: a graph restored from a snapshot is the
// graph it was taken of (same snapshot bytes), and stays equal to one that
// never stopped as more events come.
func TestSnapshotResumesExactly(t *testing.T) {
	evs := eventgen.Stream(3000)
	evs = append(evs, eventgen.Python("attempt-py", "radix")...)
	live := New()
	applyAll(t, live, evs[:2000])
	snap, meta := live.MarshalSnapshot(42)
	restored, meta2, err := UnmarshalSnapshot(snap)
	if err != nil || meta2 != meta {
		t.Fatalf("unmarshal: %v %+v %+v", err, meta, meta2)
	}
	again, _ := restored.MarshalSnapshot(42)
	if !bytes.Equal(snap, again) {
		t.Fatal("restored graph encodes differently")
	}
	// Duplicates of events before the snapshot are still duplicates.
	if restored.Apply(evs[10]) {
		t.Fatal("restored graph forgot an event id")
	}
	applyAll(t, live, evs[2000:])
	applyAll(t, restored, evs[2000:])
	a, _ := live.MarshalSnapshot(42)
	b, _ := restored.MarshalSnapshot(42)
	if !bytes.Equal(a, b) || !bytes.Equal(live.SummaryJSON(), restored.SummaryJSON()) {
		t.Fatal("resumed graph differs from the live one")
	}
	// And a replay from nothing is the same graph again.
	replayed := New()
	applyAll(t, replayed, evs)
	c, _ := replayed.MarshalSnapshot(42)
	if !bytes.Equal(a, c) {
		t.Fatal("replayed graph differs")
	}
}

func TestSnapshotDamageIsAnError(t *testing.T) {
	g := New()
	applyAll(t, g, eventgen.Stream(300))
	snap, _ := g.MarshalSnapshot(1)
	for _, n := range []int{0, 5, 9, len(snap) / 3, len(snap) / 2, len(snap) - 1} {
		if _, _, err := UnmarshalSnapshot(snap[:n]); err == nil {
			t.Errorf("truncated to %d bytes: accepted", n)
		}
	}
	other := append([]byte{}, snap...)
	other[len(snapshotMagic)] = SnapshotVersion + 1
	if _, _, err := UnmarshalSnapshot(other); err == nil {
		t.Error("another version accepted")
	}
	// Flipped bytes may decode (a string's contents), but never panic.
	for i := len(snapshotMagic) + 1; i < len(snap); i += 97 {
		bad := append([]byte{}, snap...)
		bad[i] ^= 0xa5
		_, _, _ = UnmarshalSnapshot(bad)
	}
}

func FuzzUnmarshalSnapshot(f *testing.F) {
	g := New()
	for _, e := range eventgen.Stream(40) {
		g.Apply(e)
	}
	snap, _ := g.MarshalSnapshot(1)
	f.Add(snap)
	f.Fuzz(func(t *testing.T, data []byte) {
		g, _, err := UnmarshalSnapshot(data)
		if err == nil {
			// Whatever decodes must be usable.
			_ = g.SummaryJSON()
			_ = g.Attempts("", 5)
			_ = g.Failures("", 5)
			_, _ = g.MarshalSnapshot(1)
		}
	})
}

func TestSummaryJSONIsCached(t *testing.T) {
	g := New()
	applyAll(t, g, eventgen.Stream(100))
	a := g.SummaryJSON()
	if b := g.SummaryJSON(); &a[0] != &b[0] {
		t.Fatal("summary not cached")
	}
	g.Apply(eventgen.Attempt(1000, eventgen.Succeeded)[0])
	if c := g.SummaryJSON(); bytes.Equal(a, c) {
		t.Fatal("cache not invalidated")
	}
	var s Summary
	if err := json.Unmarshal(a, &s); err != nil || len(s.RecentEvents) != SummaryEvents {
		t.Fatalf("summary JSON: %v %s", err, a)
	}
}

// TestAttemptsByStatus: the counts kept as events are applied are those of
// the attempts, and a snapshot's graph has the same.
func TestAttemptsByStatus(t *testing.T) {
	g := New()
	evs := eventgen.Stream(3000)
	applyAll(t, g, evs[:len(evs)-3]) // the last attempt unfinished
	want := map[string]int{}
	for _, a := range g.records {
		name := g.syms.str(a.status)
		if name == "" {
			name = "unknown"
		}
		want[name]++
	}
	if got := g.AttemptsByStatus(); !maps.Equal(got, want) || len(want) < 4 {
		t.Fatalf("by status %v, want %v", got, want)
	}
	data, _ := g.MarshalSnapshot(0)
	restored, _, err := UnmarshalSnapshot(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := restored.AttemptsByStatus(); !maps.Equal(got, want) {
		t.Fatalf("restored by status %v, want %v", got, want)
	}
}

// TestPullRequestWithoutNumber: a pr.created with only a URL (upstream's
// placeholder URLs) makes a PullRequest node, and two with one URL make
// one.
func TestPullRequestWithoutNumber(t *testing.T) {
	g := New()
	at := time.Date(2026, 1, 28, 12, 0, 0, 0, time.UTC)
	for i, attempt := range []string{"attempt-1", "attempt-2", "attempt-3"} {
		url := "https://github.com/org/repo/pull/placeholder"
		if i == 2 {
			url = "https://github.com/org/other/pull/placeholder"
		}
		for j, typ := range []string{"attempt.created", "pr.created"} {
			g.Apply(events.Envelope{EventID: fmt.Sprintf("e-%d-%d", i, j), EventType: events.Type(typ), Timestamp: at, AttemptID: attempt,
				TargetID: "radix", Payload: json.RawMessage(fmt.Sprintf(`{"attempt_id":%q,"pr_url":%q,"title":"t","state":"open"}`, attempt, url))})
		}
	}
	if n := g.Summary().NodesByType[NodePullRequest]; n != 2 {
		t.Fatalf("%d PullRequest nodes, want 2 (one per URL)", n)
	}
	d, _ := g.Attempt("attempt-1")
	if len(d.Artifacts) != 1 || d.Artifacts[0].Properties["pr_number"] != nil || d.Artifacts[0].Properties["pr_url"] != "https://github.com/org/repo/pull/placeholder" {
		t.Fatalf("artifacts %+v", d.Artifacts)
	}
}

// TestArtifacts: artifact.created makes an Artifact node, with a PRODUCED
// edge from the attempt that made it, listed among the attempt's
// artifacts; one without an attempt is a node alone; a snapshot keeps
// them.
func TestArtifacts(t *testing.T) {
	g := New()
	at := time.Date(2026, 1, 28, 12, 0, 0, 0, time.UTC)
	add := func(id, typ, attempt, payload string) {
		g.Apply(events.Envelope{EventID: id, EventType: events.Type(typ), Timestamp: at, AttemptID: attempt, TargetID: "radix", Payload: json.RawMessage(payload)})
	}
	add("e-1", "attempt.created", "attempt-001", `{"attempt_id":"attempt-001","task_id":"task-001","attempt_number":1}`)
	add("e-2", "artifact.created", "attempt-001", `{"attempt_id":"attempt-001","artifact_id":"artifact-001","sha256":"`+strings.Repeat("a", 64)+`","artifact_type":"log","size_bytes":1024,"storage_path":"/a"}`)
	add("e-3", "artifact.created", "", `{"artifact_id":"artifact-002","sha256":"b","artifact_type":"bundle","size_bytes":1,"storage_path":"/b"}`)
	s := g.Summary()
	if s.NodesByType[NodeArtifact] != 2 || s.EdgesByType[EdgeProduced] != 1 {
		t.Fatalf("summary %v %v", s.NodesByType, s.EdgesByType)
	}
	d, _ := g.Attempt("attempt-001")
	if len(d.Artifacts) != 1 || d.Artifacts[0].NodeID != "artifact-001" || d.Artifacts[0].NodeType != NodeArtifact ||
		d.Artifacts[0].Properties["size_bytes"] != int64(1024) {
		t.Fatalf("artifacts %+v", d.Artifacts)
	}
	data, _ := g.MarshalSnapshot(0)
	g2, _, err := UnmarshalSnapshot(data)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := g2.MarshalSnapshot(0); !bytes.Equal(again, data) || fmt.Sprint(g2.Summary().NodesByType) != fmt.Sprint(s.NodesByType) {
		t.Fatal("the snapshot lost the artifacts")
	}
}

// TestRequestCredentialsNotKept: a request carrying a credential in its
// repo_url is projected before clone erases it; the graph keeps the URL
// without it.
func TestRequestCredentialsNotKept(t *testing.T) {
	g := New()
	at := time.Date(2026, 1, 28, 12, 0, 0, 0, time.UTC)
	g.Apply(events.Envelope{EventID: "e-1", EventType: events.AttemptRequested, Timestamp: at, AttemptID: "a-1", TargetID: "demo",
		Payload: json.RawMessage(`{"attempt_id":"a-1","target":{"name":"demo","repo_url":"https://x:s3cretpass@github.com/o/r.git?token=abc"},"task":{"id":"T","title":"t"}}`)})
	g.Apply(events.Envelope{EventID: "e-2", EventType: events.AttemptCreated, Timestamp: at, AttemptID: "a-1", TargetID: "demo",
		Payload: json.RawMessage(`{"attempt_id":"a-1","task_id":"T","target_id":"demo","repo_url":"https://x:s3cretpass@github.com/o/r.git"}`)})
	data, _ := g.MarshalSnapshot(0)
	if bytes.Contains(data, []byte("s3cretpass")) || bytes.Contains(data, []byte("token=abc")) {
		t.Fatal("the graph keeps a credential from a request")
	}
}

// TestPullRequestRecords: pr.created without an attempt makes a
// PullRequest node (one per repository and number, or per URL, or, with
// neither, per event), as upstream's projection does; one with an attempt
// but neither number nor URL is linked to the attempt.
func TestPullRequestRecords(t *testing.T) {
	g := New()
	at := time.Date(2026, 1, 28, 12, 0, 0, 0, time.UTC)
	for i, payload := range []string{
		`{"pr_number":123,"pr_url":"https://github.com/org/r1/pull/123","title":"T","state":"open"}`,
		`{"pr_url":"https://github.com/org/r2/pull/placeholder","title":"T"}`,
		`{"pr_url":"https://github.com/org/r2/pull/placeholder","title":"T"}`, // the same: no new node
		`{"title":"T","state":"open","pr_url":""}`,
		`{"title":"T2"}`,
	} {
		g.Apply(events.Envelope{EventID: fmt.Sprintf("pr-event-%d", i), EventType: events.PRCreated, Timestamp: at,
			TargetID: "radix", Payload: json.RawMessage(payload)})
	}
	if n := g.Summary().NodesByType[NodePullRequest]; n != 4 {
		t.Fatalf("%d PullRequest nodes, want 4", n)
	}
	g.Apply(events.Envelope{EventID: "c", EventType: events.AttemptCreated, Timestamp: at, AttemptID: "a-m3", TargetID: "radix",
		Payload: json.RawMessage(`{"attempt_id":"a-m3"}`)})
	g.Apply(events.Envelope{EventID: "p", EventType: events.PRCreated, Timestamp: at, AttemptID: "a-m3", TargetID: "radix",
		Payload: json.RawMessage(`{"attempt_id":"a-m3","pr_url":"","title":"x"}`)})
	d, _ := g.Attempt("a-m3")
	if len(d.Artifacts) != 1 || d.Artifacts[0].NodeID != "pr:event:p" || d.Artifacts[0].Properties["pr_url"] != "" {
		t.Fatalf("artifacts %+v", d.Artifacts)
	}
	snap, _ := g.MarshalSnapshot(1)
	if _, _, err := UnmarshalSnapshot(snap); err != nil {
		t.Fatal(err)
	}
}

// TestDuplicateRequestRow: an ignored duplicate request is listed with the
// failures under its own task id, and is not its attempt's failure, live
// or after a snapshot.
func TestDuplicateRequestRow(t *testing.T) {
	g := New()
	evs := eventgen.Attempt(7, eventgen.Succeeded)
	applyAll(t, g, evs)
	dup, err := events.New(events.RequestDuplicate, "clone-1", events.Ref{AttemptID: "a-0000007", TaskID: "T-other", TargetID: "atlas"},
		events.Duplicate{Ref: events.Ref{AttemptID: "a-0000007", TaskID: "T-other", TargetID: "atlas"}, Reason: "attempt id a-0000007 is already taken", Seq: 99, FirstSeq: 1},
		evs[len(evs)-1].Timestamp.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	applyAll(t, g, []events.Envelope{dup})
	snap, _ := g.MarshalSnapshot(1)
	restored, _, err := UnmarshalSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	for name, g := range map[string]*Graph{"live": g, "restored": restored} {
		fs := g.Failures("", 10)
		if len(fs) != 1 || fs[0].FailureType != "duplicate_request" || fs[0].TaskID != "T-other" || fs[0].AttemptID != "a-0000007" {
			t.Errorf("%s: failures %+v, want the duplicate under its own task T-other", name, fs)
		}
		if d, _ := g.Attempt("a-0000007"); d.Node.Properties["status"] != "succeeded" || d.Node.Properties["failure_type"] != nil {
			t.Errorf("%s: attempt %v, want it untouched by the duplicate", name, d.Node.Properties)
		}
	}
}
