package forge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/bradleyfalzon/ghinstallation/v2"

	"github.com/leviathan-dev/leviathan/internal/egress"
)

// TokenSource supplies the token of a forge account: for API calls (the
// github driver) and for git over HTTPS (clone and push), so both always
// use the same, current credential. Token is called before every request
// and must be cheap when nothing changed; it is safe for concurrent use.
//
// An error that wraps ErrAuth means the credential itself is refused
// (retrying cannot help); any other error is transient.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// StaticToken is a token that never changes: a personal access token.
type StaticToken string

// Token returns the token.
func (t StaticToken) Token(context.Context) (string, error) {
	if t == "" {
		return "", fmt.Errorf("%w: empty token", ErrAuth)
	}
	return string(t), nil
}

// String keeps the token out of logs and %v.
func (t StaticToken) String() string { return "StaticToken(redacted)" }

// GoString keeps the token out of %#v.
func (t StaticToken) GoString() string { return t.String() }

// AppConfig identifies a GitHub App installation.
type AppConfig struct {
	AppID          int64
	InstallationID int64
	// PrivateKey is the app's RSA private key, PEM encoded.
	PrivateKey []byte
	// BaseURL is the REST API root, as GitHubConfig.BaseURL (empty for
	// api.github.com; GitHub Enterprise: https://host/api/v3/).
	BaseURL string
	// HTTPClient's Transport carries the token requests; optional.
	HTTPClient *http.Client
}

// AppTokens is the TokenSource of a GitHub App installation: it mints an
// installation token with a JWT signed by the app's key (through
// ghinstallation) and mints a new one a minute before the current one
// expires, so a token in use never expires mid-request.
type AppTokens struct {
	tr             *ghinstallation.Transport
	appID, install int64
}

// NewAppTokens validates cfg and returns the installation's token source.
// No request is made until the first Token call.
func NewAppTokens(cfg AppConfig) (*AppTokens, error) {
	if cfg.AppID <= 0 || cfg.InstallationID <= 0 {
		return nil, errors.New("forge: github app: app id and installation id are required")
	}
	base := http.DefaultTransport
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		base = cfg.HTTPClient.Transport
	}
	tr, err := ghinstallation.New(base, cfg.AppID, cfg.InstallationID, cfg.PrivateKey)
	if err != nil {
		// The parse error does not repeat the key.
		return nil, fmt.Errorf("forge: github app: private key: %w", err)
	}
	if cfg.BaseURL != "" {
		tr.BaseURL = enterpriseAPIRoot(cfg.BaseURL)
	}
	return &AppTokens{tr: tr, appID: cfg.AppID, install: cfg.InstallationID}, nil
}

// Token returns a current installation token, minting one when there is
// none or it expires within a minute.
func (a *AppTokens) Token(ctx context.Context) (string, error) {
	tok, err := a.tr.Token(ctx)
	if err == nil {
		return tok, nil
	}
	where := fmt.Sprintf("GitHub App %d installation %d: minting an installation token", a.appID, a.install)
	var he *ghinstallation.HTTPError
	if errors.As(err, &he) && he.Response != nil {
		// ghinstallation leaves the body of a refused answer open.
		_, _ = io.Copy(io.Discard, io.LimitReader(he.Response.Body, 1<<16))
		_ = he.Response.Body.Close()
		status := he.Response.StatusCode
		switch {
		case status == http.StatusUnauthorized, status == http.StatusForbidden && !isRateLimited(he.Response),
			status == http.StatusNotFound:
			// A wrong key, app id or installation: the configuration is
			// wrong, and retrying will not fix it.
			return "", fmt.Errorf("%w: %s: HTTP %d", ErrAuth, where, status)
		default:
			return "", &RetryError{Err: fmt.Errorf("%s: HTTP %d", where, status)}
		}
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	// Network errors: ghinstallation's message names only the URL.
	return "", &RetryError{Err: fmt.Errorf("%s: %w", where, err)}
}

// enterpriseAPIRoot is the API root of a GitHub Enterprise base URL the
// way go-github's WithEnterpriseURLs derives it, so the token endpoint and
// the API calls always agree: "https://ghe.example.com" and
// "https://ghe.example.com/api/v3/" both give "https://ghe.example.com/api/v3".
func enterpriseAPIRoot(base string) string {
	base = strings.TrimRight(base, "/")
	if u, err := url.Parse(base); err == nil && !strings.HasSuffix(base, "/api/v3") &&
		!strings.HasPrefix(u.Host, "api.") && !strings.Contains(u.Host, ".api.") {
		base += "/api/v3"
	}
	return base
}

// String keeps secrets out of logs.
func (a *AppTokens) String() string {
	return fmt.Sprintf("AppTokens(app %d, installation %d)", a.appID, a.install)
}

// GitHTTPClient returns an HTTP client for git's smart HTTP that sends
// every request with basic auth "x-access-token:<token>" from ts, as
// GitHub expects for both personal and installation tokens. Give it to
// gitx.Remote.HTTPClient and leave Remote's Username and Password empty:
// the token is then fetched per request, so a refreshed installation token
// is used as soon as it exists.
//
// A refused credential (ErrAuth) is answered as a 401, so git reports an
// authentication failure rather than a network error.
//
// allow says where the token may go (egress.Policy.Credentials): a request
// to anywhere else, a redirect included, goes without it. nil allows only
// https and loopback. A redirect to another host is refused.
func GitHTTPClient(ts TokenSource, base http.RoundTripper, allow func(*url.URL) bool) *http.Client {
	if base == nil {
		base = http.DefaultTransport
	}
	if allow == nil {
		allow = secureOrLoopback
	}
	return &http.Client{Transport: &gitAuthTransport{ts: ts, base: base, allow: allow}, CheckRedirect: egress.CheckRedirect}
}

// secureOrLoopback is the default of where a token may go.
func secureOrLoopback(u *url.URL) bool {
	if strings.EqualFold(u.Scheme, "https") {
		return true
	}
	h := u.Hostname()
	return strings.EqualFold(u.Scheme, "http") && (h == "localhost" || h == "127.0.0.1" || h == "::1")
}

type gitAuthTransport struct {
	ts    TokenSource
	base  http.RoundTripper
	allow func(*url.URL) bool
}

func (t *gitAuthTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.allow(req.URL) {
		return t.base.RoundTrip(req) // anonymous: the token is not for this host
	}
	tok, err := t.ts.Token(req.Context())
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		if errors.Is(err, ErrAuth) {
			return &http.Response{
				StatusCode: http.StatusUnauthorized, Status: "401 Unauthorized", Proto: "HTTP/1.1",
				ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Body: http.NoBody, Request: req,
			}, nil
		}
		return nil, err
	}
	r := req.Clone(req.Context())
	r.SetBasicAuth("x-access-token", tok)
	return t.base.RoundTrip(r)
}

// authTransport sends the token of ts as a bearer token on API calls to
// where allow says it may go.
type authTransport struct {
	ts    TokenSource
	base  http.RoundTripper
	allow func(*url.URL) bool
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.allow(req.URL) {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, fmt.Errorf("%w: the forge token may not be sent to %s://%s", ErrAuth, req.URL.Scheme, req.URL.Host)
	}
	tok, err := t.ts.Token(req.Context())
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+tok)
	return t.base.RoundTrip(r)
}
