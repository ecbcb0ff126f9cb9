package localforge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-github/v60/github"
)

// newClient is the go-github client exactly as the github driver builds
// it for GitHub Enterprise.
func newClient(t *testing.T, srvURL, token string) *github.Client {
	t.Helper()
	c, err := github.NewClient(nil).WithAuthToken(token).WithEnterpriseURLs(srvURL+"/api/v3/", srvURL+"/api/uploads/")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// addBranch makes branch one commit ahead of main in the bare repository,
// without a clone: the git test covers pushing over HTTP.
func addBranch(t *testing.T, f *Forge, owner, name, branch string) string {
	t.Helper()
	bare := f.RepoDir(owner, name)
	sha := git(t, bare, nil, "commit-tree", "main^{tree}", "-p", "main", "-m", "work on "+branch)
	git(t, bare, nil, "update-ref", "refs/heads/"+branch, sha)
	return sha
}

func openPull(t *testing.T, gh *github.Client, owner, name, head, title string) *github.PullRequest {
	t.Helper()
	pr, _, err := gh.PullRequests.Create(context.Background(), owner, name, &github.NewPullRequest{
		Title: github.String(title), Head: github.String(head), Base: github.String("main"),
		Body: github.String("body of " + title),
	})
	if err != nil {
		t.Fatalf("create PR for %s: %v", head, err)
	}
	return pr
}

func TestPullRequestLifecycle(t *testing.T) {
	dir := t.TempDir()
	f, srv := startForge(t, Config{Dir: dir})
	createRepo(t, f, "acme", "widgets")
	headSHA := addBranch(t, f, "acme", "widgets", "leviathan/task-1")
	gh := newClient(t, srv.URL, testToken)
	ctx := context.Background()

	pr, resp, err := gh.PullRequests.Create(ctx, "acme", "widgets", &github.NewPullRequest{
		Title: github.String("Add task 1"), Head: github.String("acme:leviathan/task-1"),
		Base: github.String("main"), Body: github.String("details"), Draft: github.Bool(true),
	})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("Create status %d", resp.StatusCode)
	}
	for _, h := range []string{"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-GitHub-Request-Id"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("missing header %s", h)
		}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	if resp.Rate.Limit != defaultRateLimit || resp.Rate.Remaining != defaultRateLimit-1 {
		t.Errorf("rate = %+v", resp.Rate)
	}
	want := map[string]string{
		"number":   "1",
		"html_url": srv.URL + "/acme/widgets/pull/1",
		"url":      srv.URL + "/api/v3/repos/acme/widgets/pulls/1",
		"state":    "open",
		"title":    "Add task 1",
		"body":     "details",
		"draft":    "true",
		"head":     "leviathan/task-1 acme:leviathan/task-1 " + headSHA,
		"base.ref": "main",
		"user":     login,
	}
	got := map[string]string{
		"number": fmt.Sprint(pr.GetNumber()), "html_url": pr.GetHTMLURL(), "url": pr.GetURL(),
		"state": pr.GetState(), "title": pr.GetTitle(), "body": pr.GetBody(), "draft": fmt.Sprint(pr.GetDraft()),
		"head":     pr.GetHead().GetRef() + " " + pr.GetHead().GetLabel() + " " + pr.GetHead().GetSHA(),
		"base.ref": pr.GetBase().GetRef(), "user": pr.GetUser().GetLogin(),
	}
	for k := range want {
		if got[k] != want[k] {
			t.Errorf("%s = %q, want %q", k, got[k], want[k])
		}
	}
	if pr.CreatedAt == nil || time.Since(pr.CreatedAt.Time) > time.Minute {
		t.Errorf("created_at = %v", pr.CreatedAt)
	}

	t.Run("list by head", func(t *testing.T) {
		for _, head := range []string{"acme:leviathan/task-1", "leviathan/task-1"} {
			prs, _, err := gh.PullRequests.List(ctx, "acme", "widgets", &github.PullRequestListOptions{Head: head, State: "all"})
			if err != nil || len(prs) != 1 || prs[0].GetNumber() != 1 {
				t.Fatalf("List head=%s: %d PRs, %v", head, len(prs), err)
			}
		}
		prs, _, err := gh.PullRequests.List(ctx, "acme", "widgets", &github.PullRequestListOptions{Head: "acme:other"})
		if err != nil || len(prs) != 0 {
			t.Fatalf("List of another head: %d PRs, %v", len(prs), err)
		}
	})

	t.Run("get follows the branch tip", func(t *testing.T) {
		newSHA := addBranch(t, f, "acme", "widgets", "leviathan/task-1")
		got, _, err := gh.PullRequests.Get(ctx, "acme", "widgets", 1)
		if err != nil || got.GetHead().GetSHA() != newSHA {
			t.Fatalf("Get: head sha %s, want %s, err %v", got.GetHead().GetSHA(), newSHA, err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		addBranch(t, f, "acme", "widgets", "leviathan/task-2")
		create := func(head, base, title string) func(*github.Client) (*github.Response, error) {
			return func(c *github.Client) (*github.Response, error) {
				_, resp, err := c.PullRequests.Create(ctx, "acme", "widgets", &github.NewPullRequest{
					Title: github.String(title), Head: github.String(head), Base: github.String(base)})
				return resp, err
			}
		}
		get := func(repo string, n int) func(*github.Client) (*github.Response, error) {
			return func(c *github.Client) (*github.Response, error) {
				_, resp, err := c.PullRequests.Get(ctx, "acme", repo, n)
				return resp, err
			}
		}
		for _, tc := range []struct {
			name      string
			token     string
			call      func(*github.Client) (*github.Response, error)
			status    int
			message   string // top-level message
			errPrefix string // Errors[0].Message prefix, or "code field" when it has no message
		}{
			{"duplicate", "", create("leviathan/task-1", "main", "again"), 422, "Validation Failed", "A pull request already exists for acme:leviathan/task-1."},
			{"missing head", "", create("leviathan/nope", "main", "t"), 422, "Validation Failed", "invalid head"},
			{"head of another owner", "", create("evil:leviathan/task-2", "main", "t"), 422, "Validation Failed", "invalid head"},
			{"missing base", "", create("leviathan/task-2", "nope", "t"), 422, "Validation Failed", "invalid base"},
			{"no commits", "", create("main", "main", "t"), 422, "Validation Failed", "No commits between main and main"},
			{"no title", "", create("leviathan/task-2", "main", ""), 422, "Validation Failed", "missing_field title"},
			{"bad token", "wrong", get("widgets", 1), 401, "Bad credentials", ""},
			{"no token", "-", get("widgets", 1), 401, "Bad credentials", ""},
			{"unknown PR", "", get("widgets", 99), 404, "Not Found", ""},
			{"unknown repo", "", get("gadgets", 1), 404, "Not Found", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := gh
				switch tc.token {
				case "-":
					c, _ = github.NewClient(nil).WithEnterpriseURLs(srv.URL+"/api/v3/", srv.URL+"/api/uploads/")
				case "":
				default:
					c = newClient(t, srv.URL, tc.token)
				}
				_, err := tc.call(c)
				var er *github.ErrorResponse
				if !errors.As(err, &er) {
					t.Fatalf("got %T %v, want *github.ErrorResponse", err, err)
				}
				if er.Response.StatusCode != tc.status || er.Message != tc.message {
					t.Fatalf("got %d %q, want %d %q", er.Response.StatusCode, er.Message, tc.status, tc.message)
				}
				if tc.errPrefix == "" {
					return
				}
				if len(er.Errors) != 1 {
					t.Fatalf("errors = %+v", er.Errors)
				}
				e := er.Errors[0]
				got := e.Message
				if got == "" {
					got = e.Code + " " + e.Field
				}
				if e.Resource != "PullRequest" || !strings.HasPrefix(got, tc.errPrefix) {
					t.Fatalf("error = %+v, want %q", e, tc.errPrefix)
				}
			})
		}
	})

	t.Run("close", func(t *testing.T) {
		closed, _, err := gh.PullRequests.Edit(ctx, "acme", "widgets", 1, &github.PullRequest{State: github.String("closed")})
		if err != nil || closed.GetState() != "closed" || closed.ClosedAt == nil {
			t.Fatalf("Edit: %v, state %q, closed_at %v", err, closed.GetState(), closed.ClosedAt)
		}
		for state, n := range map[string]int{"open": 0, "closed": 1, "all": 1} {
			prs, _, err := gh.PullRequests.List(ctx, "acme", "widgets", &github.PullRequestListOptions{State: state})
			if err != nil || len(prs) != n {
				t.Fatalf("List state=%s: %d PRs, %v; want %d", state, len(prs), err, n)
			}
		}
		// With the old one closed, the same head may be proposed again.
		if pr := openPull(t, gh, "acme", "widgets", "leviathan/task-1", "retry"); pr.GetNumber() != 2 {
			t.Fatalf("reopened as #%d, want #2", pr.GetNumber())
		}
	})

	t.Run("restart keeps records", func(t *testing.T) {
		if _, err := os.Stat(filepath.Join(dir, "pulls", "acme", "widgets.json")); err != nil {
			t.Fatalf("record file: %v", err)
		}
		f2, srv2 := startForge(t, Config{Dir: dir})
		gh2 := newClient(t, srv2.URL, testToken)
		got, _, err := gh2.PullRequests.Get(ctx, "acme", "widgets", 1)
		if err != nil || got.GetState() != "closed" || got.GetTitle() != "Add task 1" {
			t.Fatalf("Get after restart: %v %q %q", err, got.GetState(), got.GetTitle())
		}
		if pr := openPull(t, gh2, "acme", "widgets", "leviathan/task-2", "task 2"); pr.GetNumber() != 3 {
			t.Fatalf("next number after restart = %d, want 3", pr.GetNumber())
		}
		prs, err := f2.Pulls("acme", "widgets")
		if err != nil || len(prs) != 3 {
			t.Fatalf("Pulls: %d, %v", len(prs), err)
		}
		for i, pr := range prs {
			if pr.Number != i+1 {
				t.Fatalf("Pulls not by number: %+v", prs)
			}
		}
	})
}

func TestListPagination(t *testing.T) {
	f, srv := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	gh := newClient(t, srv.URL, testToken)
	for i := 1; i <= 3; i++ {
		addBranch(t, f, "acme", "widgets", fmt.Sprintf("b%d", i))
		openPull(t, gh, "acme", "widgets", fmt.Sprintf("b%d", i), fmt.Sprintf("PR %d", i))
	}
	opts := &github.PullRequestListOptions{ListOptions: github.ListOptions{PerPage: 2}}
	var numbers []int
	for {
		prs, resp, err := gh.PullRequests.List(context.Background(), "acme", "widgets", opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, pr := range prs {
			numbers = append(numbers, pr.GetNumber())
		}
		if resp.NextPage == 0 {
			break
		}
		opts.Page = resp.NextPage
	}
	// GitHub lists newest first by default.
	if fmt.Sprint(numbers) != "[3 2 1]" {
		t.Fatalf("paged numbers = %v, want [3 2 1]", numbers)
	}
}

// TestConcurrentCreates checks that serialized mutations give every PR its
// own number.
func TestConcurrentCreates(t *testing.T) {
	f, srv := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	gh := newClient(t, srv.URL, testToken)
	const n = 8
	for i := range n {
		addBranch(t, f, "acme", "widgets", fmt.Sprintf("c%d", i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, _, err := gh.PullRequests.Create(context.Background(), "acme", "widgets", &github.NewPullRequest{
				Title: github.String("t"), Head: github.String(fmt.Sprintf("c%d", i)), Base: github.String("main")})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	prs, err := f.Pulls("acme", "widgets")
	if err != nil || len(prs) != n || prs[n-1].Number != n {
		t.Fatalf("Pulls: %d records, %v", len(prs), err)
	}
}

func TestRateLimitsAndFaults(t *testing.T) {
	f, srv := startForge(t, Config{RateLimit: 3})
	createRepo(t, f, "acme", "widgets")
	gh := newClient(t, srv.URL, testToken)
	ctx := context.Background()
	list := func() error {
		_, _, err := gh.PullRequests.List(ctx, "acme", "widgets", nil)
		return err
	}

	f.InjectFault(Fault{Method: "GET", Path: "/pulls", Status: http.StatusForbidden, RetryAfter: 1500 * time.Millisecond})
	var abuse *github.AbuseRateLimitError
	if err := list(); !errors.As(err, &abuse) || abuse.RetryAfter == nil || *abuse.RetryAfter != 2*time.Second {
		t.Fatalf("secondary limit: got %T %v", err, err)
	}
	// go-github now refuses calls until the Retry-After; a fresh client does not.
	gh = newClient(t, srv.URL, testToken)
	f.InjectFault(Fault{Status: http.StatusBadGateway, Times: 2})
	f.InjectFault(Fault{Status: http.StatusTooManyRequests}) // queued behind the 502s
	f.ClearFaults()
	if err := list(); err != nil {
		t.Fatalf("after ClearFaults: %v", err)
	}
	f.InjectFault(Fault{Status: http.StatusBadGateway})
	var er *github.ErrorResponse
	if err := list(); !errors.As(err, &er) || er.Response.StatusCode != http.StatusBadGateway {
		t.Fatalf("502 fault: got %v", err)
	}
	// Three requests used the hour's budget; the fourth is refused as
	// GitHub refuses it, and go-github then stops calling until the reset.
	var rl *github.RateLimitError
	if err := list(); !errors.As(err, &rl) || rl.Rate.Remaining != 0 || rl.Rate.Reset.Before(time.Now()) {
		t.Fatalf("primary limit: got %T %v", err, err)
	}
}

// TestListIsConditional: a list page carries an ETag; asked again with it
// in If-None-Match, an unchanged page is a 304 without a body, not counted
// against the rate limit, and a changed one (a new pull request) a 200
// with a new ETag.
func TestListIsConditional(t *testing.T) {
	f, srv := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	gh := newClient(t, srv.URL, testToken)
	addBranch(t, f, "acme", "widgets", "b1")
	openPull(t, gh, "acme", "widgets", "b1", "PR 1")
	get := func(ifNoneMatch string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v3/repos/acme/widgets/pulls?state=open", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		if ifNoneMatch != "" {
			req.Header.Set("If-None-Match", ifNoneMatch)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = io.Copy(&b, resp.Body)
		return resp, b.String()
	}
	first, body := get("")
	etag := first.Header.Get("ETag")
	if first.StatusCode != http.StatusOK || !strings.HasPrefix(etag, `W/"`) || !strings.Contains(body, `"PR 1"`) {
		t.Fatalf("first list: %d, ETag %q, %s", first.StatusCode, etag, body)
	}
	for _, inm := range []string{etag, strings.TrimPrefix(etag, "W/"), `"other", ` + etag, "*"} {
		resp, body := get(inm)
		if resp.StatusCode != http.StatusNotModified || body != "" || resp.Header.Get("ETag") != etag {
			t.Fatalf("If-None-Match %s: %d, ETag %q, body %q; want 304 with the same ETag and no body", inm, resp.StatusCode, resp.Header.Get("ETag"), body)
		}
	}
	// The 304s were not counted against the rate limit, as on GitHub:
	// the next request is the second counted.
	remaining := func(resp *http.Response) string { return resp.Header.Get("X-RateLimit-Remaining") }
	if resp, _ := get(`"other"`); resp.StatusCode != http.StatusOK || remaining(resp) == remaining(first) {
		t.Fatalf("another ETag: %d, %s left (%s after the first); want 200, one less", resp.StatusCode, remaining(resp), remaining(first))
	} else if r304, _ := get(etag); remaining(r304) != remaining(resp) {
		t.Fatalf("a 304 says %s left, the request before it %s: it was counted", remaining(r304), remaining(resp))
	}
	addBranch(t, f, "acme", "widgets", "b2")
	openPull(t, gh, "acme", "widgets", "b2", "PR 2")
	resp, body := get(etag)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("ETag") == etag || !strings.Contains(body, `"PR 2"`) {
		t.Fatalf("after a new pull request: %d, ETag %q (was %q), %s", resp.StatusCode, resp.Header.Get("ETag"), etag, body)
	}
}
