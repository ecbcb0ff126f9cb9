package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// do sends a request with an Authorization header (none when auth is "")
// and decodes a JSON answer.
func (r *running) do(t *testing.T, method, path, auth, body string) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, r.srv.URL+path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(raw), testToken) {
		t.Fatalf("%s %s: the token is in the answer", method, path)
	}
	var out map[string]any
	if resp.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: not JSON: %s", method, path, raw)
		}
	}
	return resp.StatusCode, out, resp.Header
}

const bearer = "Bearer " + testToken

// TestEveryRouteRequiresTheToken: every /v1 route answers 401 JSON with a
// detail for a missing, wrong or non-bearer credential, and no route's
// existence shows without one.
func TestEveryRouteRequiresTheToken(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	routes := []struct{ method, path string }{
		{"GET", "/v1/graph/summary"}, {"GET", "/v1/attempts"}, {"GET", "/v1/attempts/a-1"},
		{"POST", "/v1/attempts/a-1/invalidate"}, {"GET", "/v1/failures"}, {"GET", "/v1/events/recent"},
		{"POST", "/v1/events/ingest"}, {"GET", "/v1/nothing"}, {"DELETE", "/v1/graph/summary"},
	}
	for _, rt := range routes {
		for _, auth := range []string{"", "Bearer wrong", "Basic " + testToken, "Bearer ", testToken, "Bearer " + testToken + "x", "Bearer " + testToken[:len(testToken)-1]} {
			status, body, h := r.do(t, rt.method, rt.path, auth, `{}`)
			if status != http.StatusUnauthorized || body["detail"] == nil || h.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s with %q: %d %v", rt.method, rt.path, auth, status, body)
			}
		}
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/": 200, "/nothing": 404} {
		req, _ := http.NewRequest("GET", r.srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without a token: %d, want %d", path, resp.StatusCode, want)
		}
		if want == 404 && resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET %s: a 404 of type %q, want the API's JSON", path, resp.Header.Get("Content-Type"))
		}
	}
	// The scheme is case-insensitive (RFC 9110), the token is not.
	if status, _, _ := r.do(t, "GET", "/v1/graph/summary", "bearer "+testToken, ""); status != 200 {
		t.Errorf("lower-case scheme: %d", status)
	}
	if status, _, _ := r.do(t, "GET", "/v1/graph/summary", "Bearer "+strings.ToUpper(testToken), ""); status != 401 {
		t.Errorf("upper-cased token: %d", status)
	}
}

func TestRouteErrors(t *testing.T) {
	res := setupStream(t)
	publish(t, res, eventgen.Stream(100))
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	cases := []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/v1/nothing", "", 404},
		{"POST", "/v1/graph/summary", "", 405},
		{"GET", "/v1/events/ingest", "", 405},
		{"GET", "/v1/attempts/a-0000001/invalidate", "", 405},
		{"GET", "/v1/attempts?limit=abc", "", 422},
		{"GET", "/v1/failures?limit=", "", 422},
		{"GET", "/v1/events/recent?limit=1.5", "", 422},
		{"POST", "/v1/attempts/a-0000001/invalidate", "", 422},
		{"POST", "/v1/attempts/a-0000001/invalidate", "{}", 422},
		{"POST", "/v1/attempts/a-0000001/invalidate", `{"reason":"  "}`, 422},
		{"POST", "/v1/attempts/a-0000001/invalidate", `{"reason":7}`, 422},
		{"POST", "/v1/attempts/a-0000001/invalidate", `not json`, 422},
		{"POST", "/v1/attempts/no-such-attempt/invalidate", `{"reason":"x"}`, 404},
		// A rejected request is no Attempt node: nothing to invalidate.
		{"POST", "/v1/attempts/a-0000049/invalidate", `{"reason":"x"}`, 404},
		{"POST", "/v1/events/ingest", `not json`, 422},
		{"POST", "/v1/events/ingest", `{"bundle_id":"b","events":[]}`, 422},
		{"POST", "/v1/events/ingest", `{"target":"t","events":[]}`, 422},
		{"POST", "/v1/events/ingest", `{"target":"t","bundle_id":"b"}`, 422},
	}
	for _, c := range cases {
		status, body, h := r.do(t, c.method, c.path, bearer, c.body)
		if status != c.status || body["detail"] == nil {
			t.Errorf("%s %s %s: %d %v, want %d with a detail", c.method, c.path, c.body, status, body, c.status)
		}
		if status == 405 && h.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", c.method, c.path)
		}
	}
	big := `{"target":"t","bundle_id":"b","events":[],"pad":"` + strings.Repeat("x", maxIngestBytes) + `"}`
	if status, _, _ := r.do(t, "POST", "/v1/events/ingest", bearer, big); status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized bundle: %d", status)
	}
}

func TestListRoutes(t *testing.T) {
	res := setupStream(t)
	evs := eventgen.Stream(1000)
	publish(t, res, evs)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)

	_, body, _ := r.do(t, "GET", "/v1/attempts?target=radix&limit=3", bearer, "")
	list := body["attempts"].([]any)
	if body["count"].(float64) != 3 || len(list) != 3 {
		t.Fatalf("attempts %v", body)
	}
	first := list[0].(map[string]any)
	for _, k := range []string{"attempt_id", "task_id", "target", "status", "timestamp", "pr_url", "pr_number"} {
		if _, ok := first[k]; !ok {
			t.Errorf("attempt without %s: %v", k, first)
		}
	}
	if first["target"] != "radix" {
		t.Fatalf("target filter: %v", first)
	}
	if _, body, _ := r.do(t, "GET", "/v1/attempts", bearer, ""); body["count"].(float64) != defaultListLimit {
		t.Fatalf("default limit: %v", body["count"])
	}

	_, body, _ = r.do(t, "GET", "/v1/failures?limit=2", bearer, "")
	fs := body["failures"].([]any)
	if len(fs) != 2 {
		t.Fatalf("failures %v", body)
	}
	for _, k := range []string{"attempt_id", "task_id", "target", "error", "timestamp"} {
		if _, ok := fs[0].(map[string]any)[k]; !ok {
			t.Errorf("failure without %s: %v", k, fs[0])
		}
	}

	recent := func(q string) []map[string]any {
		t.Helper()
		status, raw := r.get(t, "/v1/events/recent"+q, testToken)
		var list []map[string]any
		if err := json.Unmarshal(raw, &list); status != 200 || err != nil {
			t.Fatalf("GET /v1/events/recent%s: %d %v", q, status, err)
		}
		return list
	}
	// Upstream's shape: a bare list, newest first, each event with its
	// payload; its limits: 0 is all, -n drops the n oldest.
	got := recent("?limit=30")
	if len(got) != 30 || got[0]["event_id"] == "" || got[0]["payload"] == nil || got[0]["actor_id"] == nil {
		t.Fatalf("recent: %d events, first %v", len(got), got[0])
	}
	for i := 1; i < len(got); i++ {
		if got[i]["timestamp"].(string) > got[i-1]["timestamp"].(string) {
			t.Fatalf("recent events not newest first at %d", i)
		}
	}
	if n := len(recent("")); n != 200 {
		t.Fatalf("default recent: %d, want 200", n)
	}
	if all, some := len(recent("?limit=0")), len(recent("?limit=-5")); all != graph.RecentEventsKept || some != all-5 {
		t.Fatalf("limit=0: %d, limit=-5: %d", all, some)
	}
	_, everyone, _ := r.do(t, "GET", "/v1/attempts?limit=100000", bearer, "")
	total := everyone["count"].(float64)
	for q, want := range map[string]float64{"?limit=0": 0, "?limit=-3": total - 3, "?limit=%2B4": 4} {
		if _, body, _ := r.do(t, "GET", "/v1/attempts"+q, bearer, ""); body["count"] != want {
			t.Errorf("attempts%s: count %v, want %v", q, body["count"], want)
		}
	}
	// An attempt nobody knows: 200 with nulls, as upstream.
	if status, body, _ := r.do(t, "GET", "/v1/attempts/no-such-attempt", bearer, ""); status != 200 || body["attempt_node"] != nil ||
		len(body["events"].([]any)) != 0 || len(body["artifacts"].([]any)) != 0 {
		t.Fatalf("unknown attempt: %d %v", status, body)
	}
	_, sum, _ := r.do(t, "GET", "/v1/graph/summary", bearer, "")
	if len(sum["recent_events"].([]any)) != graph.SummaryEvents || sum["nodes_by_type"].(map[string]any)["Attempt"] == nil {
		t.Fatalf("summary %v", sum)
	}
	// What upstream's leviathanctl graph-summary reads.
	total = 0.0
	for _, n := range sum["nodes_by_type"].(map[string]any) {
		total += n.(float64)
	}
	if sum["total_nodes"] != total || sum["total_edges"].(float64) == 0 ||
		fmt.Sprint(sum["node_types"]) != fmt.Sprint(sum["nodes_by_type"]) || fmt.Sprint(sum["edge_types"]) != fmt.Sprint(sum["edges_by_type"]) {
		t.Fatalf("leviathanctl's keys: %v", sum)
	}

	// One attempt: its node, every event read back from the stream, and
	// what it produced.
	id := first["attempt_id"].(string)
	_, body, _ = r.do(t, "GET", "/v1/attempts/"+id, bearer, "")
	node := body["attempt_node"].(map[string]any)
	shown := body["events"].([]any)
	props := node["properties"].(map[string]any)
	for _, k := range []string{"node_id", "node_type", "created_at", "created_by", "attempt_number", "started_at", "completed_at", "exit_code", "failure_reason"} {
		if _, ok := props[k]; !ok {
			t.Errorf("attempt node properties without upstream's %s", k)
		}
	}
	if node["node_id"] != id || props["node_id"] != id || node["node_type"] != "Attempt" || len(shown) < 2 {
		t.Fatalf("attempt %v", body)
	}
	ev := shown[0].(map[string]any)
	if ev["event_type"] != "attempt.requested" || ev["event_id"] == "" || ev["payload"].(map[string]any)["task"] == nil {
		t.Fatalf("first event %v", ev)
	}
	if first["status"] == "succeeded" && len(body["artifacts"].([]any)) != 2 {
		t.Fatalf("artifacts %v", body["artifacts"])
	}

	status, metrics := r.get(t, "/metrics", "")
	for _, m := range []string{fmt.Sprintf("leviathan_projector_events_applied_total %d", len(evs)), "leviathan_projector_lag_events 0",
		`leviathan_projector_nodes{type="Attempt"}`, "leviathan_projector_ready 1"} {
		if status != 200 || !strings.Contains(string(metrics), m) {
			t.Errorf("metrics without %q", m)
		}
	}
}

// pythonBundle is what the Python worker's post_event_to_control_plane
// sends: attempt_id and target_id only in the payload, a timestamp from
// datetime.utcnow().isoformat() (no zone), artifacts empty.
func pythonBundle(attempt, eventID, typ, ts string, payload string) string {
	return fmt.Sprintf(`{"target": "radix", "bundle_id": "bundle-%s", "events": [{"event_id": %q, "event_type": %q,
		"timestamp": %q, "actor_id": "pr-proof-worker-%s", "payload": %s}], "artifacts": []}`,
		attempt, eventID, typ, ts, attempt, payload)
}

func TestIngestThePythonWorkersBundles(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	p := `"attempt_id": "attempt-7", "task_id": "pr-proof-v1-backlog-only", "target_id": "radix"`
	pr := `"pr_number": 12, "pr_url": "https://github.com/o/radix/pull/12"`
	bundles := []string{
		pythonBundle("attempt-7", "7e1a4c1e-1111-4a4a-8b8b-000000000001", "attempt.created", "2026-01-28T12:00:00.123456",
			`{`+p+`, "attempt_number": 1, "status": "created"}`),
		pythonBundle("attempt-7", "7e1a4c1e-1111-4a4a-8b8b-000000000002", "attempt.started", "2026-01-28T12:00:01.5",
			`{`+p+`, "status": "running"}`),
		pythonBundle("attempt-7", "7e1a4c1e-1111-4a4a-8b8b-000000000003", "pr.created", "2026-01-28T12:00:09",
			`{`+p+`, `+pr+`, "branch_name": "agent/backlog-propose-attempt-7", "commit_sha": "abc123"}`),
		pythonBundle("attempt-7", "7e1a4c1e-1111-4a4a-8b8b-000000000004", "attempt.succeeded", "2026-01-28T12:00:10.000001",
			`{`+p+`, "status": "succeeded", `+pr+`}`),
	}
	for _, b := range bundles {
		status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, b)
		if status != 200 || body["ingested"].(float64) != 1 || body["bundle_id"] != "bundle-attempt-7" || body["status"] != "ok" {
			t.Fatalf("ingest: %d %v", status, body)
		}
	}
	// Read-your-writes: the answer waited for the projector.
	_, sum, _ := r.do(t, "GET", "/v1/graph/summary", bearer, "")
	if got := fmt.Sprint(sum["nodes_by_type"], sum["edges_by_type"]); got != happy {
		t.Fatalf("summary %s, want %s", got, happy)
	}
	recent := sum["recent_events"].([]any)[0].(map[string]any)
	if recent["event_type"] != "attempt.succeeded" || recent["timestamp"] != "2026-01-28T12:00:10.000001Z" ||
		recent["target"] != "radix" || recent["attempt_id"] != "attempt-7" || recent["actor_id"] != "pr-proof-worker-attempt-7" {
		t.Fatalf("recent event %v", recent)
	}
	// Published on the attempt's subject with Nats-Msg-Id = event_id: a
	// retried bundle adds nothing.
	msg, err := res.Stream.GetLastMsgForSubject(t.Context(), "leviathan.attempts.attempt-7.pr.created")
	if err != nil || msg.Header.Get("Nats-Msg-Id") != "7e1a4c1e-1111-4a4a-8b8b-000000000003" {
		t.Fatalf("stored message: %v %v", err, msg)
	}
	status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, bundles[2])
	if status != 200 || body["ingested"].(float64) != 1 || body["duplicates"].(float64) != 1 || body["artifacts_ignored"] != nil {
		t.Fatalf("retry: %d %v", status, body)
	}
	// Artifacts in a bundle are not stored, and the answer says so.
	withArtifacts := strings.Replace(bundles[2], `"artifacts": []`, `"artifacts": [{"artifact_id": "x"}, {"artifact_id": "y"}]`, 1)
	if status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, withArtifacts); status != 200 || body["artifacts_ignored"] != 2.0 {
		t.Fatalf("bundle with artifacts: %d %v", status, body)
	}

	// Bad events are skipped, each reported with the event and field; the
	// good ones of the bundle are ingested.
	before, _ := res.Stream.Info(t.Context())
	for bad, field := range map[string]string{
		pythonBundle("a-8", "e-1", "attempt.created", "yesterday", `{"attempt_id":"a-8"}`):           "events[0].timestamp",
		pythonBundle("a-8", "e-1", "attempt.created", "2026-01-28T12:00:00", `{"task_id":"x"}`):      "events[0].attempt_id",
		pythonBundle("a-8", "e-1", "attempt.created", "2026-01-28T12:00:00", `{"attempt_id":"a b"}`): "events[0].attempt_id",
		pythonBundle("a-8", "e 1", "attempt.created", "2026-01-28T12:00:00", `{"attempt_id":"a-8"}`): "events[0].event_id",
		pythonBundle("a-8", "e-1", "attempt.*", "2026-01-28T12:00:00", `{"attempt_id":"a-8"}`):       "events[0].event_type",
		pythonBundle("a-8", "e-1", "attempt.created", "2026-01-28T12:00:00", `[1]`):                  "events[0].payload",
	} {
		status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, bad)
		skipped, _ := body["skipped"].([]any)
		if status != 200 || body["ingested"] != 0.0 || len(skipped) != 1 ||
			!strings.HasPrefix(skipped[0].(map[string]any)["reason"].(string), field) {
			t.Errorf("bad bundle: %d %v, want 200 with the event skipped, naming %s", status, body, field)
		}
	}
	if after, _ := res.Stream.Info(t.Context()); after.State.Msgs != before.State.Msgs {
		t.Fatal("a skipped event was published")
	}

	// Invalidate it: the event goes through the stream, the node changes.
	status, body, _ = r.do(t, "POST", "/v1/attempts/attempt-7/invalidate", bearer, `{"reason":"wrong target"}`)
	if status != 200 || body["status"] != "invalidated" || body["attempt_id"] != "attempt-7" || body["already_invalidated"] != false {
		t.Fatalf("invalidate: %d %v", status, body)
	}
	_, body, _ = r.do(t, "GET", "/v1/attempts/attempt-7", bearer, "")
	props := body["attempt_node"].(map[string]any)["properties"].(map[string]any)
	evs := body["events"].([]any)
	last := evs[len(evs)-1].(map[string]any)
	if props["status"] != "invalidated" || props["invalidation_reason"] != "wrong target" || last["event_type"] != "attempt.invalidated" ||
		last["actor_id"] != "user:control-plane" {
		t.Fatalf("after invalidate: %v / %v", props, last)
	}
	// Asking again changes nothing and says which reason stands.
	if _, body, _ = r.do(t, "POST", "/v1/attempts/attempt-7/invalidate", bearer, `{"reason":"again"}`); body["already_invalidated"] != true || body["reason"] != "wrong target" {
		t.Fatalf("second invalidate: %v", body)
	}
	// Invalidated by another producer without a reason: still invalidated
	// once; nothing more is published.
	q := `"attempt_id": "attempt-9", "task_id": "T-9", "target_id": "radix"`
	for i, typ := range []string{"attempt.created", "attempt.invalidated"} {
		b := pythonBundle("attempt-9", fmt.Sprintf("9e1a4c1e-1111-4a4a-8b8b-00000000000%d", i), typ, "2026-01-28T13:00:00", `{`+q+`}`)
		if status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, b); status != 200 {
			t.Fatalf("ingest %s: %d %v", typ, status, body)
		}
	}
	if _, body, _ = r.do(t, "POST", "/v1/attempts/attempt-9/invalidate", bearer, `{"reason":"mine"}`); body["already_invalidated"] != true || body["reason"] != "" {
		t.Fatalf("invalidate after a reasonless invalidation: %v", body)
	}
	if n := countMessages(t, res, "leviathan.attempts.attempt-9.attempt.invalidated"); n != 1 {
		t.Fatalf("%d attempt.invalidated messages, want 1", n)
	}
}

// countMessages counts the stream's messages on subject.
func countMessages(t *testing.T, res *stage.Resources, subject string) uint64 {
	t.Helper()
	info, err := res.Stream.Info(t.Context(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// TestIngestRefusesStageInputs: ingest records what happened; it never
// publishes an event a stage acts on (which would start an attempt or push
// and open a PR from an injected branch). The others of the bundle go in.
func TestIngestRefusesStageInputs(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	for _, typ := range []events.Type{events.AttemptRequested, events.RepoFetched, events.BacklogEdited, events.BranchPushed} {
		bundle := fmt.Sprintf(`{"target": "radix", "bundle_id": "b-%[1]s", "events": [
			{"event_id": "e-%[1]s", "event_type": %[1]q, "timestamp": "2026-01-28T12:00:00Z", "payload": {"attempt_id": "a-inj", "branch_name": "evil"}},
			{"event_id": "ok-%[1]s", "event_type": "attempt.started", "timestamp": "2026-01-28T12:00:01Z", "payload": {"attempt_id": "a-inj"}}]}`, typ)
		status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, bundle)
		skipped, _ := body["skipped"].([]any)
		if status != 200 || body["ingested"] != 1.0 || len(skipped) != 1 {
			t.Fatalf("%s: %d %v, want the stage input skipped and the other ingested", typ, status, body)
		}
		item := skipped[0].(map[string]any)
		if item["index"] != 0.0 || item["event_id"] != "e-"+string(typ) || !strings.Contains(item["reason"].(string), "event_type") {
			t.Fatalf("%s: skipped %v", typ, item)
		}
		if n := countMessages(t, res, events.Subject("a-inj", typ)); n != 0 {
			t.Fatalf("%s: %d published", typ, n)
		}
	}
}

// TestTaskFailedIsAFailure: the Python workers' task.failed is listed in
// /v1/failures, its error from the payload's reason (or error_summary).
func TestTaskFailedIsAFailure(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	bundle := `{"target": "radix", "bundle_id": "b-tf", "events": [
		{"event_id": "e-tf", "event_type": "task.failed", "timestamp": "2026-01-28T12:00:00", "actor_id": "worker-1",
		 "payload": {"attempt_id": "attempt-docs-guide-1a2b3c4d", "task_id": "docs-guide", "target_id": "radix", "reason": "tests failed"}}]}`
	if status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, bundle); status != 200 || body["ingested"] != 1.0 {
		t.Fatalf("ingest: %d %v", status, body)
	}
	_, body, _ := r.do(t, "GET", "/v1/failures", bearer, "")
	fs := body["failures"].([]any)
	if len(fs) != 1 {
		t.Fatalf("failures %v", body)
	}
	f := fs[0].(map[string]any)
	if f["attempt_id"] != "attempt-docs-guide-1a2b3c4d" || f["error"] != "tests failed" || f["event_type"] != "task.failed" || f["target"] != "radix" {
		t.Fatalf("failure %v", f)
	}
}

// TestUpstreamAttemptIDs: the PR Proof worker's four bundles for an
// attempt id as upstream's dev_autonomy makes it (its task id has a dot)
// are ingested; the subject carries the id encoded, and the API shows it
// as it was sent.
func TestUpstreamAttemptIDs(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	const id = "attempt-docs.v2-1a2b3c4d"
	for i, typ := range []string{"attempt.created", "attempt.started", "pr.created", "attempt.succeeded"} {
		payload := fmt.Sprintf(`{"attempt_id": %q, "task_id": "docs.v2", "target_id": "radix", "status": "x", "attempt_number": 1,
			"pr_number": 7, "pr_url": "https://github.com/o/radix/pull/7"}`, id)
		b := pythonBundle(id, fmt.Sprint("e-dot-", i), typ, fmt.Sprintf("2026-01-28T12:00:0%d.000000", i), payload)
		if status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, b); status != 200 || body["ingested"] != 1.0 {
			t.Fatalf("bundle %d (%s): %d %v", i, typ, status, body)
		}
	}
	if n := countMessages(t, res, events.Subject(id, "attempt.created")); n != 1 || !strings.Contains(events.Subject(id, "x"), "~") {
		t.Fatalf("the attempt's subject: %d messages on %s", n, events.Subject(id, "attempt.created"))
	}
	_, body, _ := r.do(t, "GET", "/v1/attempts/"+id, bearer, "")
	node, _ := body["attempt_node"].(map[string]any)
	if node == nil || node["node_id"] != id || len(body["events"].([]any)) != 4 || node["properties"].(map[string]any)["status"] != "succeeded" {
		t.Fatalf("attempt %s: %v", id, body)
	}
}

// TestRecordEventsMakeNodes: events that belong to no attempt, as
// upstream's producers send them (target.registered, task.created), are
// ingested on their own subjects, which no stage consumes, and make the
// Target and Task nodes and the task's DEPENDS_ON edge.
func TestRecordEventsMakeNodes(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	bundle := `{"target": "radix", "bundle_id": "b-rec", "events": [
		{"event_id": "e-t", "event_type": "target.registered", "timestamp": "2026-01-28T12:00:00", "actor_id": "test-actor",
		 "payload": {"target_id": "radix", "name": "radix", "repo_url": "https://github.com/o/radix.git", "default_branch": "main"}},
		{"event_id": "e-k1", "event_type": "task.created", "timestamp": "2026-01-28T12:00:01", "actor_id": "test-actor",
		 "payload": {"target_id": "radix", "task_id": "task-001", "title": "One", "scope": "docs", "priority": "high",
		             "estimated_size": "s", "allowed_paths": ["docs/"], "acceptance_criteria": ["done"]}},
		{"event_id": "e-k2", "event_type": "task.created", "timestamp": "2026-01-28T12:00:02", "actor_id": "test-actor",
		 "payload": {"target_id": "radix", "task_id": "task-002", "title": "Two"}},
		{"event_id": "e-bad", "event_type": "attempt.started", "timestamp": "2026-01-28T12:00:03", "payload": {"status": "running"}}]}`
	status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, bundle)
	if status != 200 || body["ingested"] != 3.0 || len(body["skipped"].([]any)) != 1 {
		t.Fatalf("ingest: %d %v", status, body)
	}
	info, err := res.Stream.Info(t.Context(), jetstream.WithSubjectFilter(events.RecordSubjects))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[events.RecordSubject("task.created")] + info.State.Subjects[events.RecordSubject("target.registered")]; n != 3 {
		t.Fatalf("%d record events stored, want 3: %v", n, info.State.Subjects)
	}
	_, sum, _ := r.do(t, "GET", "/v1/graph/summary", bearer, "")
	nodes, edges := sum["nodes_by_type"].(map[string]any), sum["edges_by_type"].(map[string]any)
	if nodes["Target"] != 1.0 || nodes["Task"] != 2.0 || edges["DEPENDS_ON"] != 2.0 {
		t.Fatalf("summary %v", sum)
	}
	recent := sum["recent_events"].([]any)[0].(map[string]any)
	if recent["event_type"] != "task.created" || recent["actor_id"] != "test-actor" || recent["target"] != "radix" {
		t.Fatalf("recent %v", recent)
	}

	// artifact.created, as upstream's test sends it (with a bundle's
	// artifacts, which are not stored).
	art := `{"target": "radix", "bundle_id": "b-art", "artifacts": [{"sha256": "` + strings.Repeat("a", 64) + `", "kind": "log", "uri": "file:///path/to/artifact", "size": 1024}],
		"events": [{"event_id": "e-a", "event_type": "artifact.created", "timestamp": "2026-01-28T12:00:04", "actor_id": "test-actor",
		 "payload": {"artifact_id": "artifact-001", "sha256": "` + strings.Repeat("a", 64) + `", "artifact_type": "log", "size_bytes": 1024, "storage_path": "/x"}}]}`
	if status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, art); status != 200 || body["ingested"] != 1.0 {
		t.Fatalf("artifact bundle: %d %v", status, body)
	}
	_, sum, _ = r.do(t, "GET", "/v1/graph/summary", bearer, "")
	if sum["nodes_by_type"].(map[string]any)["Artifact"] != 1.0 {
		t.Fatalf("summary after artifact.created: %v", sum["nodes_by_type"])
	}
}

// workerBundle is one POST of the PR Proof v1 worker
// (leviathan/executor/pr_proof_v1/__main__.py, post_event_to_control_plane)
// byte for byte as requests' json= sends it: Python's json.dumps with its
// default separators, keys in the dict's order, a uuid4 event id, a
// timestamp from datetime.utcnow().isoformat().
func workerBundle(attempt, eventID, typ, ts, payload string) string {
	return `{"target": "docs", "bundle_id": "bundle-` + attempt + `", "events": [{"event_id": "` + eventID +
		`", "event_type": "` + typ + `", "timestamp": "` + ts + `", "actor_id": "pr-proof-v1-` + attempt +
		`", "payload": ` + payload + `}], "artifacts": []}`
}

// TestThePythonWorkersExactBundles replays what the worker posts for an
// attempt id as upstream's dev_autonomy makes it (a task id with a dot)
// that succeeds, and for one that fails: every bundle is taken, the graph
// has the attempt under its own id, the failure is listed with its
// error_summary, and every event shows in the log with its chain hash.
func TestThePythonWorkersExactBundles(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	const ok, bad = "attempt-docs.v2-1a2b3c4d", "attempt-docs.v3-5e6f7a8b"
	ids := func(a string) string {
		return `"attempt_id": "` + a + `", "task_id": "` + strings.TrimSuffix(strings.TrimPrefix(a, "attempt-"), a[len(a)-9:]) + `", "target_id": "docs"`
	}
	pr := `"pr_number": 3, "pr_url": "https://github.com/o/docs/pull/3"`
	bundles := []string{
		workerBundle(ok, "3f0c6a38-0b7e-4d0e-9a52-0d6b1f3e0001", "attempt.created", "2026-11-30T09:00:00.123456", `{`+ids(ok)+`, "attempt_number": 1, "status": "created"}`),
		workerBundle(ok, "3f0c6a38-0b7e-4d0e-9a52-0d6b1f3e0002", "attempt.started", "2026-11-30T09:00:00.234567", `{`+ids(ok)+`, "status": "running"}`),
		workerBundle(ok, "3f0c6a38-0b7e-4d0e-9a52-0d6b1f3e0003", "pr.created", "2026-11-30T09:00:04.5", `{`+ids(ok)+`, `+pr+`, "branch_name": "agent/backlog-propose-`+ok+`", "commit_sha": "0123456789abcdef0123456789abcdef01234567"}`),
		workerBundle(ok, "3f0c6a38-0b7e-4d0e-9a52-0d6b1f3e0004", "attempt.succeeded", "2026-11-30T09:00:04.600001", `{`+ids(ok)+`, "status": "succeeded", `+pr+`}`),
		workerBundle(bad, "3f0c6a38-0b7e-4d0e-9a52-0d6b1f3e0005", "attempt.created", "2026-11-30T09:01:00", `{`+ids(bad)+`, "attempt_number": 1, "status": "created"}`),
		workerBundle(bad, "3f0c6a38-0b7e-4d0e-9a52-0d6b1f3e0006", "attempt.started", "2026-11-30T09:01:00.5", `{`+ids(bad)+`, "status": "running"}`),
		workerBundle(bad, "3f0c6a38-0b7e-4d0e-9a52-0d6b1f3e0007", "attempt.failed", "2026-11-30T09:01:02.25", `{`+ids(bad)+`, "status": "failed", "failure_type": "execution_error", "error_summary": "Push failed: 403 \u00e9"}`),
	}
	for i, b := range bundles {
		status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, b)
		if status != 200 || body["ingested"] != 1.0 || body["status"] != "ok" || body["skipped"] != nil {
			t.Fatalf("bundle %d: %d %v", i, status, body)
		}
	}

	_, body, _ := r.do(t, "GET", "/v1/attempts/"+ok, bearer, "")
	node, _ := body["attempt_node"].(map[string]any)
	if node == nil || node["node_id"] != ok || node["properties"].(map[string]any)["status"] != "succeeded" || len(body["events"].([]any)) != 4 {
		t.Fatalf("attempt %s: %v", ok, body)
	}
	for _, e := range body["events"].([]any) {
		if h, _ := e.(map[string]any)["hash"].(string); len(h) != 64 {
			t.Fatalf("event without a chain hash: %v", e)
		}
	}
	_, body, _ = r.do(t, "GET", "/v1/failures", bearer, "")
	fs := body["failures"].([]any)
	if len(fs) != 1 || fs[0].(map[string]any)["attempt_id"] != bad || fs[0].(map[string]any)["error"] != "Push failed: 403 é" ||
		fs[0].(map[string]any)["failure_type"] != "execution_error" {
		t.Fatalf("failures %v", fs)
	}
	_, body, _ = r.do(t, "GET", "/v1/graph/summary", bearer, "")
	if got := fmt.Sprint(body["nodes_by_type"]); got != "map[Attempt:2 Commit:1 PullRequest:1 Target:1 Task:2]" {
		t.Fatalf("nodes %s", got)
	}

	// The log, newest first, chained oldest to newest: each hash is the
	// one its event's canonical JSON and its predecessor's hash give.
	status, raw := r.get(t, "/v1/events/recent?limit=0", testToken)
	var list []struct {
		EventID   string          `json:"event_id"`
		EventType string          `json:"event_type"`
		ActorID   string          `json:"actor_id"`
		Timestamp string          `json:"timestamp"`
		Payload   json.RawMessage `json:"payload"`
		Hash      string          `json:"hash"`
	}
	if err := json.Unmarshal(raw, &list); status != 200 || err != nil || len(list) != len(bundles) {
		t.Fatalf("recent: %d %v %s", status, err, raw)
	}
	var prev *[32]byte
	for i := len(list) - 1; i >= 0; i-- {
		e := list[i]
		// Fixed width (six fractional digits), so they sort as strings,
		// as upstream's console sorts them.
		if len(e.Timestamp) != len("2026-11-30T09:00:04.500000Z") {
			t.Fatalf("timestamp %q is not fixed width", e.Timestamp)
		}
		// Ingest stores the timestamp in UTC (RFC 3339), as the list shows it.
		c, err := events.CanonicalEvent(e.EventID, e.EventType, e.ActorID, e.Timestamp, e.Payload)
		if err != nil {
			t.Fatal(err)
		}
		h := events.ChainHash(c, prev)
		if events.HashHex(h) != e.Hash {
			t.Fatalf("event %d (%s): hash %s, the chain gives %s", i, e.EventType, e.Hash, events.HashHex(h))
		}
		prev = &h
	}
}

// TestUpstreamsOtherRoutes: the topology of upstream's indexer (record
// events), the autonomy status from the targets' policies, and backlog
// suggestions as upstream's placeholder, in upstream's shapes.
func TestUpstreamsOtherRoutes(t *testing.T) {
	res := setupStream(t)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	ev := func(id, typ, ts, payload string) string {
		return `{"event_id":"` + id + `","event_type":"` + typ + `","timestamp":"` + ts + `","actor_id":"indexer","payload":` + payload + `}`
	}
	bundle := `{"target":"radix","bundle_id":"topo-1","events":[` + strings.Join([]string{
		ev("t1", "topo.indexed", "2026-01-28T12:00:00", `{"target_id":"radix","commit_sha":"old","areas_count":1}`),
		ev("t2", "topo.indexed", "2026-01-28T13:00:00", `{"target_id":"radix","commit_sha":"abc","areas_count":2,"subsystems_count":1,"dependencies_count":0}`),
		ev("t3", "topo.area.discovered", "2026-01-28T13:00:01", `{"target_id":"radix","name":"api"}`),
		ev("t4", "topo.area.discovered", "2026-01-28T13:00:02", `{"target_id":"radix","name":"web"}`),
		ev("t5", "topo.subsystem.discovered", "2026-01-28T13:00:03", `{"target_id":"radix","name":"auth"}`),
	}, ",") + `]}`
	if status, body, _ := r.do(t, "POST", "/v1/events/ingest", bearer, bundle); status != 200 || body["ingested"] != 5.0 {
		t.Fatalf("ingest: %d %v", status, body)
	}
	_, sum, _ := r.do(t, "GET", "/v1/topology/summary?target=radix", bearer, "")
	if sum["commit_sha"] != "abc" || sum["areas_count"] != 2.0 || sum["subsystems_count"] != 1.0 || sum["flows_count"] != 0.0 || sum["target_id"] != "radix" {
		t.Fatalf("topology summary %v", sum)
	}
	_, areas, _ := r.do(t, "GET", "/v1/topology/areas?target=radix", bearer, "")
	if list, _ := areas["areas"].([]any); len(list) != 2 || list[1].(map[string]any)["name"] != "web" {
		t.Fatalf("areas %v", areas)
	}
	_, deps, _ := r.do(t, "GET", "/v1/topology/dependencies?target=radix", bearer, "")
	if list, ok := deps["dependencies"].([]any); !ok || len(list) != 0 {
		t.Fatalf("dependencies %v", deps)
	}
	if status, body, _ := r.do(t, "GET", "/v1/topology/summary?target=other", bearer, ""); status != 404 || body["detail"] != "No topology data found for target other" {
		t.Fatalf("summary of a target without topology: %d %v", status, body)
	}
	if status, _, _ := r.do(t, "GET", "/v1/topology/areas", bearer, ""); status != 422 {
		t.Fatalf("areas without a target: %d", status)
	}

	off := false
	if err := (policy.Store{KV: res.Config}).Put(t.Context(), "radix", policy.Policy{AutonomyEnabled: &off}); err != nil {
		t.Fatal(err)
	}
	_, st, _ := r.do(t, "GET", "/v1/autonomy/status", bearer, "")
	if st["autonomy_enabled"] != true || fmt.Sprint(st["disabled_targets"]) != "[radix]" || st["source"] == "" {
		t.Fatalf("autonomy status %v", st)
	}
	_, st, _ = r.do(t, "GET", "/v1/autonomy/status?target=radix", bearer, "")
	if st["autonomy_enabled"] != false || st["source"] != "leviathan-config:radix" {
		t.Fatalf("autonomy status of radix %v", st)
	}
	_, st, _ = r.do(t, "GET", "/v1/autonomy/status?target=other", bearer, "")
	if st["autonomy_enabled"] != true || !strings.HasPrefix(st["source"].(string), "default") {
		t.Fatalf("autonomy status of a target without policy %v", st)
	}

	if status, body, _ := r.do(t, "POST", "/v1/backlog/suggest", bearer, `{"target":"radix"}`); status != 200 || body["status"] != "not_implemented" || body["message"] == "" {
		t.Fatalf("backlog suggest: %d %v", status, body)
	}
	if status, _, _ := r.do(t, "POST", "/v1/backlog/suggest", bearer, `{}`); status != 422 {
		t.Fatalf("backlog suggest without a target: %d", status)
	}
}
