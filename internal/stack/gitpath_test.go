package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/backlogedit"
)

// request builds a bare request for repoURL with extra top-level fields.
func request(repoURL, taskID string, extra map[string]any, allowed ...string) []byte {
	if len(allowed) == 0 {
		allowed = []string{events.BacklogPath}
	}
	m := map[string]any{
		"target": map[string]any{"name": "demo", "repo_url": repoURL, "branch": "main"},
		"task":   map[string]any{"id": taskID, "title": "Task " + taskID, "allowed_paths": allowed},
	}
	for k, v := range extra {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	return b
}

// runAttempt publishes a bare request and returns its events.
func runAttempt(t *testing.T, s *Stack, attemptID string, body []byte) []events.Envelope {
	t.Helper()
	publishBare(t, s, attemptID, body)
	return attemptEvents(t, s, attemptID)
}

// failure returns the attempt.failed payload that ends evs.
func failure(t *testing.T, evs []events.Envelope) events.Failed {
	t.Helper()
	last := evs[len(evs)-1]
	var f events.Failed
	if last.EventType != events.AttemptFailed || last.DecodePayload(&f) != nil {
		t.Fatalf("attempt did not fail: %v", types(evs))
	}
	return f
}

func branches(t *testing.T, s *Stack, owner, name string) string {
	t.Helper()
	return gitOut(t, s.Forge().RepoDir(owner, name), "for-each-ref", "--format=%(refname:short)", "refs/heads/")
}

func TestPathViolation(t *testing.T) {
	s := startTestStack(t, nil)
	evs := runAttempt(t, s, "a-pv", request(s.DemoRepoURL(), "T-pv", nil, "docs/", "README.md"))
	f := failure(t, evs)
	if f.FailureType != events.PathViolation || f.Stage != "push" || !strings.Contains(f.ErrorSummary, events.BacklogPath) {
		t.Fatalf("failure = %+v", f)
	}
	if b := branches(t, s, demoOwner, demoRepo); strings.TrimSpace(b) != "main" {
		t.Fatalf("a branch was pushed: %q", b)
	}
}

func TestTaskAlreadyInBacklog(t *testing.T) {
	s := startTestStack(t, nil)
	evs := runAttempt(t, s, "a-same", request(s.DemoRepoURL(), "DEMO-0", nil))
	want := "attempt.created,attempt.started,repo.fetched,backlog.unchanged,attempt.succeeded"
	if got := strings.Join(types(evs), ","); got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	var p events.Succeeded
	_ = evs[len(evs)-1].DecodePayload(&p)
	if p.PRURL != nil || p.PRNumber != nil || !strings.Contains(p.Note, "already") {
		t.Fatalf("succeeded payload %+v", p)
	}
	raw := string(evs[len(evs)-1].Payload)
	if !strings.Contains(raw, `"pr_url":null`) {
		t.Fatalf("pr_url is not null: %s", raw)
	}
	if prs, _ := s.Forge().Pulls(demoOwner, demoRepo); len(prs) != 0 {
		t.Fatalf("a PR was opened: %+v", prs)
	}
}

func TestMissingAndInvalidBacklogs(t *testing.T) {
	s := startTestStack(t, nil)
	ctx := context.Background()
	cases := []struct {
		name, backlog, reason string // backlog "" = no file
	}{
		{"missing", "", "create_backlog"},
		{"empty", "\n", "empty"},
		{"notyaml", "tasks: [\n", "not YAML"},
		{"notlist", "tasks: {a: 1}\n", "not a list"},
		{"entry", "tasks:\n  - just a string\n", "not a mapping"},
		{"huge", "tasks:\n" + strings.Repeat("# padding line\n", backlogedit.MaxBacklogSize/15+1), "limit"},
	}
	for _, c := range cases {
		files := map[string][]byte{"README.md": []byte("x\n")}
		if c.backlog != "" {
			files[events.BacklogPath] = []byte(c.backlog)
		}
		if err := s.Forge().CreateRepo(ctx, "o", c.name, "main", files); err != nil {
			t.Fatal(err)
		}
		evs := runAttempt(t, s, "a-"+c.name, request(s.Forge().CloneURL("o", c.name), "T-1", nil))
		f := failure(t, evs)
		if f.FailureType != events.BacklogInvalid || f.Stage != "backlog-edit" || !strings.Contains(f.ErrorSummary, c.reason) {
			t.Errorf("%s: failure %+v, want backlog_invalid mentioning %q", c.name, f, c.reason)
		}
	}
	// create_backlog: the file is created with the task as its only entry.
	evs := runAttempt(t, s, "a-create", request(s.Forge().CloneURL("o", "missing"), "T-1", map[string]any{"create_backlog": true}))
	if last := evs[len(evs)-1]; last.EventType != events.AttemptSucceeded {
		t.Fatalf("create_backlog: %v", types(evs))
	}
	dir := s.Forge().RepoDir("o", "missing")
	got := gitOut(t, dir, "show", events.DefaultBranchPrefix+"a-create:"+events.BacklogPath)
	if got != string(backlogedit.NewBacklog(events.Task{ID: "T-1", Title: "Task T-1", AllowedPaths: []string{events.BacklogPath}})) {
		t.Fatalf("created backlog:\n%s", got)
	}
}

func TestBranchConflicts(t *testing.T) {
	s := startTestStack(t, nil)
	dir := s.Forge().RepoDir(demoOwner, demoRepo)
	main := strings.TrimSpace(gitOut(t, dir, "rev-parse", "main"))
	// Someone else's commit already on the attempt's branch: never forced.
	gitOut(t, dir, "update-ref", "refs/heads/"+events.DefaultBranchPrefix+"a-taken", main)
	f := failure(t, runAttempt(t, s, "a-taken", request(s.DemoRepoURL(), "T-taken", nil)))
	if f.FailureType != events.BranchConflict || f.Stage != "push" {
		t.Fatalf("existing branch: %+v", f)
	}
	if now := strings.TrimSpace(gitOut(t, dir, "rev-parse", events.DefaultBranchPrefix+"a-taken")); now != main {
		t.Fatal("the existing branch was overwritten")
	}
	// A branch named "blocker" makes "blocker/x" impossible.
	gitOut(t, dir, "update-ref", "refs/heads/blocker", main)
	f = failure(t, runAttempt(t, s, "a-blocked", request(s.DemoRepoURL(), "T-blocked", map[string]any{"branch_name": "blocker/x"})))
	if f.FailureType != events.BranchConflict || !strings.Contains(f.ErrorSummary, "blocker") {
		t.Fatalf("blocked name: %+v", f)
	}
}

func TestFallbackWithoutFilterSupport(t *testing.T) {
	s := startTestStack(t, nil)
	gitOut(t, s.Forge().RepoDir(demoOwner, demoRepo), "config", "uploadpack.allowFilter", "false")
	evs := runAttempt(t, s, "a-nofilter", request(s.DemoRepoURL(), "T-nf", nil))
	if got := strings.Join(types(evs), ","); got != strings.Join(happyPath, ",") {
		t.Fatalf("events %s", got)
	}
	var p events.Fetched
	_ = evs[2].DecodePayload(&p)
	if p.Strategy != "shallow" || p.BytesFetched <= 0 {
		t.Fatalf("repo.fetched %+v, want the shallow fallback", p)
	}
}

func TestRepoNotFound(t *testing.T) {
	s := startTestStack(t, nil)
	f := failure(t, runAttempt(t, s, "a-404", request(s.Forge().CloneURL("nobody", "nothing"), "T-1", nil)))
	if f.FailureType != events.RepoNotFound || f.Stage != "clone" || f.Deliveries != 1 {
		t.Fatalf("failure %+v", f)
	}
}

// syncBuffer is a log sink safe for the services' goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestNoCredentialAnywhere runs attempts that succeed and fail, with debug
// logging, then looks for the tokens in every log line, every event (data
// and headers), every snapshot object, every KV value and every file the
// stack stored on disk.
func TestNoCredentialAnywhere(t *testing.T) {
	const (
		forgeToken   = "forge-token-8f3a1c0b"
		wrongToken   = "wrong-token-77d2e4aa"
		controlToken = "control-token-19be0c55"
	)
	for _, tc := range []struct {
		name, gitToken string
		want           events.Type
	}{{"good", "", events.AttemptSucceeded}, {"wrong", wrongToken, events.AttemptFailed}} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			s := startTestStackWith(t, StackConfig{
				ForgeToken: forgeToken, GitToken: tc.gitToken, ControlToken: controlToken,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			}, nil)
			evs := runAttempt(t, s, "a-cred", request(s.DemoRepoURL(), "T-cred", nil))
			if last := evs[len(evs)-1]; last.EventType != tc.want {
				t.Fatalf("events %v", types(evs))
			}
			if tc.want == events.AttemptFailed {
				if f := failure(t, evs); f.FailureType != events.AuthFailed {
					t.Fatalf("failure %+v, want auth_failed", f)
				}
			}
			// Rejected requests that carry a credential, whatever else is
			// wrong with them: each is erased from the stream once answered.
			withCreds := strings.Replace(s.DemoRepoURL(), "http://", "http://x:"+forgeToken+"@", 1)
			for i, body := range []string{
				string(request(withCreds, "T-u", nil)),
				// an unknown field before it
				`{"aaa_unknown":1,"target":{"name":"demo","repo_url":"` + withCreds + `"},"task":{"id":"T-u","title":"t","allowed_paths":["x"]}}`,
				// no target.name
				`{"target":{"repo_url":"` + withCreds + `"},"task":{"id":"T-u","title":"t","allowed_paths":["x"]}}`,
				// truncated JSON
				`{"target":{"name":"demo","repo_url":"` + withCreds,
				// a token in the query string, escaped as JSON may
				`{"target":{"name":"demo","repo_url":"` + strings.ReplaceAll(s.DemoRepoURL(), "/", `\/`) + `?access_token=` + forgeToken + `"},"task":{"id":"T-u","title":"t","allowed_paths":["x"]}}`,
				// in another field of a valid request
				strings.Replace(string(request(s.DemoRepoURL(), "T-u", map[string]any{})), `"title":`, `"description":"clone https://x:`+forgeToken+`@example.com/r.git","title":`, 1),
				// a token as the user alone, with an unknown field; in a
				// scheme-relative URL; in another field of a valid request
				`{"colour":"red","target":{"name":"demo","repo_url":"https://` + forgeToken + `@github.com/o/r.git"},"task":{"id":"T-u","title":"t","allowed_paths":["x"]}}`,
				`{"target":{"name":"demo","repo_url":"//x:` + forgeToken + `@github.com/o/r.git"},"colour":"red"}`,
				strings.Replace(string(request(s.DemoRepoURL(), "T-u", map[string]any{})), `"title":`, `"description":"mirror at https://`+forgeToken+`@github.com/o/r.git","title":`, 1),
				// a token in a fragment, or under another query name
				`{"target":{"name":"demo","repo_url":"` + s.DemoRepoURL() + `#access_token=` + forgeToken + `"},"task":{"id":"T-u"}}`,
				`{"target":{"name":"demo","repo_url":"` + s.DemoRepoURL() + `?oauth_token=` + forgeToken + `"},"task":{"id":"T-u","title":"t","allowed_paths":["x"]}}`,
			} {
				id := "a-urlcred-" + strconv.Itoa(i)
				evs := runAttempt(t, s, id, []byte(body))
				if last := evs[len(evs)-1]; last.EventType != events.AttemptRejected {
					t.Errorf("%s: %v, want rejected", id, types(evs))
				}
				// clone erases the request after it publishes the rejection:
				// wait for the erasure.
				subject := events.Subject(id, events.AttemptRequested)
				n := countSubject(t, s, subject)
				for deadline := time.Now().Add(30 * time.Second); n != 0 && time.Now().Before(deadline); n = countSubject(t, s, subject) {
					time.Sleep(20 * time.Millisecond)
				}
				if n != 0 {
					t.Errorf("%s: the request is still in the stream (%d messages)", id, n)
				}
			}
			waitApplied(t, s)
			summary(t, s)

			secrets := []string{forgeToken, wrongToken, controlToken}
			check := func(where string, data []byte) {
				for _, sec := range secrets {
					if bytes.Contains(data, []byte(sec)) {
						t.Errorf("a credential is in %s", where)
					}
				}
			}
			check("the logs", []byte(logs.String()))
			ctx := context.Background()
			js, _ := jetstream.New(s.NATS())
			st, _ := js.Stream(ctx, stage.StreamName)
			info, _ := st.Info(ctx)
			for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
				m, err := st.GetMsg(ctx, seq)
				if err != nil {
					continue
				}
				hdr, _ := json.Marshal(m.Header)
				check("event "+m.Subject, append(m.Data, hdr...))
			}
			obs, _ := js.ObjectStore(ctx, stage.SnapshotBucket)
			list, _ := obs.List(ctx)
			for _, o := range list {
				data, err := obs.GetBytes(ctx, o.Name)
				if err != nil {
					t.Fatal(err)
				}
				check("snapshot "+o.Name, data)
			}
			for _, bucket := range []string{stage.AttemptsBucket, stage.ConfigBucket} {
				kv, _ := js.KeyValue(ctx, bucket)
				keys, _ := kv.ListKeys(ctx)
				for k := range keys.Keys() {
					e, err := kv.Get(ctx, k)
					if err == nil {
						check("kv "+bucket+"/"+k, append([]byte(k), e.Value()...))
					}
				}
			}
			// Everything on disk but the token files themselves: the
			// JetStream store (uncompressed), PR records, repositories.
			err := filepath.WalkDir(s.DataDir(), func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || strings.HasSuffix(p, ".token") {
					return err
				}
				data, err := os.ReadFile(p)
				if err == nil {
					check(p, data)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// Git objects are compressed on disk; read them back.
			if out, err := exec.Command("git", "--git-dir", s.Forge().RepoDir(demoOwner, demoRepo), "log", "--all", "-p").Output(); err == nil {
				check("the demo repository", out)
			}
		})
	}
}
