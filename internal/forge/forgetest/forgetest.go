// Package forgetest is the conformance suite every forge driver must pass:
// find-before-create, adoption of duplicates, closed PRs left closed,
// pagination, error classification for every fault GitHub produces,
// rate-limit waits taken from the headers, and pacing of mutating calls.
//
// It depends on no forge implementation. A test that has both a driver and
// a server the driver talks to (localforge for the github driver) runs it
// with two constructors, the way watermill's pub/sub suite is run:
//
//	func TestConformance(t *testing.T) {
//		forgetest.Run(t, newServer, func(t *testing.T, h *forgetest.Harness, opt forgetest.Options) forge.Driver { ... })
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
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/forge"
)

// The repository every server serves to the suite, with branch main.
const (
	Owner = "acme"
	Name  = "widgets"
)

// Server is a forge's API as the suite needs it: a GitHub-compatible REST
// API serving Owner/Name, and the fault-injection interface the suite
// arranges and observes it with.
type Server interface {
	// APIURL is the REST API root to give a driver (GitHub's
	// https://api.github.com/), ending in "/".
	APIURL() string
	// RepoURL is the clone URL of Owner/Name.
	RepoURL() string
	// Token is an API token with write access to Owner/Name.
	Token() string
	// Branches creates branches prefix1..prefixN, each one commit ahead
	// of main.
	Branches(t *testing.T, prefix string, n int)
	// Pulls lists the pull requests of Owner/Name as the forge records
	// them (State is forge.StateOpen or forge.StateClosed).
	Pulls(t *testing.T) []forge.PullRequest
	// Requests is the journal of API requests served, in the order they
	// ended.
	Requests() []Request
	// InjectFault makes the API answer matching requests with a fault;
	// ClearFaults removes every fault.
	InjectFault(Fault)
	ClearFaults()
}

// Request is one journal entry of a Server.
type Request struct {
	Method, Path string
	Status       int // 0 when the connection was dropped
	Start, End   time.Time
}

// Fault is one injected failure, as GitHub produces them.
type Fault struct {
	Method string // "" matches any
	Path   string // matches when a substring of the request path
	// Status answers Times matching requests (0: one). 403 and 429
	// are GitHub's secondary rate limit unless Message or RateLimitReset
	// says otherwise.
	Status int
	Times  int
	// Statuses answers the n-th matching request with Statuses[n]; 0
	// serves it normally.
	Statuses []int
	// RetryAfter is sent as Retry-After; RateLimitReset answers as an
	// exhausted primary limit resetting this far from now.
	RetryAfter, RateLimitReset time.Duration
	Message                    string        // the error message
	Delay                      time.Duration // holds the answer back
	Slow                       time.Duration // the server works this long first, even if the client gives up
	Drop                       bool          // closes the connection without an answer
	AfterEffect                bool          // the request takes effect before the fault answers
}

// NewServer starts a fresh Server for one case, serving Owner/Name with
// branches feature-1 to feature-3 (see Server.Branches), and stops it when
// t ends.
type NewServer func(t *testing.T) Server

// Harness is the forge one case runs against.
type Harness struct {
	Server
	// RepoURL is the clone URL of Owner/Name.
	RepoURL string
}

// NewHarness starts a server with newServer.
func NewHarness(t *testing.T, newServer NewServer) *Harness {
	t.Helper()
	s := newServer(t)
	return &Harness{Server: s, RepoURL: s.RepoURL()}
}

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

// Run runs the conformance suite, each case on a fresh server.
func Run(t *testing.T, newServer NewServer, newDriver NewDriver) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git not installed: the suite's servers serve git (make test installs it)")
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
		{"UnansweredCallHoldsThePace", func(o *Options) { o.MinInterval = 100 * time.Millisecond; o.RequestTimeout = 400 * time.Millisecond }, unansweredHoldsPace},
		{"PacingNeverBlocksLong", func(o *Options) { o.MinInterval = 3 * time.Second; o.MaxPaceWait = 100 * time.Millisecond }, pacedBeyondWait},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := NewHarness(t, newServer)
			opt := defaults
			if c.opt != nil {
				c.opt(&opt)
			}
			c.run(t, h, newDriver(t, h, opt))
		})
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
	req, _ := http.NewRequest(method, strings.TrimSuffix(h.APIURL(), "/")+path, rd)
	req.Header.Set("Authorization", "Bearer "+h.Token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// Count counts journal entries with method whose path contains path.
func (h *Harness) Count(method, path string) int {
	n := 0
	for _, r := range h.Requests() {
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
	if len(prs) != 1 || prs[0].State != forge.StateClosed || h.Count("POST", "/pulls") != posts {
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
	h.InjectFault(Fault{Method: "GET", Path: "/repos/acme/widgets/pulls", Statuses: []int{500, 502}})
	h.InjectFault(Fault{Method: "POST", Path: "/repos/acme/widgets/pulls", Status: 503})
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
	h.InjectFault(Fault{Method: "POST", Path: "/pulls", Status: http.StatusBadGateway, AfterEffect: true})
	_, _, err := ensure(t, d, h.req("feature-1"))
	retryErr(t, err)
	onePR(t, h, 1)
	if pr := mustEnsure(t, d, h.req("feature-1"), true); pr.Number != 1 {
		t.Fatalf("adopted %+v", pr)
	}
	// The same with a dropped connection after the effect.
	h.InjectFault(Fault{Method: "POST", Path: "/pulls", Drop: true, AfterEffect: true})
	_, _, err = ensure(t, d, h.req("feature-2"))
	retryErr(t, err)
	mustEnsure(t, d, h.req("feature-2"), true)
	onePR(t, h, 2)
}

func retryAfterHonoured(t *testing.T, h *Harness, d forge.Driver) {
	h.InjectFault(Fault{Method: "POST", Path: "/pulls", Status: http.StatusTooManyRequests, RetryAfter: time.Second})
	_, _, err := ensure(t, d, h.req("feature-1"))
	re := retryErr(t, err)
	if !errors.Is(err, forge.ErrRateLimited) || re.After != time.Second {
		t.Fatalf("429 Retry-After 1: %v, After %v", err, re.After)
	}
	// Until then the driver calls nothing at all with this token.
	calls := len(h.Requests())
	_, _, err = ensure(t, d, h.req("feature-2"))
	if re := retryErr(t, err); re.After <= 0 || re.After > time.Second || len(h.Requests()) != calls {
		t.Fatalf("during the wait: %v, After %v, %d new requests", err, re.After, len(h.Requests())-calls)
	}
	time.Sleep(re.After)
	mustEnsure(t, d, h.req("feature-1"), false)
	onePR(t, h, 1)
}

func secondaryBackoff(t *testing.T, h *Harness, d forge.Driver) {
	// GitHub's secondary limit without Retry-After; X-RateLimit-Reset is
	// sent (an hour away) but remaining is not 0, so it does not apply.
	h.InjectFault(Fault{Method: "POST", Path: "/pulls", Status: http.StatusForbidden, Times: 2})
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
	h.InjectFault(Fault{Method: "GET", Path: "/pulls", Status: http.StatusForbidden, RateLimitReset: 2 * time.Second})
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
		fault Fault
		want  error
	}{
		{"401", Fault{Path: "/repos/", Status: http.StatusUnauthorized}, forge.ErrAuth},
		{"403 permission", Fault{Path: "/repos/", Status: http.StatusForbidden, Message: "Resource not accessible by integration"}, forge.ErrAuth},
		{"404", Fault{Path: "/repos/", Status: http.StatusNotFound}, forge.ErrNotFound},
		{"422 invalid", Fault{Method: "POST", Path: "/repos/", Status: http.StatusUnprocessableEntity, Message: "Validation Failed"}, forge.ErrInvalid},
	} {
		h.InjectFault(tc.fault)
		_, _, err := ensure(t, d, h.req("feature-1"))
		var re *forge.RetryError
		if !errors.Is(err, tc.want) || errors.As(err, &re) {
			t.Errorf("%s: %v, want %v and no retry", tc.name, err, tc.want)
		}
		h.ClearFaults()
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
	h.InjectFault(Fault{Method: "GET", Path: "/pulls", Delay: 3 * time.Second})
	start := time.Now()
	_, _, err := ensure(t, d, h.req("feature-1"))
	retryErr(t, err)
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("gave up after %v, want about 300ms", took)
	}
	// A create that takes effect but answers too late: the retry adopts.
	h.InjectFault(Fault{Method: "POST", Path: "/pulls", Delay: 3 * time.Second, AfterEffect: true})
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
	posts := creates(h)
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

// creates is the journal's pull request creates, in the order they ended.
func creates(h *Harness) []Request {
	var posts []Request
	for _, r := range h.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/pulls") {
			posts = append(posts, r)
		}
	}
	return posts
}

func unansweredHoldsPace(t *testing.T, h *Harness, d forge.Driver) {
	// A create the forge is still working on when the driver's timeout
	// ends; it takes effect after. The next mutating call must not
	// overlap it.
	h.InjectFault(Fault{Method: "POST", Path: "/pulls", Slow: 500 * time.Millisecond})
	_, _, err := ensure(t, d, h.req("feature-1"))
	retryErr(t, err)
	mustEnsure(t, d, h.req("feature-2"), false)
	posts := creates(h)
	if len(posts) != 2 {
		t.Fatalf("%d POSTs, want 2", len(posts))
	}
	slices.SortFunc(posts, func(a, b Request) int { return a.Start.Compare(b.Start) })
	if gap := posts[1].Start.Sub(posts[0].End); gap < 100*time.Millisecond-20*time.Millisecond {
		t.Fatalf("the second POST started %v after the unanswered one ended (it took %v), want >= 100ms",
			gap, posts[0].End.Sub(posts[0].Start))
	}
	onePR(t, h, 2)
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
