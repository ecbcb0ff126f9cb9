package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/localforge"
	"github.com/leviathan-dev/leviathan/services/pr"
)

// testForge is the forge pacing of these tests: short, so that the waits
// the tests measure take seconds, not minutes. TestForgeDefaults checks
// that production keeps GitHub's minimums.
var testForge = ForgeConfig{MinInterval: 100 * time.Millisecond, RateLimitBackoff: 1500 * time.Millisecond, RequestTimeout: time.Second}

func TestForgeDefaults(t *testing.T) {
	pol, err := egress.New(egress.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d, _, err := ForgeConfig{}.clients("tok", "", gitx.Remote{}, true, nil, pol)
	if err != nil || d == nil {
		t.Fatalf("default forge: %v", err)
	}
	// The zero ForgeConfig leaves pacing to the driver's defaults, which
	// are GitHub's minimums (asserted in the forge package).
	if c := (ForgeConfig{}); c.MinInterval != 0 || c.RateLimitBackoff != 0 {
		t.Fatal("zero ForgeConfig is not the production default")
	}
	if _, _, err := (ForgeConfig{AppID: 1}).clients("", "", gitx.Remote{}, true, nil, pol); err == nil {
		t.Fatal("an app without installation id and key accepted")
	}
	if _, _, err := (ForgeConfig{}).clients("", "", gitx.Remote{}, true, nil, pol); err == nil {
		t.Fatal("a pr service without credentials accepted")
	}
}

// payload decodes the payload of the first event of type typ in evs.
func payload[T any](t *testing.T, evs []events.Envelope, typ events.Type) T {
	t.Helper()
	var v T
	for _, e := range evs {
		if e.EventType == typ {
			if err := e.DecodePayload(&v); err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no %s in %v", typ, types(evs))
	return v
}

// waitEventType waits for an event of one attempt.
func waitEventType(t *testing.T, s *Stack, attemptID string, typ events.Type) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, _ := jetstream.New(s.NATS())
	cons, err := js.OrderedConsumer(ctx, stage.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.Subject(attemptID, typ)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Next(jetstream.FetchContext(ctx)); err != nil {
		t.Fatalf("no %s for %s: %v", typ, attemptID, err)
	}
}

// forgeAPI calls localforge's API with the forge token, as another client.
func forgeAPI(t *testing.T, s *Stack, method, path string, body any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, s.ForgeURL+"/api/v3"+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+s.cfg.ForgeToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// observedWait is the time between the first faulted answer on a
// repository's API and the next request to it: how long the services
// actually waited.
func observedWait(t *testing.T, f *localforge.Forge, repoPath string) time.Duration {
	t.Helper()
	recs := f.Requests()
	slices.SortFunc(recs, func(a, b localforge.RequestRecord) int { return a.Start.Compare(b.Start) })
	var fault *localforge.RequestRecord
	for i := range recs {
		r := &recs[i]
		if !strings.Contains(r.Path, repoPath) {
			continue
		}
		if fault == nil && r.Fault {
			fault = r
			continue
		}
		if fault != nil && r.Start.After(fault.End) {
			return r.Start.Sub(fault.End)
		}
	}
	t.Fatalf("no faulted request followed by another on %s", repoPath)
	return 0
}

// TestForgeFaults runs one attempt per fault through the real stack and
// checks, for each, the pull requests that exist afterwards, the events,
// and the waits the services observed.
func TestForgeFaults(t *testing.T) {
	s := startTestStackWith(t, StackConfig{Forge: testForge}, func(c *stage.Config) { c.MaxDeliver = 4 })
	ctx := context.Background()
	failed := []string{"attempt.created", "attempt.started", "repo.fetched", "backlog.edited", "branch.pushed", "attempt.failed"}
	cases := []struct {
		name    string
		faults  []localforge.Fault // Path is prefixed with the case's repository
		events  []string
		reused  bool
		failure events.FailureType
		prs     int
		wait    time.Duration // least observed wait after the fault
	}{
		{name: "servererrors", faults: []localforge.Fault{{Method: "GET", Statuses: []int{500, 502}}}, events: happyPath, prs: 1},
		{name: "lostcreate", faults: []localforge.Fault{{Method: "POST", Status: 502, AfterEffect: true}}, events: happyPath, reused: true, prs: 1},
		// Two stale, slow lists: push's question for the task's open PR,
		// then pr's own lookup, during which the other replica acts.
		{name: "duplicate", faults: []localforge.Fault{{Method: "GET", Statuses: []int{200, 200}, Body: json.RawMessage("[]"), Delay: time.Second}},
			events: happyPath, reused: true, prs: 1},
		{name: "ratelimit429", faults: []localforge.Fault{{Method: "POST", Status: 429, RetryAfter: 2 * time.Second}},
			events: happyPath, prs: 1, wait: 2 * time.Second},
		{name: "secondary403", faults: []localforge.Fault{{Method: "POST", Status: 403}},
			events: happyPath, prs: 1, wait: testForge.RateLimitBackoff},
		// On the create: push's question to pr (a list) must not be what
		// meets them.
		{name: "unauthorized", faults: []localforge.Fault{{Method: "POST", Status: 401}}, events: failed, failure: events.AuthFailed},
		{name: "forbidden", faults: []localforge.Fault{{Method: "POST", Status: 403, Message: "Resource not accessible by integration"}}, events: failed, failure: events.AuthFailed},
		{name: "notfound", faults: []localforge.Fault{{Method: "POST", Status: 404}}, events: failed, failure: events.RepoNotFound},
		{name: "timeout", faults: []localforge.Fault{{Method: "POST", Delay: 3 * time.Second, AfterEffect: true}}, events: happyPath, reused: true, prs: 1},
		{name: "dropped", faults: []localforge.Fault{{Method: "POST", Drop: true}}, events: happyPath, prs: 1},
		{name: "exhausted", faults: []localforge.Fault{{Status: 500, Times: 10}}, events: failed, failure: events.RetriesExhausted},
	}
	for _, c := range cases {
		files := map[string][]byte{events.BacklogPath: []byte("tasks: []\n")}
		if err := s.Forge().CreateRepo(ctx, "o", c.name, "main", files); err != nil {
			t.Fatal(err)
		}
		for _, f := range c.faults {
			f.Path = "/repos/o/" + c.name + "/pulls"
			s.Forge().InjectFault(f)
		}
		publishBare(t, s, "a-"+c.name, request(s.Forge().CloneURL("o", c.name), "T-"+c.name, nil))
	}
	// "duplicate": another replica opens the PR while our lookup is slow
	// and answers with a stale empty list; our create then gets GitHub's
	// 422 and adopts it.
	waitEventType(t, s, "a-duplicate", events.BranchPushed)
	if code := forgeAPI(t, s, "POST", "/repos/o/duplicate/pulls", map[string]any{
		"title": "opened by another replica", "head": events.DefaultBranchPrefix + "a-duplicate", "base": "main",
	}); code != http.StatusCreated {
		t.Fatalf("setting up the duplicate: %d", code)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs := attemptEvents(t, s, "a-"+c.name)
			if got := strings.Join(types(evs), ","); got != strings.Join(c.events, ",") {
				t.Fatalf("events %s\nwant   %s", got, strings.Join(c.events, ","))
			}
			if c.failure != "" {
				f := failure(t, evs)
				if f.FailureType != c.failure || f.Stage != "pr" {
					t.Fatalf("failure %+v, want %s at pr", f, c.failure)
				}
				// A permanent fault answers once (Times 1): had the stage
				// retried after it, the retry would have succeeded. (Earlier
				// deliveries may have waited out another case's rate limit:
				// the token is shared.)
				if c.failure == events.RetriesExhausted && f.Deliveries != 4 {
					t.Fatalf("exhausted after %d deliveries, want MaxDeliver 4", f.Deliveries)
				}
			} else {
				p := payload[events.PROpened](t, evs, events.PRCreated)
				if p.Reused != c.reused || p.PRNumber != 1 || p.State != "open" {
					t.Fatalf("pr.created %+v, want reused %v", p, c.reused)
				}
			}
			prs, err := s.Forge().Pulls("o", c.name)
			if err != nil || len(prs) != c.prs {
				t.Fatalf("%d pull requests, want %d (%v)", len(prs), c.prs, err)
			}
			if c.wait > 0 {
				w := observedWait(t, s.Forge(), "/repos/o/"+c.name+"/")
				// Another case's rate limit may hold this token a little
				// longer; never shorter, and never the long default.
				if w < c.wait || w > c.wait+5*time.Second {
					t.Fatalf("waited %v after the fault, want at least %v (and not much more)", w, c.wait)
				}
			}
		})
	}
	// The stage never held a message for long: the rate-limited waits
	// were redeliveries, not sleeps.
	waitConsumerIdle(t, s, "pr")
}

// TestMaxOpenPRs submits 20 attempts for 20 tasks to a target whose
// policy allows 5 open pull requests.
func TestMaxOpenPRs(t *testing.T) {
	s := startTestStackWith(t, StackConfig{Forge: ForgeConfig{MinInterval: 300 * time.Millisecond}}, nil)
	ctx := context.Background()
	five := 5
	if err := (policy.Store{KV: s.deps.res.Config}).Put(ctx, "demo", policy.Policy{MaxOpenPRs: &five}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		publishBare(t, s, fmt.Sprint("a-cap-", i), request(s.DemoRepoURL(), fmt.Sprint("T-cap-", i), nil))
	}
	opened, blocked := 0, 0
	for i := range 20 {
		evs := attemptEvents(t, s, fmt.Sprint("a-cap-", i))
		switch last := evs[len(evs)-1]; last.EventType {
		case events.AttemptSucceeded:
			opened++
			if p := payload[events.PROpened](t, evs, events.PRCreated); p.Reused {
				t.Errorf("attempt %d adopted a PR: %+v", i, p)
			}
		case events.AttemptFailed:
			f := failure(t, evs)
			if f.FailureType != events.GuardrailBlocked || f.Stage != "pr" || !strings.Contains(f.ErrorSummary, "max_open_prs reached for target demo: 5 of 5 open") {
				t.Fatalf("attempt %d: %+v", i, f)
			}
			blocked++
		default:
			t.Fatalf("attempt %d ended with %s", i, last.EventType)
		}
	}
	prs, _ := s.Forge().Pulls(demoOwner, demoRepo)
	if opened != 5 || blocked != 15 || len(prs) != 5 {
		t.Fatalf("opened %d, blocked %d, forge has %d PRs; want 5, 15, 5", opened, blocked, len(prs))
	}
	// The five creates were spaced by the configured interval.
	var last time.Time
	for _, r := range s.Forge().Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/pulls") {
			if !last.IsZero() && r.Start.Sub(last) < 300*time.Millisecond-20*time.Millisecond {
				t.Fatalf("creates %v apart, want >= 300ms", r.Start.Sub(last))
			}
			last = r.End
		}
	}
}

// TestGuardrailsApplyLive changes the policy in the KV bucket between
// attempts of one running stack.
func TestGuardrailsApplyLive(t *testing.T) {
	s := startTestStack(t, nil)
	ctx := context.Background()
	store := policy.Store{KV: s.deps.res.Config}
	off, on := false, true

	// Kill switch: stopped before anything reaches the repository.
	if err := store.Put(ctx, "demo", policy.Policy{AutonomyEnabled: &off}); err != nil {
		t.Fatal(err)
	}
	f := failure(t, runAttempt(t, s, "a-off", request(s.DemoRepoURL(), "T-off", nil)))
	if f.FailureType != events.GuardrailBlocked || f.Stage != "push" || !strings.Contains(f.ErrorSummary, "autonomy is disabled") {
		t.Fatalf("kill switch: %+v", f)
	}
	if b := branches(t, s, demoOwner, demoRepo); strings.TrimSpace(b) != "main" {
		t.Fatalf("a branch was pushed with autonomy disabled: %q", b)
	}
	// Switched back on: the next attempt goes through, no restart.
	if err := store.Put(ctx, "demo", policy.Policy{AutonomyEnabled: &on}); err != nil {
		t.Fatal(err)
	}
	first := runAttempt(t, s, "a-on", request(s.DemoRepoURL(), "T-same", nil))
	if last := first[len(first)-1]; last.EventType != events.AttemptSucceeded {
		t.Fatalf("after re-enabling: %v", types(first))
	}
	// A second attempt for the same task adopts the open PR instead of
	// opening another.
	second := runAttempt(t, s, "a-again", request(s.DemoRepoURL(), "T-same", nil))
	if got := strings.Join(types(second), ","); got != strings.Join(happyPath, ",") {
		t.Fatalf("second attempt for a task: %s", got)
	}
	p := payload[events.PROpened](t, second, events.PRCreated)
	done := payload[events.Succeeded](t, second, events.AttemptSucceeded)
	if !p.Reused || p.PRNumber != 1 || p.BranchName != events.DefaultBranchPrefix+"a-on" || p.Title != "Leviathan: Task T-same" ||
		!strings.Contains(done.Note, "task T-same already has open pull request #1") || !strings.Contains(done.Note, "attempt a-on") {
		t.Fatalf("second attempt: pr.created %+v, note %q", p, done.Note)
	}
	if prs, _ := s.Forge().Pulls(demoOwner, demoRepo); len(prs) != 1 || !strings.Contains(prs[0].Body, policy.Marker("T-same", "a-on")) {
		t.Fatalf("pulls %+v", prs)
	}
	// ... and pushes nothing: no branch without a pull request is left.
	if b := branches(t, s, demoOwner, demoRepo); strings.Contains(b, "a-again") || !strings.Contains(done.Note, "nothing was pushed") {
		t.Fatalf("the second attempt pushed a branch (%q) or says it did (%q)", b, done.Note)
	}
	// A broken policy blocks (fail safe) and names itself.
	if _, err := s.deps.res.Config.Put(ctx, "demo", []byte(`{"max_open_pr": 3}`)); err != nil {
		t.Fatal(err)
	}
	f = failure(t, runAttempt(t, s, "a-broken", request(s.DemoRepoURL(), "T-broken", nil)))
	if f.FailureType != events.GuardrailBlocked || !strings.Contains(f.ErrorSummary, "max_open_pr") {
		t.Fatalf("broken policy: %+v", f)
	}
	// Path prefixes of the target bound every task.
	if err := store.Put(ctx, "demo", policy.Policy{AllowedPathPrefixes: []string{"docs/"}}); err != nil {
		t.Fatal(err)
	}
	f = failure(t, runAttempt(t, s, "a-prefix", request(s.DemoRepoURL(), "T-prefix", nil)))
	if f.FailureType != events.PathViolation || !strings.Contains(f.ErrorSummary, "allowed_path_prefixes docs/") {
		t.Fatalf("prefixes: %+v", f)
	}
}

// TestClosedPRIsNotReopened: a human closes the PR of the attempt's
// branch just before the pr stage looks (the lookups are slowed down to
// make room); the stage refuses to open another and says why.
func TestClosedPRIsNotReopened(t *testing.T) {
	s := startTestStack(t, nil)
	ctx := context.Background()
	if err := s.Forge().CreateRepo(ctx, "o", "closed", "main", map[string][]byte{events.BacklogPath: []byte("tasks: []\n")}); err != nil {
		t.Fatal(err)
	}
	// Two slow lookups: push's question for the task's open PR, then
	// pr's own lookup, during which the human acts.
	s.Forge().InjectFault(localforge.Fault{Method: "GET", Path: "/repos/o/closed/pulls", Statuses: []int{0, 0}, Delay: time.Second})
	publishBare(t, s, "a-closed", request(s.Forge().CloneURL("o", "closed"), "T-c", nil))
	waitEventType(t, s, "a-closed", events.BranchPushed)
	if code := forgeAPI(t, s, "POST", "/repos/o/closed/pulls", map[string]any{
		"title": "t", "head": events.DefaultBranchPrefix + "a-closed", "base": "main"}); code != http.StatusCreated {
		t.Fatalf("opening: %d", code)
	}
	if code := forgeAPI(t, s, "PATCH", "/repos/o/closed/pulls/1", map[string]any{"state": "closed"}); code != http.StatusOK {
		t.Fatalf("closing: %d", code)
	}
	f := failure(t, attemptEvents(t, s, "a-closed"))
	if f.FailureType != events.GuardrailBlocked || f.Stage != "pr" || !strings.Contains(f.ErrorSummary, "closed without merging") ||
		!strings.Contains(f.ErrorSummary, "#1") {
		t.Fatalf("failure %+v", f)
	}
	if prs, _ := s.Forge().Pulls("o", "closed"); len(prs) != 1 || prs[0].State != localforge.StateClosed {
		t.Fatalf("pulls %+v", prs)
	}
}

// TestDryRunAndDraft: dry_run stops before the push and says what it
// would have done; draft reaches the forge.
func TestDryRunAndDraft(t *testing.T) {
	s := startTestStack(t, nil)
	evs := runAttempt(t, s, "a-dry", request(s.DemoRepoURL(), "T-dry", map[string]any{"dry_run": true, "draft": true}))
	want := "attempt.created,attempt.started,repo.fetched,backlog.edited,attempt.succeeded"
	if got := strings.Join(types(evs), ","); got != want {
		t.Fatalf("dry run events %s, want %s", got, want)
	}
	done := payload[events.Succeeded](t, evs, events.AttemptSucceeded)
	req := &events.Request{Task: events.Task{Title: "Task T-dry"}}
	if done.DryRun == nil || done.PRNumber != nil || done.DryRun.BranchName != events.DefaultBranchPrefix+"a-dry" ||
		len(done.DryRun.CommitSHA) != 40 || strings.Join(done.DryRun.ChangedPaths, ",") != events.BacklogPath ||
		done.DryRun.PRTitle != pr.Title(req) || !done.DryRun.Draft || !strings.Contains(done.Note, "dry run: would push") {
		t.Fatalf("dry run payload %+v plan %+v", done, done.DryRun)
	}
	if b := branches(t, s, demoOwner, demoRepo); strings.TrimSpace(b) != "main" {
		t.Fatalf("a dry run pushed: %q", b)
	}
	evs = runAttempt(t, s, "a-draft", request(s.DemoRepoURL(), "T-draft", map[string]any{"draft": true}))
	if evs[len(evs)-1].EventType != events.AttemptSucceeded {
		t.Fatalf("draft: %v", types(evs))
	}
	// The draft flag reaches the forge.
	if prs, _ := s.Forge().Pulls(demoOwner, demoRepo); len(prs) != 1 || !prs[0].Draft {
		t.Fatalf("draft PR: %+v", prs)
	}
}

// TestGitHubAppEndToEnd runs an attempt with GitHub App authentication:
// localforge mints installation tokens against the app's public key, the
// pr service uses them for the API, and clone and push for git.
func TestGitHubAppEndToEnd(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	var logs syncBuffer
	s := startTestStackWith(t, StackConfig{
		Forge:  ForgeConfig{AppID: 31337, InstallationID: 9, AppPrivateKey: keyPEM},
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}, nil)
	evs := runAttempt(t, s, "a-app", request(s.DemoRepoURL(), "T-app", nil))
	if got := strings.Join(types(evs), ","); got != strings.Join(happyPath, ",") {
		t.Fatalf("events %s", got)
	}
	creds := map[string]map[string]bool{"api": {}, "git": {}}
	for _, r := range s.Forge().Requests() {
		kind := "api"
		if strings.HasPrefix(r.Path, "/git/") {
			kind = "git"
		}
		creds[kind][r.Credential] = true
	}
	// Every git and API call used a minted installation token (the
	// token endpoint itself: the app's JWT); the forge token never.
	if fmt.Sprint(creds["git"]) != "map[installation:true]" || fmt.Sprint(creds["api"]) != "map[installation:true jwt:true]" {
		t.Fatalf("credentials used: %v", creds)
	}
	// No installation token or key in any event or log line.
	check := func(where, data string) {
		if strings.Contains(data, "ghs_") || strings.Contains(data, "PRIVATE KEY") {
			t.Errorf("a credential is in %s", where)
		}
	}
	check("the logs", logs.String())
	for _, e := range evs {
		check(string(e.EventType), string(e.Payload))
	}
}
