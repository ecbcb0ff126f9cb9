package egress_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/egress/egresstest"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/gitx"
)

// loopbackDial is the only way these tests reach the network: it connects
// to loopback addresses and refuses (and counts) anything else, so a wrong
// policy cannot reach another host.
type loopbackDial struct {
	mu      sync.Mutex
	refused []string
}

func (d *loopbackDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if a, err := netip.ParseAddr(host); err != nil || !a.IsLoopback() {
		d.mu.Lock()
		d.refused = append(d.refused, addr)
		d.mu.Unlock()
		return nil, fmt.Errorf("test dialer: %s is not loopback", addr)
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *loopbackDial) check(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.refused) > 0 {
		t.Errorf("the policy let a connection go to %v", d.refused)
	}
}

func policy(t *testing.T, cfg egress.Config) (*egress.Policy, *loopbackDial) {
	t.Helper()
	d := &loopbackDial{}
	cfg.Dial = d.dial
	p, err := egress.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.check(t) })
	return p, d
}

func TestHostileRepoURLsRefused(t *testing.T) {
	p, _ := policy(t, egress.Config{ForgeAPIURL: "http://127.0.0.1:3000/api/v3/"})
	urls := egresstest.HostileURLs("3000", "9")
	if len(urls) < 30 {
		t.Fatalf("only %d hostile URLs", len(urls))
	}
	for _, u := range urls {
		err := p.CheckRepoURL(u)
		var r *egress.Refused
		if !errors.As(err, &r) || r.Reason == "" {
			t.Errorf("CheckRepoURL(%q) = %v, want a refusal", u, err)
			continue
		}
		if strings.Contains(r.Reason, "abc") {
			t.Errorf("the reason repeats a credential: %s", r.Reason)
		}
	}
	for _, u := range []string{"http://127.0.0.1:3000/git/leviathan/demo.git", "http://127.0.0.1:3000/git/o/r"} {
		if err := p.CheckRepoURL(u); err != nil {
			t.Errorf("CheckRepoURL(%q) = %v, want allowed", u, err)
		}
	}
	// The reasons say which rule.
	for u, want := range map[string]string{
		"http://x:y@127.0.0.1:3000/o/r.git": "credentials",
		"ssh://127.0.0.1:3000/o/r.git":      "scheme",
		"http://10.0.0.7/o/r.git":           "IP address",
		"https://evil.example/o/r.git":      "host evil.example is not allowed",
		"http://127.0.0.1:3000/o/r.git?x=1": "query",
	} {
		if err := p.CheckRepoURL(u); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckRepoURL(%q) = %v, want a reason with %q", u, err, want)
		}
	}
}

func TestGitHubAndAllowedHosts(t *testing.T) {
	p, _ := policy(t, egress.Config{Allowed: []string{"git.partner.example", "mirror.example:8443", "http://forge.dev.svc:3000"}})
	for u, ok := range map[string]bool{
		"https://github.com/o/r.git":               true,
		"https://GitHub.com/o/r":                   true,
		"https://github.com:443/o/r.git":           true,
		"http://github.com/o/r.git":                false, // plain http to the internet
		"https://api.github.com/o/r.git":           false, // the API is not a git host
		"https://github.com:8443/o/r.git":          false,
		"https://git.partner.example/o/r.git":      true,
		"https://mirror.example:8443/o/r.git":      true,
		"https://mirror.example/o/r.git":           false,
		"http://forge.dev.svc:3000/git/o/r.git":    true,
		"http://forge.dev.svc/git/o/r.git":         false,
		"https://gist.github.com/o/r.git":          false,
		"https://github.com.partner.example/o/r":   false,
		"https://git.partner.example.evil.com/o/r": false,
	} {
		if err := p.CheckRepoURL(u); (err == nil) != ok {
			t.Errorf("CheckRepoURL(%q) = %v, want allowed %v", u, err, ok)
		}
	}
	// Credentials go to the forge's own hosts only, over TLS.
	for u, ok := range map[string]bool{
		"https://github.com/o/r.git/info/refs":        true,
		"https://api.github.com/repos/o/r/pulls":      true,
		"http://github.com/o/r.git/info/refs":         false,
		"https://git.partner.example/o/r.git":         false,
		"http://forge.dev.svc:3000/git/o/r.git":       false,
		"https://uploads.github.com/x":                false,
		"https://github.com.attacker.example/o/r.git": false,
	} {
		parsed, _ := url.Parse(u)
		if got := p.Credentials(parsed); got != ok {
			t.Errorf("Credentials(%q) = %v, want %v", u, got, ok)
		}
	}
	for _, bad := range []string{"http://github.com/api/v3/", "http://localforge:3000/api/v3/", "ftp://ghe.example/", "https://user:pw@ghe.example/api/v3/"} {
		if _, err := egress.New(egress.Config{ForgeAPIURL: bad}); err == nil {
			t.Errorf("forge API URL %q accepted", bad)
		}
	}
	if _, err := egress.New(egress.Config{Allowed: []string{"https://x.example/path"}}); err == nil {
		t.Error("an allowed host with a path accepted")
	}
}

// countingListener counts connections to a loopback port.
func countingListener(t *testing.T) (port string, conns *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns = &atomic.Int32{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	_, port, _ = net.SplitHostPort(ln.Addr().String())
	return port, conns
}

// TestDialChecksResolvedAddresses plays a rebinding DNS server: allowed
// names that resolve to loopback or the metadata address are refused at
// dial time, and nothing reaches the listener, unless the operator listed
// the host as private (never for link-local).
func TestDialChecksResolvedAddresses(t *testing.T) {
	port, conns := countingListener(t)
	dns := map[string][]netip.Addr{
		"git.allowed.test":   {netip.MustParseAddr("127.0.0.1")},
		"meta.allowed.test":  {netip.MustParseAddr("169.254.169.254")},
		"mixed.allowed.test": {netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("10.1.2.3")},
		"v6.allowed.test":    {netip.MustParseAddr("::1")},
		"inside.test":        {netip.MustParseAddr("127.0.0.1")},
		"insidemeta.test":    {netip.MustParseAddr("169.254.169.254")},
	}
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := dns[host]; ok {
			return a, nil
		}
		return nil, errors.New("no such host")
	}
	p, _ := policy(t, egress.Config{
		Allowed: []string{"git.allowed.test", "meta.allowed.test", "mixed.allowed.test", "v6.allowed.test"},
		Private: []string{"inside.test", "insidemeta.test"}, Lookup: lookup,
	})
	ctx := context.Background()
	for _, host := range []string{"git.allowed.test", "meta.allowed.test", "mixed.allowed.test", "v6.allowed.test", "insidemeta.test",
		"127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "0.0.0.0"} {
		c, err := p.DialContext(ctx, "tcp", net.JoinHostPort(strings.Trim(host, "[]"), port))
		var r *egress.Refused
		if err == nil {
			c.Close()
		}
		if !errors.As(err, &r) {
			t.Errorf("dial %s: %v, want refused", host, err)
		}
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("%d connections reached the listener", n)
	}
	// Through git: a fetch of an allowed name that rebinds to loopback.
	remote := gitx.Remote{URL: "https://git.allowed.test:" + port + "/o/r.git", Password: "tok-rebind", HTTPClient: p.Client(), CredentialsFor: p.Credentials}
	if _, err := gitx.Fetch(ctx, remote, "main", ".leviathan/backlog.yaml", gitx.FetchOptions{}); err == nil || strings.Contains(err.Error(), "tok-rebind") {
		t.Fatalf("fetch through a rebinding name: %v", err)
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("%d connections reached the listener", n)
	}
	// A forge at localhost is dialed on loopback.
	local, _ := policy(t, egress.Config{ForgeAPIURL: "http://localhost:" + port + "/api/v3/", Lookup: func(context.Context, string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}})
	if c, err := local.DialContext(ctx, "tcp", net.JoinHostPort("localhost", port)); err != nil {
		t.Fatalf("dial a localhost forge: %v", err)
	} else {
		c.Close()
	}
	// A host the operator said lives inside may be dialed there.
	c, err := p.DialContext(ctx, "tcp", net.JoinHostPort("inside.test", port))
	if err != nil {
		t.Fatalf("dial a private host: %v", err)
	}
	c.Close()
}

// TestTrailingDotIsNotTheAddress: "127.0.0.1." is a DNS name that a
// resolver may answer with any address, not the forge's 127.0.0.1: no
// repository URL, credential or loopback dial for it.
func TestTrailingDotIsNotTheAddress(t *testing.T) {
	port, conns := countingListener(t)
	p, _ := policy(t, egress.Config{ForgeAPIURL: "http://127.0.0.1:" + port + "/api/v3/",
		Lookup: func(context.Context, string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}})
	for _, host := range []string{"127.0.0.1.", "localhost."} {
		raw := "http://" + host + ":" + port + "/git/o/r.git"
		if err := p.CheckRepoURL(raw); err == nil || !strings.Contains(err.Error(), "dot") {
			t.Errorf("CheckRepoURL(%q) = %v, want refused for its dot", raw, err)
		}
		u, _ := url.Parse(raw)
		if p.Credentials(u) {
			t.Errorf("a credential may go to %s", u.Host)
		}
		if c, err := p.DialContext(context.Background(), "tcp", net.JoinHostPort(host, port)); err == nil {
			c.Close()
			t.Errorf("dialed %s", host)
		}
	}
	if n := conns.Load(); n != 0 {
		t.Fatalf("%d connections reached the listener", n)
	}
	if err := p.CheckRepoURL("http://127.0.0.1:" + port + "/git/o/r.git"); err != nil {
		t.Fatalf("the forge itself: %v", err)
	}
}

// authRecorder records the Authorization header of every request.
type authRecorder struct {
	mu    sync.Mutex
	auths []string
}

func (a *authRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.auths = append(a.auths, r.Header.Get("Authorization"))
	a.mu.Unlock()
	http.Error(w, "nothing here", http.StatusNotFound)
}

func (a *authRecorder) seen() (n int, withAuth int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.auths {
		if h != "" {
			withAuth++
		}
	}
	return len(a.auths), withAuth
}

// TestNoCredentialFollowsARedirect: the forge answers every request with a
// redirect to another host. With the policy's client the redirect is not
// followed; with a client that follows anything, the other host gets the
// requests without a credential, through git's basic auth, the App's
// token transport and the API's bearer token alike.
func TestNoCredentialFollowsARedirect(t *testing.T) {
	other := &authRecorder{}
	otherSrv := httptest.NewServer(other)
	defer otherSrv.Close()
	forgeSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, otherSrv.URL+r.URL.RequestURI(), http.StatusFound)
	}))
	defer forgeSrv.Close()
	p, _ := policy(t, egress.Config{ForgeAPIURL: forgeSrv.URL + "/api/v3/", Allowed: []string{"http://" + strings.TrimPrefix(otherSrv.URL, "http://")}})
	ctx := context.Background()
	follows := &http.Client{Transport: p.Transport()} // follows any redirect
	const secret = "tok-redirect-5c1d"

	fetch := func(remote gitx.Remote) {
		t.Helper()
		remote.URL = forgeSrv.URL + "/git/o/r.git"
		if _, err := gitx.Fetch(ctx, remote, "main", ".leviathan/backlog.yaml", gitx.FetchOptions{}); err == nil {
			t.Fatal("fetch through a redirect to another host succeeded")
		} else if strings.Contains(err.Error(), secret) {
			t.Fatalf("the error holds the credential: %v", err)
		}
	}
	fetch(gitx.Remote{Password: secret, HTTPClient: p.Client(), CredentialsFor: p.Credentials})
	if n, _ := other.seen(); n != 0 {
		t.Fatalf("the policy's client followed a redirect to another host (%d requests)", n)
	}
	fetch(gitx.Remote{Password: secret, HTTPClient: follows, CredentialsFor: p.Credentials})
	app := forge.GitHTTPClient(forge.StaticToken(secret), p.Transport(), p.Credentials)
	app.CheckRedirect = nil
	fetch(gitx.Remote{HTTPClient: app, CredentialsFor: p.Credentials})
	d, err := forge.NewGitHub(forge.GitHubConfig{Token: secret, BaseURL: forgeSrv.URL + "/api/v3/", HTTPClient: follows, Credentials: p.Credentials})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.OpenPRs(ctx, forgeSrv.URL+"/git/o/r.git"); err == nil {
		t.Fatal("the API followed a redirect to another host")
	}
	n, withAuth := other.seen()
	if n == 0 || withAuth != 0 {
		t.Fatalf("the other host got %d requests, %d with a credential; want some, none with one", n, withAuth)
	}
}

func TestCheckRedirect(t *testing.T) {
	req := func(u string) *http.Request { r, _ := http.NewRequest("GET", u, nil); return r }
	via := []*http.Request{req("https://github.com/o/r.git/info/refs")}
	if err := egress.CheckRedirect(req("https://github.com/o/renamed.git/info/refs"), via); err != nil {
		t.Fatalf("same-host redirect refused: %v", err)
	}
	for _, u := range []string{"https://evil.example/x", "http://github.com/o/r.git/info/refs", "https://github.com:8443/x"} {
		if err := egress.CheckRedirect(req(u), via); err == nil {
			t.Errorf("redirect to %s followed", u)
		}
	}
}

// slowBody sends n bytes, one every gap.
type slowBody struct {
	n   int
	gap time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(b.gap)
	b.n--
	p[0] = 'x'
	return 1, nil
}

// TestReadTimeout: a server that sends its headers and then nothing more
// frees the caller after the read timeout, not at some later deadline;
// an upload that lasts longer than the timeout, bytes flowing all along,
// and a request on a connection that sat in the pool are not cut off.
func TestReadTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			n, _ := io.Copy(io.Discard, r.Body)
			time.Sleep(100 * time.Millisecond) // some work, under the timeout
			fmt.Fprint(w, n)
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("0001"))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // and nothing more
	}))
	defer srv.Close()
	p, _ := policy(t, egress.Config{ForgeAPIURL: srv.URL + "/api/v3/", ReadTimeout: 200 * time.Millisecond})
	// The guard: a wrong policy fails here instead of hanging the test.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/o/r.git/info/refs", nil)
	resp, err := p.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("reading a stalled body: %v, want the read timeout", err)
	}

	client := p.Client()
	post := func() {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/o/r.git/git-receive-pack", &slowBody{n: 12, gap: 50 * time.Millisecond})
		req.ContentLength = 12
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("an upload of 600 ms with a 200 ms read timeout: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != "12" {
			t.Fatalf("an upload of 600 ms with a 200 ms read timeout: %q, %v", body, err)
		}
	}
	post()
	time.Sleep(150 * time.Millisecond) // its connection waits in the pool
	post()
}
