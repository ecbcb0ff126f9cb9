package localforge_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/forge/forgetest"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// forgeToken is the API token of every server the tests start.
const forgeToken = "forgetest-token-5b1e"

// server is a localforge as the conformance suite's forgetest.Server.
type server struct {
	forge *localforge.Forge
	url   string
}

// newServer starts a localforge with acme/widgets and branches feature-1
// to feature-3; options adjust its configuration.
func newServer(t *testing.T, options ...func(*localforge.Config)) *server {
	t.Helper()
	cfg := localforge.Config{Dir: t.TempDir(), Token: forgeToken}
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
	err = f.CreateRepo(context.Background(), forgetest.Owner, forgetest.Name, "main", map[string][]byte{"README.md": []byte("# widgets\n")})
	if err != nil {
		t.Fatal(err)
	}
	s := &server{forge: f, url: srv.URL}
	s.Branches(t, "feature-", 3)
	return s
}

func anyServer(t *testing.T) forgetest.Server { return newServer(t) }

// harness is the suite's harness over a localforge started with options.
func harness(t *testing.T, options ...func(*localforge.Config)) (*forgetest.Harness, *localforge.Forge) {
	s := newServer(t, options...)
	return &forgetest.Harness{Server: s, RepoURL: s.RepoURL()}, s.forge
}

func (s *server) APIURL() string  { return s.url + "/api/v3/" }
func (s *server) RepoURL() string { return s.forge.CloneURL(forgetest.Owner, forgetest.Name) }
func (s *server) Token() string   { return forgeToken }

func (s *server) Branches(t *testing.T, prefix string, n int) {
	t.Helper()
	bare := s.forge.RepoDir(forgetest.Owner, forgetest.Name)
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

func (s *server) Pulls(t *testing.T) []forge.PullRequest {
	t.Helper()
	prs, err := s.forge.Pulls(forgetest.Owner, forgetest.Name)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]forge.PullRequest, len(prs))
	for i, pr := range prs {
		out[i] = forge.PullRequest{Number: pr.Number, State: pr.State, Head: pr.Head, HeadSHA: pr.HeadSHA, Base: pr.Base,
			Title: pr.Title, Body: pr.Body, Draft: pr.Draft, Repo: forgetest.Owner + "/" + forgetest.Name}
	}
	return out
}

func (s *server) Requests() []forgetest.Request {
	var out []forgetest.Request
	for _, r := range s.forge.Requests() {
		out = append(out, forgetest.Request{Method: r.Method, Path: r.Path, Status: r.Status, Start: r.Start, End: r.End})
	}
	return out
}

func (s *server) InjectFault(f forgetest.Fault) {
	s.forge.InjectFault(localforge.Fault{Method: f.Method, Path: f.Path, Status: f.Status, Times: f.Times, Statuses: f.Statuses,
		RetryAfter: f.RetryAfter, RateLimitReset: f.RateLimitReset, Message: f.Message, Delay: f.Delay, Slow: f.Slow, Drop: f.Drop, AfterEffect: f.AfterEffect})
}

func (s *server) ClearFaults() { s.forge.ClearFaults() }

// appKey is generated once per test binary: RSA key generation is slow.
var appKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func pemKey(k *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
}

const (
	appID          = 4242
	installationID = 77
)

func pacing(opt forgetest.Options) forge.GitHubConfig {
	return forge.GitHubConfig{MinInterval: opt.MinInterval, MaxPaceWait: opt.MaxPaceWait,
		RateLimitBackoff: opt.RateLimitBackoff, RequestTimeout: opt.RequestTimeout}
}

func TestGitHubWithToken(t *testing.T) {
	forgetest.Run(t, anyServer, func(t *testing.T, h *forgetest.Harness, opt forgetest.Options) forge.Driver {
		cfg := pacing(opt)
		cfg.Token, cfg.BaseURL = forgeToken, h.APIURL()
		d, err := forge.NewGitHub(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// appTokens registers the app with the forge and returns its token source.
func appTokens(t *testing.T, h *forgetest.Harness, key *rsa.PrivateKey) *forge.AppTokens {
	t.Helper()
	if err := h.Server.(*server).forge.RegisterApp(localforge.App{ID: appID, PublicKey: &appKey().PublicKey, Installations: []int64{installationID}}); err != nil {
		t.Fatal(err)
	}
	ts, err := forge.NewAppTokens(forge.AppConfig{AppID: appID, InstallationID: installationID, PrivateKey: pemKey(key), BaseURL: h.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestGitHubWithAppToken(t *testing.T) {
	forgetest.Run(t, anyServer, func(t *testing.T, h *forgetest.Harness, opt forgetest.Options) forge.Driver {
		cfg := pacing(opt)
		cfg.Tokens, cfg.BaseURL = appTokens(t, h, appKey()), h.APIURL()
		d, err := forge.NewGitHub(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// TestAppTokenRefreshAndGit checks the App path end to end against
// localforge: tokens are minted once, re-minted a minute before expiry,
// and the same token source authenticates git.
func TestAppTokenRefreshAndGit(t *testing.T) {
	h, lf := harness(t)
	ts := appTokens(t, h, appKey())
	d, err := forge.NewGitHub(forge.GitHubConfig{Tokens: ts, BaseURL: h.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	list := func() {
		t.Helper()
		if _, err := d.OpenPRs(ctx, h.RepoURL); err != nil {
			t.Fatal(err)
		}
	}
	list()
	list()
	if n := h.Count("POST", "/access_tokens"); n != 1 {
		t.Fatalf("minted %d tokens for two calls, want 1", n)
	}
	first, _ := ts.Token(ctx)

	// Git with the installation token, as clone and push use it.
	remote := gitx.Remote{URL: h.RepoURL, HTTPClient: forge.GitHTTPClient(ts, nil, nil)}
	snap, err := gitx.Fetch(ctx, remote, "main", "README.md", gitx.FetchOptions{})
	if err != nil || snap.Commit.IsZero() {
		t.Fatalf("fetch with the installation token: %v", err)
	}

	// A token is re-minted when it has less than a minute left: with a
	// 62 s lifetime that is after two seconds. The old one stays valid
	// until it expires, as on GitHub.
	h, lf = harness(t, func(c *localforge.Config) { c.InstallationTokenTTL = 62 * time.Second })
	ts = appTokens(t, h, appKey())
	if d, err = forge.NewGitHub(forge.GitHubConfig{Tokens: ts, BaseURL: h.APIURL()}); err != nil {
		t.Fatal(err)
	}
	list()
	first, _ = ts.Token(ctx)
	time.Sleep(2100 * time.Millisecond)
	list()
	second, _ := ts.Token(ctx)
	if n := h.Count("POST", "/access_tokens"); n != 2 || second == first || !strings.HasPrefix(second, "ghs_") {
		t.Fatalf("after 2s of a 62s token: %d mints, token changed %v; want a second mint", n, second != first)
	}
	for _, r := range lf.Requests() {
		if strings.Contains(r.Path, "/pulls") && r.Status != 200 && r.Status != 304 { // 304: the list unchanged since the first
			t.Fatalf("an API call failed around the refresh: %+v", r)
		}
	}
}

func TestAppWithWrongKeyIsAuthFailure(t *testing.T) {
	h, _ := harness(t)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ts := appTokens(t, h, other) // the forge knows appKey's public key, not other's
	d, err := forge.NewGitHub(forge.GitHubConfig{Tokens: ts, BaseURL: h.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = forge.EnsurePR(context.Background(), d, forge.PRRequest{RepoURL: h.RepoURL, Base: "main", Head: "feature-1", Title: "t"}, nil)
	var re *forge.RetryError
	if !errors.Is(err, forge.ErrAuth) || errors.As(err, &re) || !strings.Contains(err.Error(), "installation 77") {
		t.Fatalf("EnsurePR with a wrong app key: %v, want ErrAuth naming the installation", err)
	}
	// Git reports it as an authentication failure, which the attempt
	// classifies as auth_failed rather than retrying.
	_, err = gitx.Fetch(context.Background(), gitx.Remote{URL: h.RepoURL, HTTPClient: forge.GitHTTPClient(ts, nil, nil)}, "main", "README.md", gitx.FetchOptions{})
	if ft, retry := gitx.Classify(err); !errors.Is(err, gitx.ErrAuth) || ft != events.AuthFailed || retry {
		t.Fatalf("git with a wrong app key: %v (%s, retry %v)", err, ft, retry)
	}
	if len(h.Pulls(t)) != 0 {
		t.Fatal("a pull request was opened")
	}
}

// TestProductionBackoffIsApplied: with no configuration, a rate limit that
// names no wait backs off a full minute (GitHub's guidance), and so does
// a bare 429; nothing is waited for in the test.
func TestProductionBackoffIsApplied(t *testing.T) {
	h, lf := harness(t)
	d, err := forge.NewGitHub(forge.GitHubConfig{Token: forgeToken, BaseURL: h.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	lf.InjectFault(localforge.Fault{Path: "/pulls", Status: 403})
	_, err = d.OpenPRs(context.Background(), h.RepoURL)
	var re *forge.RetryError
	if !errors.As(err, &re) || re.After != time.Minute {
		t.Fatalf("secondary limit with defaults: %v, want a 1m wait", err)
	}
	d, _ = forge.NewGitHub(forge.GitHubConfig{Token: forgeToken, BaseURL: h.APIURL()})
	lf.InjectFault(localforge.Fault{Path: "/pulls", Status: 429})
	if _, err = d.OpenPRs(context.Background(), h.RepoURL); !errors.As(err, &re) || re.After != time.Minute {
		t.Fatalf("bare 429 with defaults: %v, want a 1m wait", err)
	}
}

// recordingTurns is a Turns that records what the limiter does with the
// turns it takes (the real one, on NATS, is tested in package stage and
// with two pr replicas in package stack).
type recordingTurns struct {
	mu    sync.Mutex
	takes int
	holds []time.Duration
	fail  error
}

func (r *recordingTurns) Take(ctx context.Context, wait time.Duration) (func(time.Duration), error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.takes++
	if r.fail != nil {
		return nil, r.fail
	}
	return func(hold time.Duration) {
		r.mu.Lock()
		r.holds = append(r.holds, hold)
		r.mu.Unlock()
	}, nil
}

// TestTurnsAroundMutatingCalls: with Turns, a mutating call takes the
// account's turn and holds it the minimum interval after the call; reads
// take none; a turn that cannot be had is a paced RetryError and no call.
func TestTurnsAroundMutatingCalls(t *testing.T) {
	h, _ := harness(t)
	turns := &recordingTurns{}
	d, err := forge.NewGitHub(forge.GitHubConfig{Token: forgeToken, BaseURL: h.APIURL(), MinInterval: 50 * time.Millisecond, Turns: turns})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := func(head string) forge.PRRequest {
		return forge.PRRequest{RepoURL: h.RepoURL, Base: "main", Head: head, Title: "Propose " + head, Body: "body"}
	}
	if _, err := d.OpenPRs(ctx, h.RepoURL); err != nil || turns.takes != 0 {
		t.Fatalf("a read took %d turns (%v)", turns.takes, err)
	}
	if _, _, err := d.CreatePR(ctx, req("feature-1")); err != nil {
		t.Fatal(err)
	}
	if turns.takes != 1 || len(turns.holds) != 1 || turns.holds[0] != 50*time.Millisecond {
		t.Fatalf("create: %d turns taken, held %v; want 1, [50ms]", turns.takes, turns.holds)
	}
	turns.fail = errors.New("held by replica b")
	posts := h.Count("POST", "/pulls")
	_, _, err = d.CreatePR(ctx, req("feature-2"))
	var re *forge.RetryError
	if !errors.As(err, &re) || !errors.Is(err, forge.ErrPaced) || !strings.Contains(err.Error(), "replica b") || h.Count("POST", "/pulls") != posts {
		t.Fatalf("create without a turn: %v (posts %d -> %d)", err, posts, h.Count("POST", "/pulls"))
	}
	if _, err := forge.NewGitHub(forge.GitHubConfig{Token: "t", Turns: turns, RequestTimeout: forge.MaxTurn}); err == nil {
		t.Fatal("a turn longer than MaxTurn was accepted")
	}
}

// TestDriverListsConditionally: the driver asks for a list page again with
// its last ETag; the forge's 304 gives the same pull requests without a
// body, and a page that changed is read anew (the suite above checks every
// list against the forge's state, after each change).
func TestDriverListsConditionally(t *testing.T) {
	h, lf := harness(t)
	d, err := forge.NewGitHub(forge.GitHubConfig{Token: forgeToken, BaseURL: h.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	create := func(head string) {
		t.Helper()
		if _, _, err := d.CreatePR(ctx, forge.PRRequest{RepoURL: h.RepoURL, Base: "main", Head: head, Title: "t " + head, Body: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	// list lists the open pull requests and returns their heads and the
	// status the forge answered with.
	list := func() (heads string, status int) {
		t.Helper()
		prs, err := d.OpenPRs(ctx, h.RepoURL)
		if err != nil {
			t.Fatal(err)
		}
		var hs []string
		for _, pr := range prs {
			hs = append(hs, pr.Head)
		}
		rs := lf.Requests()
		return strings.Join(hs, " "), rs[len(rs)-1].Status
	}
	create("feature-1")
	for i, want := range []struct {
		heads  string
		status int
	}{{"feature-1", 200}, {"feature-1", 304}, {"feature-1", 304}} {
		if heads, status := list(); heads != want.heads || status != want.status {
			t.Fatalf("list %d: %q, HTTP %d; want %q, %d", i+1, heads, status, want.heads, want.status)
		}
	}
	create("feature-2")
	if heads, status := list(); heads != "feature-2 feature-1" || status != 200 {
		t.Fatalf("after a new pull request: %q, HTTP %d; want both, 200", heads, status)
	}
	if heads, status := list(); heads != "feature-2 feature-1" || status != 304 {
		t.Fatalf("again: %q, HTTP %d; want both, 304", heads, status)
	}
}
