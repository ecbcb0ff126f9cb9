// Package forgetest is the conformance suite every forge driver must pass,
// run against localforge with its fault injection: find-before-create,
// adoption of duplicates, closed PRs left closed, pagination, error
// classification for every fault GitHub produces, rate-limit waits taken
// from the headers, and pacing of mutating calls.
//
// A driver's test calls Run with a constructor:
//
//	func TestConformance(t *testing.T) {
//		forgetest.Run(t, func(t *testing.T, h *forgetest.Harness, opt forgetest.Options) forge.Driver { ... })
//	}
package forgetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/services/internal/forge"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// Token is the forge token of every harness.
const Token = "forgetest-token-5b1e"

// The repository of every harness.
const (
	Owner = "acme"
	Name  = "widgets"
)

// Harness is the forge one subtest runs against.
type Harness struct {
	Forge *localforge.Forge
	// URL is the forge's base URL; its API root is URL + "/api/v3/".
	URL string
	// RepoURL is the clone URL of acme/widgets.
	RepoURL string
}

// APIURL is the REST API root to give a driver.
func (h *Harness) APIURL() string { return h.URL + "/api/v3/" }

// Options are what the suite needs configurable in a driver: it sets them
// short so that waits are observable in a test's time.
type Options struct {
	MinInterval      time.Duration // between mutating calls
	MaxPaceWait      time.Duration // longest in-line wait for a slot
	RateLimitBackoff time.Duration // after a rate limit that names no wait
	RequestTimeout   time.Duration
}

// NewDriver builds the driver under test for h with opt.
type NewDriver func(t *testing.T, h *Harness, opt Options) forge.Driver

// defaults keep the suite fast; cases override what they test.
var defaults = Options{
	MinInterval: 50 * time.Millisecond, MaxPaceWait: 2 * time.Second,
	RateLimitBackoff: 300 * time.Millisecond, RequestTimeout: 2 * time.Second,
}

// Run runs the conformance suite, each case on a fresh forge.
func Run(t *testing.T, newDriver NewDriver) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed (CI installs it)")
	}
	cases := []struct {
		name string
		opt  func(*Options)
		run  func(t *testing.T, h *Harness, d forge.Driver)
	}{
		{"FindBeforeCreate", nil, findBeforeCreate},
		{"AdoptsDuplicate", nil, adoptsDuplicate},
		{"ClosedByHumanStaysClosed", nil, closedStaysClosed},
		{"OpenPRsAllPages", nil, openPRsAllPages},
		{"ServerErrorsThenSuccess", nil, serverErrorsThenSuccess},
		{"LostCreateAnswer", nil, lostCreateAnswer},
		{"RetryAfter", nil, retryAfterHonoured},
		{"SecondaryLimitBacksOff", nil, secondaryBackoff},
		{"PrimaryLimitWaitsForReset", nil, primaryReset},
		{"PermanentErrors", nil, permanentErrors},
		{"Timeouts", func(o *Options) { o.RequestTimeout = 300 * time.Millisecond }, timeouts},
		{"MutatingCallsPaced", func(o *Options) { o.MinInterval = 400 * time.Millisecond }, paced},
		{"PacingNeverBlocksLong", func(o *Options) { o.MinInterval = 3 * time.Second; o.MaxPaceWait = 100 * time.Millisecond }, pacedBeyondWait},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := NewHarness(t)
			opt := defaults
			if c.opt != nil {
				c.opt(&opt)
			}
			c.run(t, h, newDriver(t, h, opt))
		})
	}
}

// NewHarness starts a localforge with acme/widgets and branches feature-1
// to feature-3, each one commit ahead of main. Options adjust the forge's
// configuration.
func NewHarness(t *testing.T, options ...func(*localforge.Config)) *Harness {
	t.Helper()
	cfg := localforge.Config{Dir: t.TempDir(), Token: Token}
	for _, o := range options {
		o(&cfg)
	}
	f, err := localforge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	f.SetBaseURL(srv.URL)
	err = f.CreateRepo(context.Background(), Owner, Name, "main", map[string][]byte{"README.md": []byte("# widgets\n")})
	if err != nil {
		t.Fatal(err)
	}
	h := &Harness{Forge: f, URL: srv.URL, RepoURL: f.CloneURL(Owner, Name)}
	h.Branches(t, "feature-", 3)
	return h
}

// Branches creates branches prefix1..prefixN, each one commit ahead of
// main, in one git call.
func (h *Harness) Branches(t *testing.T, prefix string, n int) {
	t.Helper()
	bare := h.Forge.RepoDir(Owner, Name)
	out, err := exec.Command("git", "--git-dir", bare, "-c", "user.name=T", "-c", "user.email=t@example.com",
		"commit-tree", "main^{tree}", "-p", "main", "-m", "work").Output()
	if err != nil {
		t.Fatalf("commit-tree: %v", err)
	}
	var stdin bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&stdin, "create refs/heads/%s%d %s", prefix, i, out)
	}
	cmd := exec.Command("git", "--git-dir", bare, "update-ref", "--stdin")
	cmd.Stdin = &stdin
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("update-ref: %v: %s", err, out)
	}
}

// API calls the forge's REST API with the forge token, as another client
// (a human, another replica) would; it returns the status and decoded body.
func (h *Harness) API(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, h.URL+"/api/v3"+path, rd)
	req.Header.Set("Authorization", "Bearer "+Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// Pulls returns the forge's records of acme/widgets.
func (h *Harness) Pulls(t *testing.T) []localforge.PullRequest {
	t.Helper()
	prs, err := h.Forge.Pulls(Owner, Name)
	if err != nil {
		t.Fatal(err)
	}
	return prs
}

// Count counts journal entries with method whose path contains path.
func (h *Harness) Count(method, path string) int {
	n := 0
	for _, r := range h.Forge.Requests() {
		if r.Method == method && strings.Contains(r.Path, path) {
			n++
		}
	}
	return n
}

func (h *Harness) req(head string) forge.PRRequest {
	return forge.PRRequest{RepoURL: h.RepoURL, Base: "main", Head: head, Title: "Propose " + head, Body: "body of " + head}
}

// ensure calls forge.EnsurePR with no guard.
func ensure(t *testing.T, d forge.Driver, req forge.PRRequest) (forge.PullRequest, bool, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return forge.EnsurePR(ctx, d, req, nil)
}

// mustEnsure fails the test unless EnsurePR succeeds with reused as want.
func mustEnsure(t *testing.T, d forge.Driver, req forge.PRRequest, wantReused bool) forge.PullRequest {
	t.Helper()
	pr, reused, err := ensure(t, d, req)
	if err != nil || reused != wantReused {
		t.Fatalf("EnsurePR(%s) = %+v reused %v, %v; want reused %v", req.Head, pr, reused, err, wantReused)
	}
	return pr
}

// retryErr fails the test unless err is a *forge.RetryError, and returns it.
func retryErr(t *testing.T, err error) *forge.RetryError {
	t.Helper()
	var re *forge.RetryError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want a *forge.RetryError", err, err)
	}
	return re
}

func onePR(t *testing.T, h *Harness, want int) {
	t.Helper()
	if prs := h.Pulls(t); len(prs) != want {
		t.Fatalf("forge has %d pull requests, want %d: %+v", len(prs), want, prs)
	}
}

func findBeforeCreate(t *testing.T, h *Harness, d forge.Driver) {
	req := h.req("feature-1")
	req.Draft = true
	pr := mustEnsure(t, d, req, false)
	if pr.Number != 1 || pr.State != forge.StateOpen || pr.Head != "feature-1" || pr.Base != "main" ||
		pr.Title != req.Title || !pr.Draft || pr.Repo != Owner+"/"+Name || !strings.HasSuffix(pr.URL, "/acme/widgets/pull/1") {
		t.Fatalf("created %+v", pr)
	}
	posts := h.Count("POST", "/pulls")
	again := mustEnsure(t, d, req, true)
	if again.Number != pr.Number || h.Count("POST", "/pulls") != posts {
		t.Fatalf("second EnsurePR: %+v, POSTs %d → %d", again, posts, h.Count("POST", "/pulls"))
	}
	prs := h.Pulls(t)
	if len(prs) != 1 || !prs[0].Draft || prs[0].Body != req.Body {
		t.Fatalf("forge records %+v", prs)
	}
	// Another branch's PR is not this one.
	if other := mustEnsure(t, d, h.req("feature-2"), false); other.Number != 2 {
		t.Fatalf("feature-2: %+v", other)
	}
}

func adoptsDuplicate(t *testing.T, h *Harness, d forge.Driver) {
	// Another replica created it between our lookup and our create.
	if code, out := h.API(t, "POST", "/repos/acme/widgets/pulls", map[string]any{"title": "theirs", "head": "feature-1", "base": "main"}); code != http.StatusCreated {
		t.Fatalf("setup: %d %v", code, out)
	}
	pr, reused, err := d.CreatePR(context.Background(), h.req("feature-1"))
	if err != nil || !reused || pr.Number != 1 || pr.Title != "theirs" {
		t.Fatalf("CreatePR on a duplicate = %+v reused %v, %v", pr, reused, err)
	}
	onePR(t, h, 1)
}

func closedStaysClosed(t *testing.T, h *Harness, d forge.Driver) {
	pr := mustEnsure(t, d, h.req("feature-1"), false)
	if code, _ := h.API(t, "PATCH", fmt.Sprintf("/repos/acme/widgets/pulls/%d", pr.Number), map[string]any{"state": "closed"}); code != http.StatusOK {
		t.Fatalf("closing: %d", code)
	}
	posts := h.Count("POST", "/pulls")
	_, _, err := ensure(t, d, h.req("feature-1"))
	if !errors.Is(err, forge.ErrClosedByHuman) || !strings.Contains(err.Error(), "#1") {
		t.Fatalf("EnsurePR after a human closed the PR: %v, want ErrClosedByHuman naming #1", err)
	}
	prs := h.Pulls(t)
	if len(prs) != 1 || prs[0].State != localforge.StateClosed || h.Count("POST", "/pulls") != posts {
		t.Fatalf("the closed PR was touched or another opened: %+v", prs)
	}
}

func openPRsAllPages(t *testing.T, h *Harness, d forge.Driver) {
	const n = 102 // more than one page of 100
	h.Branches(t, "bulk-", n)
	for i := 1; i <= n; i++ {
		if code, out := h.API(t, "POST", "/repos/acme/widgets/pulls", map[string]any{
			"title": fmt.Sprint("bulk ", i), "head": fmt.Sprint("bulk-", i), "base": "main", "body": fmt.Sprint("body ", i),
		}); code != http.StatusCreated {
			t.Fatalf("setup PR %d: %d %v", i, code, out)
		}
	}
	h.API(t, "PATCH", "/repos/acme/widgets/pulls/1", map[string]any{"state": "closed"})
	open, err := d.OpenPRs(context.Background(), h.RepoURL)
	if err != nil || len(open) != n-1 {
		t.Fatalf("OpenPRs: %d, %v; want %d", len(open), err, n-1)
	}
	seen := map[int]bool{}
	for _, pr := range open {
		if pr.State != forge.StateOpen || pr.Number == 1 || seen[pr.Number] || pr.Body != fmt.Sprint("body ", pr.Number) ||
			pr.Head != fmt.Sprint("bulk-", pr.Number) {
			t.Fatalf("OpenPRs returned %+v", pr)
		}
		seen[pr.Number] = true
	}
	if found, err := d.FindPRs(context.Background(), h.RepoURL, "bulk-1"); err != nil || len(found) != 1 || found[0].State != forge.StateClosed {
		t.Fatalf("FindPRs(bulk-1) = %+v, %v; want the closed one", found, err)
	}
	if found, err := d.FindPRs(context.Background(), h.RepoURL, "feature-1"); err != nil || len(found) != 0 {
		t.Fatalf("FindPRs(feature-1) = %+v, %v; want none", found, err)
	}
}

func serverErrorsThenSuccess(t *testing.T, h *Harness, d forge.Driver) {
	h.Forge.InjectFault(localforge.Fault{Method: "GET", Path: "/repos/acme/widgets/pulls", Statuses: []int{500, 502}})
	h.Forge.InjectFault(localforge.Fault{Method: "POST", Path: "/repos/acme/widgets/pulls", Status: 503})
	for i := range 3 {
		_, _, err := ensure(t, d, h.req("feature-1"))
		if re := retryErr(t, err); re.After != 0 || errors.Is(err, forge.ErrRateLimited) {
			t.Fatalf("try %d: %v, want a plain retry", i, err)
		}
	}
	mustEnsure(t, d, h.req("feature-1"), false)
	onePR(t, h, 1)
}

func lostCreateAnswer(t *testing.T, h *Harness, d forge.Driver) {
	// The PR is made, then the gateway answers 502: the retry adopts it.
	h.Forge.InjectFault(localforge.Fault{Method: "POST", Path: "/pulls", Status: http.StatusBadGateway, AfterEffect: true})
	_, _, err := ensure(t, d, h.req("feature-1"))
	retryErr(t, err)
	onePR(t, h, 1)
	if pr := mustEnsure(t, d, h.req("feature-1"), true); pr.Number != 1 {
		t.Fatalf("adopted %+v", pr)
	}
	// The same with a dropped connection after the effect.
	h.Forge.InjectFault(localforge.Fault{Method: "POST", Path: "/pulls", Drop: true, AfterEffect: true})
	_, _, err = ensure(t, d, h.req("feature-2"))
	retryErr(t, err)
	mustEnsure(t, d, h.req("feature-2"), true)
	onePR(t, h, 2)
}

func retryAfterHonoured(t *testing.T, h *Harness, d forge.Driver) {
	h.Forge.InjectFault(localforge.Fault{Method: "POST", Path: "/pulls", Status: http.StatusTooManyRequests, RetryAfter: time.Second})
	_, _, err := ensure(t, d, h.req("feature-1"))
	re := retryErr(t, err)
	if !errors.Is(err, forge.ErrRateLimited) || re.After != time.Second {
		t.Fatalf("429 Retry-After 1: %v, After %v", err, re.After)
	}
	// Until then the driver calls nothing at all with this token.
	calls := len(h.Forge.Requests())
	_, _, err = ensure(t, d, h.req("feature-2"))
	if re := retryErr(t, err); re.After <= 0 || re.After > time.Second || len(h.Forge.Requests()) != calls {
		t.Fatalf("during the wait: %v, After %v, %d new requests", err, re.After, len(h.Forge.Requests())-calls)
	}
	time.Sleep(re.After)
	mustEnsure(t, d, h.req("feature-1"), false)
	onePR(t, h, 1)
}

func secondaryBackoff(t *testing.T, h *Harness, d forge.Driver) {
	// GitHub's secondary limit without Retry-After; X-RateLimit-Reset is
	// sent (an hour away) but remaining is not 0, so it does not apply.
	h.Forge.InjectFault(localforge.Fault{Method: "POST", Path: "/pulls", Status: http.StatusForbidden, Times: 2})
	_, _, err := ensure(t, d, h.req("feature-1"))
	if re := retryErr(t, err); !errors.Is(err, forge.ErrRateLimited) || re.After != defaults.RateLimitBackoff {
		t.Fatalf("first secondary limit: %v, After %v, want %v", err, re.After, defaults.RateLimitBackoff)
	}
	time.Sleep(defaults.RateLimitBackoff)
	_, _, err = ensure(t, d, h.req("feature-1"))
	if re := retryErr(t, err); re.After != 2*defaults.RateLimitBackoff {
		t.Fatalf("repeated secondary limit: After %v, want it doubled to %v", re.After, 2*defaults.RateLimitBackoff)
	}
	time.Sleep(2 * defaults.RateLimitBackoff)
	mustEnsure(t, d, h.req("feature-1"), false)
	onePR(t, h, 1)
}

func primaryReset(t *testing.T, h *Harness, d forge.Driver) {
	h.Forge.InjectFault(localforge.Fault{Method: "GET", Path: "/pulls", Status: http.StatusForbidden, RateLimitReset: 2 * time.Second})
	start := time.Now()
	_, _, err := ensure(t, d, h.req("feature-1"))
	re := retryErr(t, err)
	// X-RateLimit-Reset has whole seconds: the wait ends at that second.
	if !errors.Is(err, forge.ErrRateLimited) || re.After < time.Second || re.After > 2*time.Second+time.Since(start) {
		t.Fatalf("primary limit: %v, After %v, want until the reset ≈ 2s", err, re.After)
	}
	onePR(t, h, 0)
}

func permanentErrors(t *testing.T, h *Harness, d forge.Driver) {
	// Faults aim at the repository API, not at how a driver gets its
	// token (an App driver first mints one).
	for _, tc := range []struct {
		name  string
		fault localforge.Fault
		want  error
	}{
		{"401", localforge.Fault{Path: "/repos/", Status: http.StatusUnauthorized}, forge.ErrAuth},
		{"403 permission", localforge.Fault{Path: "/repos/", Status: http.StatusForbidden, Message: "Resource not accessible by integration"}, forge.ErrAuth},
		{"404", localforge.Fault{Path: "/repos/", Status: http.StatusNotFound}, forge.ErrNotFound},
		{"422 invalid", localforge.Fault{Method: "POST", Path: "/repos/", Status: http.StatusUnprocessableEntity, Message: "Validation Failed"}, forge.ErrInvalid},
	} {
		h.Forge.InjectFault(tc.fault)
		_, _, err := ensure(t, d, h.req("feature-1"))
		var re *forge.RetryError
		if !errors.Is(err, tc.want) || errors.As(err, &re) {
			t.Errorf("%s: %v, want %v and no retry", tc.name, err, tc.want)
		}
		h.Forge.ClearFaults()
	}
	missing := h.req("feature-1")
	missing.RepoURL = strings.Replace(h.RepoURL, "/widgets.git", "/nothing.git", 1)
	if _, _, err := ensure(t, d, missing); !errors.Is(err, forge.ErrNotFound) {
		t.Errorf("missing repository: %v, want ErrNotFound", err)
	}
	if _, _, err := ensure(t, d, h.req("no-such-branch")); !errors.Is(err, forge.ErrInvalid) {
		t.Errorf("missing head branch: %v, want ErrInvalid", err)
	}
	onePR(t, h, 0)
}

func timeouts(t *testing.T, h *Harness, d forge.Driver) {
	// A slow lookup: the driver gives up at its timeout.
	h.Forge.InjectFault(localforge.Fault{Method: "GET", Path: "/pulls", Delay: 3 * time.Second})
	start := time.Now()
	_, _, err := ensure(t, d, h.req("feature-1"))
	retryErr(t, err)
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("gave up after %v, want about 300ms", took)
	}
	// A create that takes effect but answers too late: the retry adopts.
	h.Forge.InjectFault(localforge.Fault{Method: "POST", Path: "/pulls", Delay: 3 * time.Second, AfterEffect: true})
	_, _, err = ensure(t, d, h.req("feature-1"))
	retryErr(t, err)
	mustEnsure(t, d, h.req("feature-1"), true)
	onePR(t, h, 1)
}

func paced(t *testing.T, h *Harness, d forge.Driver) {
	// Three creates at once: they go one at a time, 400ms apart.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = ensure(t, d, h.req(fmt.Sprint("feature-", i+1)))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	var posts []localforge.RequestRecord
	for _, r := range h.Forge.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/pulls") {
			posts = append(posts, r)
		}
	}
	if len(posts) != 3 {
		t.Fatalf("%d POSTs, want 3", len(posts))
	}
	for i := 1; i < len(posts); i++ {
		// The journal lists requests as they end; the server may see a
		// request a moment after the client sent it, never before.
		if gap := posts[i].Start.Sub(posts[i-1].End); gap < 400*time.Millisecond-20*time.Millisecond {
			t.Fatalf("POST %d started %v after the previous ended, want >= 400ms", i, gap)
		}
	}
	onePR(t, h, 3)
}

func pacedBeyondWait(t *testing.T, h *Harness, d forge.Driver) {
	mustEnsure(t, d, h.req("feature-1"), false)
	start := time.Now()
	_, _, err := ensure(t, d, h.req("feature-2"))
	re := retryErr(t, err)
	if !errors.Is(err, forge.ErrPaced) || re.After < 2*time.Second || re.After > 3*time.Second || time.Since(start) > time.Second {
		t.Fatalf("next slot 3s away: %v, After %v after %v; want ErrPaced at once", err, re.After, time.Since(start))
	}
	onePR(t, h, 1)
}
