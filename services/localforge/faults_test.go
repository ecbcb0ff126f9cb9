package localforge

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-github/v60/github"
)

// adminDo calls an admin endpoint with the forge token.
func adminDo(t *testing.T, srvURL, method, path, body, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srvURL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestFaultSequencesAndEffects(t *testing.T) {
	f, srv := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	addBranch(t, f, "acme", "widgets", "feature")
	gh := newClient(t, srv.URL, testToken)
	ctx := context.Background()
	list := func() int {
		_, resp, _ := gh.PullRequests.List(ctx, "acme", "widgets", nil)
		if resp == nil {
			return 0
		}
		return resp.StatusCode
	}

	// A sequence: 500, then a normal answer, then 503; then nothing.
	f.InjectFault(Fault{Method: "GET", Path: "/repos/acme/widgets/pulls", Statuses: []int{500, 0, 503}})
	for i, want := range []int{500, 200, 503, 200} {
		if got := list(); got != want {
			t.Fatalf("request %d: status %d, want %d", i, got, want)
		}
	}

	// A lost answer: the PR is created, the client sees 502.
	f.InjectFault(Fault{Method: "POST", Path: "/pulls", Status: http.StatusBadGateway, AfterEffect: true})
	_, resp, err := gh.PullRequests.Create(ctx, "acme", "widgets", &github.NewPullRequest{
		Title: github.String("t"), Head: github.String("feature"), Base: github.String("main"),
	})
	if err == nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("create under a lost-answer fault: %v", err)
	}
	if prs, _ := f.Pulls("acme", "widgets"); len(prs) != 1 {
		t.Fatalf("the request did not take effect: %d PRs", len(prs))
	}

	// A primary rate limit: remaining 0 and a reset.
	f.InjectFault(Fault{Status: http.StatusForbidden, RateLimitReset: 3 * time.Second})
	var rl *github.RateLimitError
	if _, _, err := gh.PullRequests.List(ctx, "acme", "widgets", nil); !errors.As(err, &rl) ||
		time.Until(rl.Rate.Reset.Time) > 4*time.Second || time.Until(rl.Rate.Reset.Time) < time.Second {
		t.Fatalf("primary rate limit: %T %v", err, err)
	}
	gh = newClient(t, srv.URL, testToken) // go-github remembers the limit

	// A permission error is a 403 that is not a rate limit.
	f.InjectFault(Fault{Status: http.StatusForbidden, Message: "Resource not accessible by integration"})
	var er *github.ErrorResponse
	if _, _, err := gh.PullRequests.List(ctx, "acme", "widgets", nil); !errors.As(err, &er) ||
		er.Message != "Resource not accessible by integration" {
		t.Fatalf("permission 403: %T %v", err, err)
	}

	// Latency: a client with a shorter timeout gives up.
	f.InjectFault(Fault{Path: "/pulls", Delay: 2 * time.Second})
	short, _ := github.NewClient(&http.Client{Timeout: 200 * time.Millisecond}).WithAuthToken(testToken).
		WithEnterpriseURLs(srv.URL+"/api/v3/", srv.URL+"/api/v3/")
	start := time.Now()
	if _, _, err := short.PullRequests.List(ctx, "acme", "widgets", nil); err == nil || time.Since(start) > time.Second {
		t.Fatalf("slow answer: err %v after %v", err, time.Since(start))
	}

	// A dropped connection.
	f.InjectFault(Fault{Path: "/pulls", Drop: true})
	if _, resp, err := gh.PullRequests.List(ctx, "acme", "widgets", nil); err == nil || resp != nil {
		t.Fatalf("dropped connection: resp %v err %v", resp, err)
	}
	if n := len(f.Faults()); n != 0 {
		t.Fatalf("%d faults left, want none", n)
	}

	// The journal saw every request, faults marked. A request is listed
	// when its handler returns, which for the timed-out one is when the
	// server notices its client left: wait for that.
	var faulted, dropped int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		faulted, dropped = 0, 0
		for _, rec := range f.Requests() {
			if rec.Fault {
				faulted++
			}
			if rec.Status == 0 {
				dropped++
			}
		}
		if (faulted == 8 && dropped == 2) || time.Now().After(deadline) {
			break
		}
	}
	if faulted != 8 || dropped != 2 { // the timed-out request was never answered either
		t.Fatalf("journal: %d faulted (want 8), %d unanswered (want 2): %+v", faulted, dropped, f.Requests())
	}
}

func TestAdminEndpoint(t *testing.T) {
	f, srv := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	if code, _ := adminDo(t, srv.URL, "GET", "/_admin/faults", "", "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("admin without the token: %d", code)
	}
	body := `[{"method":"GET","path":"/pulls","statuses":[429],"retry_after":"2s"},
	          {"path":"/pulls","status":500,"times":2,"delay":"10ms"}]`
	if code, out := adminDo(t, srv.URL, "POST", "/_admin/faults", body, testToken); code != http.StatusCreated ||
		!strings.Contains(out, `"retry_after":"2s"`) {
		t.Fatalf("POST faults: %d %s", code, out)
	}
	for _, bad := range []string{`{"status":700}`, `{"path":"/x"}`, `{"status":500,"retry_after":"soon"}`, `{"stauts":500}`} {
		if code, out := adminDo(t, srv.URL, "POST", "/_admin/faults", bad, testToken); code < 400 {
			t.Errorf("fault %s accepted: %d %s", bad, code, out)
		}
	}
	faults := f.Faults()
	if len(faults) != 2 || faults[0].RetryAfter != 2*time.Second || faults[1].Times != 2 || faults[1].Delay != 10*time.Millisecond {
		t.Fatalf("queued faults = %+v", faults)
	}
	gh := newClient(t, srv.URL, testToken)
	_, resp, _ := gh.PullRequests.List(context.Background(), "acme", "widgets", nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("injected 429: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if code, _ := adminDo(t, srv.URL, "DELETE", "/_admin/faults", "", testToken); code != http.StatusNoContent || len(f.Faults()) != 0 {
		t.Fatalf("DELETE faults: %d, %d left", code, len(f.Faults()))
	}
	code, out := adminDo(t, srv.URL, "GET", "/_admin/requests", "", testToken)
	if code != http.StatusOK || !strings.Contains(out, `"status":429`) {
		t.Fatalf("GET requests: %d %s", code, out)
	}
}
