// Package gitx is Leviathan's git transport: it fetches the least of a
// repository that an attempt needs (one commit, the trees on the path to
// one file, that file's blob), builds a commit object by object in memory
// and pushes exactly the new objects. There is no worktree and no clone.
//
// It speaks the smart HTTP protocol (v0, stateless RPC) through go-git's
// plumbing: go-git's high-level Clone and Push are deliberately not used,
// since they fetch everything and, on a partial object store, silently drop
// objects from the pushed pack.
package gitx

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
)

// defaultUsername is sent with a password when no username is given: GitHub
// accepts any username with a token and documents this one.
const defaultUsername = "x-access-token"

// Remote is a git repository served over smart HTTP(S).
//
// Credentials travel only in the Authorization header (go-git's BasicAuth),
// never in the URL; a URL with user info is rejected. The Password never
// appears in an error or in the String, GoString or slog forms of a Remote.
type Remote struct {
	// URL of the repository, e.g. https://github.com/owner/repo.git.
	URL string
	// Username for basic auth; defaults to "x-access-token" when a
	// Password is set.
	Username string
	// Password (a token) for basic auth; empty means anonymous.
	Password string
	// HTTPClient is used when set (its Transport, Timeout, Jar and
	// CheckRedirect); http.DefaultTransport otherwise.
	HTTPClient *http.Client
	// CredentialsFor reports whether Username and Password may be sent
	// with a request to u (egress.Policy.Credentials). When nil they go
	// only to the URL's own host and port, over https or to loopback. A
	// request to anywhere else (a redirect) goes without them.
	CredentialsFor func(u *url.URL) bool
}

// String describes the remote without its password.
func (r Remote) String() string {
	if r.Password == "" {
		return r.displayURL()
	}
	return fmt.Sprintf("%s (user %s, password set)", r.displayURL(), r.username())
}

// GoString keeps %#v from printing the password.
func (r Remote) GoString() string { return "gitx.Remote{" + r.String() + "}" }

// LogValue keeps slog from printing the password.
func (r Remote) LogValue() slog.Value {
	return slog.GroupValue(slog.String("url", r.displayURL()), slog.String("user", r.username()),
		slog.Bool("password_set", r.Password != ""))
}

func (r Remote) username() string {
	if r.Username == "" && r.Password != "" {
		return defaultUsername
	}
	return r.Username
}

// displayURL is the URL without query, fragment or user info, for messages.
func (r Remote) displayURL() string {
	u, err := url.Parse(r.URL)
	if err != nil {
		return "<invalid URL>"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// endpoint validates the URL and turns it into a go-git endpoint.
func (r Remote) endpoint() (*transport.Endpoint, error) {
	u, err := url.Parse(r.URL)
	if err != nil {
		// url.Parse quotes the input, which could hold a secret: say less.
		return nil, fmt.Errorf("%w: unparseable URL", ErrInvalidRemote)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%w: URL scheme %q is not http or https", ErrInvalidRemote, u.Scheme)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: URL %s must not carry credentials; use Remote.Username/Password", ErrInvalidRemote, r.displayURL())
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%w: URL %s has no host", ErrInvalidRemote, r.displayURL())
	}
	ep, err := transport.NewEndpoint(strings.TrimSuffix(r.URL, "/"))
	if err != nil {
		return nil, fmt.Errorf("%w: URL %s: %w", ErrInvalidRemote, r.displayURL(), err)
	}
	return ep, nil
}

// auth is the basic-auth method for the session, nil when anonymous.
func (r Remote) auth() transport.AuthMethod {
	if r.Username == "" && r.Password == "" {
		return nil
	}
	return &githttp.BasicAuth{Username: r.username(), Password: r.Password}
}

// gitTransport builds a go-git HTTP transport whose response bodies count the
// bytes read into n. go-git copies the client's Transport into its own
// sessions, so the counter has to sit in the RoundTripper, not the client.
func (r Remote) gitTransport(n *atomic.Int64) transport.Transport {
	hc := &http.Client{}
	if r.HTTPClient != nil {
		hc.CheckRedirect = r.HTTPClient.CheckRedirect
		hc.Jar = r.HTTPClient.Jar
		hc.Timeout = r.HTTPClient.Timeout
		hc.Transport = r.HTTPClient.Transport
	}
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	allow := r.CredentialsFor
	if allow == nil {
		own, _ := url.Parse(r.URL)
		allow = func(u *url.URL) bool { return sameOrigin(own, u) }
	}
	hc.Transport = &credentialGuard{base: &countingTransport{base: base, n: n}, allow: allow}
	return githttp.NewClient(hc)
}

// sameOrigin reports whether u is own's scheme, host and port, and is
// https or loopback.
func sameOrigin(own, u *url.URL) bool {
	if own == nil || u == nil || !strings.EqualFold(own.Scheme, u.Scheme) || !strings.EqualFold(own.Host, u.Host) {
		return false
	}
	if strings.EqualFold(u.Scheme, "https") {
		return true
	}
	h := u.Hostname()
	return h == "localhost" || h == "127.0.0.1" || h == "::1"
}

// credentialGuard removes the Authorization header from a request to
// where credentials may not go: go-git sets it on every request of a
// session, including one a redirect sends elsewhere.
type credentialGuard struct {
	base  http.RoundTripper
	allow func(*url.URL) bool
}

func (g *credentialGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Authorization") != "" && !g.allow(req.URL) {
		req = req.Clone(req.Context())
		req.Header.Del("Authorization")
	}
	return g.base.RoundTrip(req)
}

// countingTransport counts the bytes of every response body read through
// it: the honest "bytes fetched" of a fetch, protocol framing included.
type countingTransport struct {
	base http.RoundTripper
	n    *atomic.Int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.base.RoundTrip(req)
	if res != nil && res.Body != nil {
		res.Body = &countingBody{ReadCloser: res.Body, n: t.n}
	}
	return res, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
