// Package localforge is the embedded forge: it serves bare git repositories
// over smart HTTP and the subset of the GitHub REST API that the github
// forge driver uses, so the driver runs unchanged against it. It is the
// default forge on a laptop and the GitHub test double in tests.
package localforge

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by Forge methods; callers branch with errors.Is.
var (
	// ErrInvalidConfig wraps every Config validation failure.
	ErrInvalidConfig = errors.New("localforge: invalid config")
	// ErrInvalidName is returned for an owner or repository name that is
	// not a plain GitHub-style name (letters, digits, '.', '-', '_').
	ErrInvalidName = errors.New("localforge: invalid owner or repository name")
	// ErrRepoExists is returned by CreateRepo when the repository exists.
	ErrRepoExists = errors.New("localforge: repository already exists")
	// ErrRepoNotFound is returned for a repository that does not exist.
	ErrRepoNotFound = errors.New("localforge: repository not found")
)

// defaultRateLimit is GitHub's primary limit for a personal access token.
const defaultRateLimit = 5000

// Config configures a Forge.
type Config struct {
	// Dir is the data directory: bare repositories live under
	// Dir/repos/<owner>/<name>.git and PR records under Dir/pulls.
	Dir string
	// Token is the only credential. Git basic auth accepts any non-empty
	// username with Token as password; the API accepts
	// "Authorization: Bearer <Token>" or "Authorization: token <Token>".
	Token string
	// BaseURL (e.g. "http://127.0.0.1:3000") prefixes html_url and clone
	// URLs. When empty, API responses fall back to the request's Host.
	BaseURL string
	// RateLimit is the number of API requests allowed per hour, reported in
	// the X-RateLimit-* headers and enforced like GitHub does (403 with
	// X-RateLimit-Remaining: 0). Zero means 5000, GitHub's limit for a token.
	RateLimit int
	// Apps may mint installation tokens (POST
	// /api/v3/app/installations/{id}/access_tokens with an RS256 JWT);
	// those tokens then work for the API and for git, like Token, until
	// they expire. More can be added with RegisterApp.
	Apps []App
	// InstallationTokenTTL is the lifetime of minted installation tokens
	// (default one hour, as on GitHub).
	InstallationTokenTTL time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Dir == "" {
		return fmt.Errorf("%w: Dir is required", ErrInvalidConfig)
	}
	if c.Token == "" {
		return fmt.Errorf("%w: Token is required", ErrInvalidConfig)
	}
	if c.RateLimit < 0 {
		return fmt.Errorf("%w: RateLimit must not be negative", ErrInvalidConfig)
	}
	if c.InstallationTokenTTL < 0 {
		return fmt.Errorf("%w: InstallationTokenTTL must not be negative", ErrInvalidConfig)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.RateLimit == 0 {
		c.RateLimit = defaultRateLimit
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.InstallationTokenTTL == 0 {
		c.InstallationTokenTTL = defaultInstallationTokenTTL
	}
}

// Forge serves repositories and pull requests. Its methods are safe for
// concurrent use.
type Forge struct {
	dir     string // absolute data directory
	token   []byte
	log     *slog.Logger
	baseURL atomic.Pointer[string]
	rate    rateWindow
	handler http.Handler

	mu     sync.Mutex // serializes PR mutations and guards pulls
	pulls  *pullStore
	faults faultQueue

	apps     appRegistry
	tokenTTL time.Duration
	journal  journal
}

// New validates cfg, creates the data directories and loads the stored
// pull request records. It fails when git or git-http-backend is missing.
func New(cfg Config) (*Forge, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	// The CGI backend runs with its own working directory, so every path
	// handed to it must be absolute.
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("localforge: %w", err)
	}
	for _, d := range []string{filepath.Join(dir, "repos"), filepath.Join(dir, "pulls")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("localforge: %w", err)
		}
	}
	pulls, err := loadPullStore(filepath.Join(dir, "pulls"))
	if err != nil {
		return nil, err
	}
	f := &Forge{
		dir:   dir,
		token: []byte(cfg.Token),
		log:   cfg.Logger,
		rate:  rateWindow{limit: cfg.RateLimit},
		pulls: pulls,

		tokenTTL: cfg.InstallationTokenTTL,
	}
	for _, app := range cfg.Apps {
		if err := f.RegisterApp(app); err != nil {
			return nil, err
		}
	}
	f.SetBaseURL(cfg.BaseURL)
	// Git clients send some username with the token as password; which
	// username does not matter, as with a GitHub token.
	// No git process runs before the server starts: every lock a killed
	// one left in a repository is stale.
	if repos, err := f.listRepos(); err == nil {
		for _, repo := range repos {
			for _, l := range clearStaleLocks(f.RepoDir(repo.Owner, repo.Name), 0) {
				f.log.Warn("removed a stale git lock", "file", l)
			}
		}
	}
	git, err := newGitHandler(f.repoRoot(), func(user, pass string) bool {
		return user != "" && f.validToken(pass)
	}, f.log)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/git/", f.record(http.StripPrefix("/git", git)))
	mux.Handle("/api/", f.record(f.api(f.apiRoutes())))
	mux.Handle("/_admin/", f.admin())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	// The page owns every other path because html_url links look like
	// GitHub's (/<owner>/<repo>/pull/<n>), which no mux pattern can express
	// without conflicting with the /git/ prefix.
	mux.HandleFunc("/", f.servePage)
	f.handler = mux
	return f, nil
}

// SetBaseURL sets the URL prefix used in html_url and clone URLs, for
// callers that learn their listen address only after New.
func (f *Forge) SetBaseURL(u string) {
	u = strings.TrimRight(u, "/")
	f.baseURL.Store(&u)
}

// Handler returns the HTTP handler: /git/<owner>/<repo>.git/... (smart
// HTTP), /api/v3/... (GitHub REST subset), /_admin/... (faults and the
// request journal, for tests), /healthz, and the HTML page at /.
func (f *Forge) Handler() http.Handler { return f.handler }

// base returns the configured base URL, or one derived from r when unset.
func (f *Forge) base(r *http.Request) string {
	if u := *f.baseURL.Load(); u != "" || r == nil {
		return u
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// validToken accepts the forge token and unexpired installation tokens.
func (f *Forge) validToken(s string) bool {
	return f.isForgeToken(s) || f.validInstallationToken(s, time.Now())
}

// isForgeToken compares in constant time so the token cannot be guessed
// byte by byte from response timing.
func (f *Forge) isForgeToken(s string) bool {
	return s != "" && subtle.ConstantTimeCompare([]byte(s), f.token) == 1
}

// api wraps the REST routes with what GitHub does around every request:
// a request id, authentication, rate-limit headers and injected faults.
func (f *Forge) api(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json; charset=utf-8")
		h.Set("X-GitHub-Request-Id", requestID())
		h.Set("X-GitHub-Media-Type", "github.v3; format=json")
		// Serves next, or lets a queued fault answer instead.
		serve := func(next http.Handler) {
			if st, hit := f.faults.match(r); hit {
				markFaulted(r)
				st.serve(w, r, next)
				return
			}
			next.ServeHTTP(w, r)
		}
		// Apps authenticate with a JWT, not a token, and GitHub does not
		// count these calls against a token's rate limit.
		if id, ok := accessTokenPath(r); ok {
			f.serveAccessToken(w, r, id, serve)
			return
		}
		if !f.validToken(bearer(r)) {
			writeError(w, http.StatusUnauthorized, apiError{Message: "Bad credentials"})
			return
		}
		remaining, reset, ok := f.rate.take(time.Now())
		h.Set("X-RateLimit-Limit", strconv.Itoa(f.rate.limit))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
		h.Set("X-RateLimit-Used", strconv.Itoa(f.rate.limit-remaining))
		h.Set("X-RateLimit-Resource", "core")
		if !ok {
			writeError(w, http.StatusForbidden, apiError{
				Message:          "API rate limit exceeded.",
				DocumentationURL: "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-primary-rate-limits",
			})
			return
		}
		w = &uncounted{ResponseWriter: w, giveBack: func() {
			remaining := f.rate.giveBack(reset)
			h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
			h.Set("X-RateLimit-Used", strconv.Itoa(f.rate.limit-remaining))
		}}
		serve(next)
	})
}

// uncounted gives back the request it answers when the answer is a 304:
// GitHub does not count a 304 to a conditional request against the
// primary rate limit. The answer's headers then say what is left after it.
type uncounted struct {
	http.ResponseWriter
	giveBack func()
}

func (w *uncounted) WriteHeader(status int) {
	if status == http.StatusNotModified {
		w.giveBack()
	}
	w.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *uncounted) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bearer returns the credential of the Authorization header, in either
// scheme go-github and older clients send; "" when there is none.
func bearer(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	for _, scheme := range []string{"Bearer ", "token "} {
		if len(auth) > len(scheme) && strings.EqualFold(auth[:len(scheme)], scheme) {
			return auth[len(scheme):]
		}
	}
	return ""
}

// requestID looks like GitHub's X-GitHub-Request-Id (five hex groups).
func requestID() string {
	b := make([]byte, 14)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	s := strings.ToUpper(hex.EncodeToString(b))
	return s[0:4] + ":" + s[4:8] + ":" + s[8:14] + ":" + s[14:20] + ":" + s[20:28]
}

// rateWindow counts API requests in fixed one-hour windows, as GitHub's
// primary rate limit does.
type rateWindow struct {
	limit int

	mu    sync.Mutex
	used  int
	reset time.Time
}

// giveBack uncounts a request that GitHub does not count (a 304 to a
// conditional request) when it was counted in the window that resets at
// reset, and reports what is left.
func (rw *rateWindow) giveBack(reset time.Time) (remaining int) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if rw.reset.Equal(reset) && rw.used > 0 {
		rw.used--
	}
	return rw.limit - rw.used
}

// take counts one request and reports what is left, when the window
// resets, and whether the request is within the limit.
func (rw *rateWindow) take(now time.Time) (remaining int, reset time.Time, ok bool) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if !now.Before(rw.reset) {
		rw.used, rw.reset = 0, now.Add(time.Hour).Truncate(time.Second)
	}
	if rw.used >= rw.limit {
		return 0, rw.reset, false
	}
	rw.used++
	return rw.limit - rw.used, rw.reset, true
}
