package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector/api"
)

// startTestStack runs the embedded stack on free ports in a temp dir.
func startTestStack(t *testing.T, tune func(*stage.Config)) *Stack {
	t.Helper()
	return startTestStackWith(t, StackConfig{}, tune)
}

// startTestStackWith is startTestStack with some of the configuration set.
func startTestStackWith(t *testing.T, cfg StackConfig, tune func(*stage.Config)) *Stack {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is not installed: Leviathan needs it (make test installs it with apt-get)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg.DataDir, cfg.NATSAddr, cfg.ForgeAddr, cfg.HTTPAddr = t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Dial == nil {
		cfg.Dial = loopbackOnly(t)
	}
	cfg.Tune = func(c *stage.Config) {
		c.AckWait = time.Second
		c.MaxDeliver = 3
		c.RetryDelays = []time.Duration{100 * time.Millisecond}
		if tune != nil {
			tune(c)
		}
	}
	s, err := StartStack(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// loopbackOnly is the services' dialer in tests: it reaches loopback only
// and fails the test if anything tried to reach another address, so a
// wrong egress policy cannot touch another host.
func loopbackOnly(t *testing.T) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var mu sync.Mutex
	var refused []string
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if len(refused) > 0 {
			t.Errorf("the services dialed non-loopback addresses: %v", refused)
		}
	})
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(addr)
		if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
			mu.Lock()
			refused = append(refused, addr)
			mu.Unlock()
			return nil, fmt.Errorf("test dialer: %s is not loopback", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}

// bareRequest is what a user publishes with `nats pub`: no envelope.
func bareRequest(s *Stack, taskID string, allowed ...string) []byte {
	if len(allowed) == 0 {
		allowed = []string{events.BacklogPath}
	}
	b, _ := json.Marshal(map[string]any{
		"target": map[string]any{"name": "demo", "repo_url": s.DemoRepoURL(), "branch": "main"},
		"task": map[string]any{"id": taskID, "title": "Task " + taskID, "priority": "high",
			"allowed_paths": allowed, "acceptance_criteria": []string{"works"}},
	})
	return b
}

// publishBare publishes into the stream the way `nats pub` does: a plain
// core NATS publish with no headers.
func publishBare(t *testing.T, s *Stack, attemptID string, body []byte) {
	t.Helper()
	// The subject as a user types it: the id as it is, not encoded.
	if err := s.NATS().Publish(events.SubjectPrefix+"."+attemptID+"."+string(events.AttemptRequested), body); err != nil {
		t.Fatal(err)
	}
	if err := s.NATS().Flush(); err != nil {
		t.Fatal(err)
	}
}

// attemptEvents reads an attempt's events from the stream until its
// terminal event, or fails the test after the timeout.
func attemptEvents(t *testing.T, s *Stack, attemptID string) []events.Envelope {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js, _ := jetstream.New(s.NATS())
	cons, err := js.OrderedConsumer(ctx, stage.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.AttemptSubjects(attemptID)},
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Envelope
	for {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			t.Fatalf("attempt %s: no terminal event (have %v): %v", attemptID, types(out), err)
		}
		env, err := events.Decode(msg.Data())
		if err != nil {
			continue // the bare request
		}
		out = append(out, env)
		if env.EventType.Terminal() {
			return out
		}
	}
}

func types(envs []events.Envelope) []string {
	var ts []string
	for _, e := range envs {
		if e.EventType != events.AttemptRequested {
			ts = append(ts, string(e.EventType))
		}
	}
	return ts
}

// countSubject counts the stream messages on a subject.
func countSubject(t *testing.T, s *Stack, subject string) int {
	t.Helper()
	js, _ := jetstream.New(s.NATS())
	st, err := js.Stream(context.Background(), stage.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Subjects[subject])
}

func gitOut(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"--git-dir", dir}, args...)...).Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return string(out)
}

func summary(t *testing.T, s *Stack) api.Summary {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.ControlURL+"/v1/graph/summary", nil)
	req.Header.Set("Authorization", "Bearer "+s.ControlToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum api.Summary
	if err := json.NewDecoder(resp.Body).Decode(&sum); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("summary: status %d, %v", resp.StatusCode, err)
	}
	return sum
}

// waitApplied waits until the projector has applied the whole stream.
func waitApplied(t *testing.T, s *Stack) {
	t.Helper()
	js, _ := jetstream.New(s.NATS())
	st, _ := js.Stream(context.Background(), stage.StreamName)
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Applied() < info.State.LastSeq {
		if time.Now().After(deadline) {
			t.Fatalf("projector applied %d of %d", s.Applied(), info.State.LastSeq)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitConsumerIdle waits until a stage consumer has delivered and acked
// everything in its filter, so "nothing more happened" is a fact, not a
// guess about timing.
func waitConsumerIdle(t *testing.T, s *Stack, name string) {
	t.Helper()
	js, _ := jetstream.New(s.NATS())
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := js.Consumer(context.Background(), stage.StreamName, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s not idle: pending %d, ack pending %d", name, info.NumPending, info.NumAckPending)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var happyPath = []string{"attempt.created", "attempt.started", "repo.fetched", "backlog.edited",
	"branch.pushed", "pr.created", "attempt.succeeded"}

func TestBareRequestEndsInOnePR(t *testing.T) {
	s := startTestStack(t, nil)
	publishBare(t, s, "a-bare", bareRequest(s, "T-1"))
	evs := attemptEvents(t, s, "a-bare")
	if got := strings.Join(types(evs), ","); got != strings.Join(happyPath, ",") {
		t.Fatalf("events = %s\nwant     %s", got, strings.Join(happyPath, ","))
	}

	prs, err := s.Forge().Pulls(demoOwner, demoRepo)
	if err != nil || len(prs) != 1 {
		t.Fatalf("pulls = %v, %v; want one", prs, err)
	}
	pr := prs[0]
	if pr.Head != events.DefaultBranchPrefix+"a-bare" || pr.Base != "main" || pr.Title != "Leviathan: Task T-1" {
		t.Fatalf("pr = %+v", pr)
	}
	dir := s.Forge().RepoDir(demoOwner, demoRepo)
	if diff := strings.TrimSpace(gitOut(t, dir, "diff", "--name-only", "main", pr.Head)); diff != events.BacklogPath {
		t.Fatalf("diff against main = %q, want only %s", diff, events.BacklogPath)
	}
	before := gitOut(t, dir, "show", "main:"+events.BacklogPath)
	after := gitOut(t, dir, "show", pr.Head+":"+events.BacklogPath)
	if before != demoBacklog || !onlyInsertion(before, after) || !strings.Contains(after, "id: T-1") {
		t.Fatalf("backlog not kept byte for byte:\n--- before\n%s--- after\n%s", before, after)
	}
	if msg := gitOut(t, dir, "log", "-1", "--format=%an <%ae>|%s", pr.Head); strings.TrimSpace(msg) != "Leviathan <leviathan@example.com>|Leviathan: Propose task T-1" {
		t.Fatalf("commit = %q", msg)
	}

	waitApplied(t, s)
	sum := summary(t, s)
	wantNodes := map[string]int{"Target": 1, "Task": 1, "Attempt": 1, "Commit": 1, "PullRequest": 1}
	wantEdges := map[string]int{"DEPENDS_ON": 2, "PRODUCED": 2}
	if fmt.Sprint(sum.NodesByType) != fmt.Sprint(wantNodes) || fmt.Sprint(sum.EdgesByType) != fmt.Sprint(wantEdges) {
		t.Fatalf("summary nodes %v edges %v; want %v %v", sum.NodesByType, sum.EdgesByType, wantNodes, wantEdges)
	}
	if len(sum.RecentEvents) != 8 || sum.RecentEvents[0].EventType != "attempt.succeeded" {
		t.Fatalf("recent events = %+v", sum.RecentEvents)
	}
}

// onlyInsertion reports whether after is before with one block inserted.
func onlyInsertion(before, after string) bool {
	p := 0
	for p < len(before) && p < len(after) && before[p] == after[p] {
		p++
	}
	s := 0
	for s < len(before)-p && s < len(after)-p && before[len(before)-1-s] == after[len(after)-1-s] {
		s++
	}
	return p+s == len(before) && len(after) > len(before)
}

func TestDuplicateRequestYieldsOnePR(t *testing.T) {
	s := startTestStack(t, nil)
	body := bareRequest(s, "T-dup")
	publishBare(t, s, "a-dup", body)
	publishBare(t, s, "a-dup", body)
	evs := slices.DeleteFunc(attemptEvents(t, s, "a-dup"), func(e events.Envelope) bool { return e.EventType == events.RequestDuplicate })
	if got := strings.Join(types(evs), ","); got != strings.Join(happyPath, ",") {
		t.Fatalf("events = %s", got)
	}
	for _, c := range []string{"clone", "backlog-edit", "push", "pr"} {
		waitConsumerIdle(t, s, c)
	}
	if n := countSubject(t, s, events.Subject("a-dup", events.AttemptRequested)); n != 2 {
		t.Fatalf("requests in stream = %d, want both copies", n)
	}
	if n := countSubject(t, s, events.Subject("a-dup", events.AttemptSucceeded)); n != 1 {
		t.Fatalf("attempt.succeeded = %d, want 1", n)
	}
	if prs, _ := s.Forge().Pulls(demoOwner, demoRepo); len(prs) != 1 {
		t.Fatalf("pulls = %d, want 1", len(prs))
	}
	// The ignored copy is said where users look: in the failures, with
	// the attempt id and why, and counted; the attempt is untouched and
	// its timeline has one request.
	// A third copy, after the attempt ended, must not move its last
	// update either.
	publishBare(t, s, "a-dup", body)
	for countSubject(t, s, events.Subject("a-dup", events.RequestDuplicate)) != 2 {
		time.Sleep(10 * time.Millisecond)
	}
	waitApplied(t, s)
	var fs struct {
		Failures []map[string]any `json:"failures"`
	}
	getJSON(t, s, "/v1/failures", &fs)
	if len(fs.Failures) != 2 || fs.Failures[0]["attempt_id"] != "a-dup" || fs.Failures[0]["failure_type"] != "duplicate_request" ||
		!strings.Contains(fs.Failures[0]["error"].(string), "already taken") {
		t.Fatalf("failures %v", fs.Failures)
	}
	var at struct {
		Node struct {
			Properties map[string]any `json:"properties"`
			UpdatedAt  string         `json:"updated_at"`
		} `json:"attempt_node"`
		Events []map[string]any `json:"events"`
	}
	getJSON(t, s, "/v1/attempts/a-dup", &at)
	if last := at.Events[len(at.Events)-1]; at.Node.UpdatedAt != last["timestamp"] {
		t.Fatalf("updated_at %s, want its last event's time %v (the ignored request moved it)", at.Node.UpdatedAt, last["timestamp"])
	}
	requested := 0
	for _, e := range at.Events {
		if e["event_type"] == string(events.AttemptRequested) {
			requested++
		}
	}
	if at.Node.Properties["status"] != "succeeded" || at.Node.Properties["failure_type"] != nil || requested != 1 {
		t.Fatalf("attempt after a duplicate: %v, %d requests on its timeline", at.Node.Properties, requested)
	}
	if m := scrape(t, s.ControlURL+"/metrics"); !strings.Contains(m, "leviathan_duplicate_requests_total 2") {
		t.Fatalf("metrics lack the duplicate:\n%s", m)
	}
}

// getJSON GETs a control plane path and decodes its answer into v.
func getJSON(t *testing.T, s *Stack, path string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.ControlURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+s.ControlToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d, %v", path, resp.StatusCode, err)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestCrashBetweenPublishAndAck(t *testing.T) {
	var mu sync.Mutex
	deliveries := map[string]int{}
	s := startTestStack(t, func(c *stage.Config) {
		name := c.Name
		c.BeforeAck = func(in *stage.Input) error {
			mu.Lock()
			defer mu.Unlock()
			deliveries[name]++
			if in.Deliveries == 1 {
				return errors.New("simulated crash after publish")
			}
			return nil
		}
	})
	publishBare(t, s, "a-crash", bareRequest(s, "T-crash"))
	evs := attemptEvents(t, s, "a-crash")
	if got := strings.Join(types(evs), ","); got != strings.Join(happyPath, ",") {
		t.Fatalf("events = %s", got)
	}
	for _, c := range []string{"clone", "backlog-edit", "push", "pr"} {
		waitConsumerIdle(t, s, c)
	}
	mu.Lock()
	for _, c := range []string{"clone", "backlog-edit", "push", "pr"} {
		if deliveries[c] != 2 {
			t.Errorf("stage %s ran %d times, want 2 (crash, then redelivery)", c, deliveries[c])
		}
	}
	mu.Unlock()
	for _, typ := range []events.Type{events.PRCreated, events.AttemptSucceeded, events.BranchPushed} {
		if n := countSubject(t, s, events.Subject("a-crash", typ)); n != 1 {
			t.Errorf("%s in stream = %d, want 1", typ, n)
		}
	}
	if prs, _ := s.Forge().Pulls(demoOwner, demoRepo); len(prs) != 1 {
		t.Fatalf("pulls = %d, want 1", len(prs))
	}
}

func TestInvalidRequestsAreRejected(t *testing.T) {
	s := startTestStack(t, nil)
	cases := []struct {
		attempt string
		body    []byte
		field   string
	}{
		{"bad!id", bareRequest(s, "T-x"), "attempt_id"},
		{"a-notask", []byte(strings.Replace(string(bareRequest(s, "T-x")), `"id":"T-x",`, "", 1)), "task.id"},
		{"a-dotdot", bareRequest(s, "T-y", "../etc/passwd"), "task.allowed_paths[0]"},
		{"a-notjson", []byte("{not json"), "body"},
		{"a-creds", bytes.Replace(bareRequest(s, "T-z"), []byte("http://"), []byte("http://user:secret@"), 1), "target.repo_url"},
	}
	for _, c := range cases {
		publishBare(t, s, c.attempt, c.body)
	}
	for _, c := range cases {
		evs := attemptEvents(t, s, c.attempt)
		last := evs[len(evs)-1]
		var p events.Rejected
		if err := last.DecodePayload(&p); err != nil || last.EventType != events.AttemptRejected || p.Field != c.field {
			t.Errorf("%s: got %s field %q (%s), want attempt.rejected field %q", c.attempt, last.EventType, p.Field, p.Reason, c.field)
		}
		if len(evs) != 1 {
			t.Errorf("%s: %v, want only the rejection", c.attempt, types(evs))
		}
		if strings.Contains(string(last.Payload), "secret") {
			t.Errorf("%s: rejection repeats a credential: %s", c.attempt, last.Payload)
		}
		// Listed under the target the request named.
		if c.attempt != "a-notjson" && (last.TargetID != "demo" || p.TargetID != "demo") {
			t.Errorf("%s: rejection under target %q (payload %q), want demo", c.attempt, last.TargetID, p.TargetID)
		}
	}
	// The services are still running: a valid request goes through.
	publishBare(t, s, "a-after", bareRequest(s, "T-after"))
	if evs := attemptEvents(t, s, "a-after"); evs[len(evs)-1].EventType != events.AttemptSucceeded {
		t.Fatalf("after rejections: %v", types(evs))
	}
}

func TestSubmitEndpoint(t *testing.T) {
	s := startTestStack(t, nil)
	ask := func(body string) map[string]string {
		msg, err := s.NATS().Request("leviathan.api.submit", []byte(body), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]string
		if err := json.Unmarshal(msg.Data, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	bad := ask(`{"attempt_id":"a-s1","target":{"name":"demo","repo_url":"` + s.DemoRepoURL() + `"},"task":{"id":"T-s","title":"x","allowed_paths":[]}}`)
	if bad["field"] != "task.allowed_paths" || bad["error"] == "" {
		t.Fatalf("invalid submit answered %v", bad)
	}
	req := `{"attempt_id":"a-s2","target":{"name":"demo","repo_url":"` + s.DemoRepoURL() + `"},"task":{"id":"T-s","title":"x","allowed_paths":[".leviathan/"]}}`
	if ok := ask(req); ok["attempt_id"] != "a-s2" || ok["status"] != "accepted" {
		t.Fatalf("valid submit answered %v", ok)
	}
	evs := attemptEvents(t, s, "a-s2")
	if evs[len(evs)-1].EventType != events.AttemptSucceeded {
		t.Fatalf("events %v", types(evs))
	}
	if again := ask(req); again["field"] != "attempt_id" {
		t.Fatalf("resubmitting a used id answered %v", again)
	}
}
