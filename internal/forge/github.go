package forge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-github/v60/github"

	"github.com/leviathan-dev/leviathan/internal/egress"
)

// GitHubConfig configures the github driver. The zero values of the
// durations are the production defaults.
type GitHubConfig struct {
	// Tokens supplies the token: StaticToken for a personal access token,
	// *AppTokens for a GitHub App installation.
	Tokens TokenSource
	// Token is shorthand for Tokens: StaticToken(Token).
	Token string
	// BaseURL is the REST API root: empty for api.github.com, else a
	// GitHub Enterprise or localforge URL such as http://host/api/v3/.
	BaseURL string
	// HTTPClient's Transport and CheckRedirect carry the requests;
	// optional.
	HTTPClient *http.Client
	// Credentials says where the token may be sent
	// (egress.Policy.Credentials); nil allows the API root's own host
	// over https or loopback. A call to anywhere else fails.
	Credentials func(u *url.URL) bool
	// MinInterval is the least time between the end of one mutating call
	// (POST, PATCH, ...) with this token and the start of the next
	// (default 1 s). Mutating calls are also never concurrent.
	MinInterval time.Duration
	// MaxPaceWait is the longest a call waits in-line for its slot; a
	// longer wait returns a *RetryError instead (default 5 s).
	MaxPaceWait time.Duration
	// RateLimitBackoff is the wait after a 403/429 rate limit that gives
	// neither Retry-After nor an exhausted X-RateLimit-Remaining (default
	// 60 s), doubled on each repeat up to 16 times it.
	RateLimitBackoff time.Duration
	// RequestTimeout bounds the forge's answer to each API call, body
	// and token minting included, from when it is sent (the wait for a
	// pacing slot is bounded by MaxPaceWait); default 30 s. A call that
	// times out is a *RetryError. A mutating call that times out holds the
	// pace as long again: the forge may still be carrying it out.
	RequestTimeout time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Turns, when set, shares the account's mutating calls with other
	// processes (the replicas of a service): one call at a time among
	// them all, each turn held MinInterval after its call. Without it,
	// only this process's calls are paced.
	Turns Turns
}

func (c *GitHubConfig) setDefaults() error {
	switch {
	case c.Tokens == nil && c.Token == "":
		return errors.New("forge: github: a token or a GitHub App is required")
	case c.Tokens != nil && c.Token != "":
		return errors.New("forge: github: set Token or Tokens, not both")
	case c.Tokens == nil:
		c.Tokens = StaticToken(c.Token)
	}
	if c.MinInterval < 0 || c.MaxPaceWait < 0 || c.RateLimitBackoff < 0 || c.RequestTimeout < 0 {
		return errors.New("forge: github: durations must not be negative")
	}
	if c.MinInterval == 0 {
		c.MinInterval = DefaultMinInterval
	}
	if c.MaxPaceWait == 0 {
		c.MaxPaceWait = DefaultMaxPaceWait
	}
	if c.RateLimitBackoff == 0 {
		c.RateLimitBackoff = DefaultRateLimitBackoff
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Turns != nil && c.RequestTimeout+c.MinInterval > MaxTurn {
		return fmt.Errorf("forge: github: with turns shared by replicas, request timeout plus min interval must not exceed %v", MaxTurn)
	}
	return nil
}

// GitHub is the driver for GitHub, GitHub Enterprise and localforge. It
// holds one go-github client for its one token source, and that client's
// limiter: all calls made with the token share one pace and one
// rate-limit state.
type GitHub struct {
	cfg    GitHubConfig
	client *github.Client
	lists  listCache // the last answer of each list page, for conditional requests
}

// NewGitHub returns a github driver with one client for its token.
func NewGitHub(cfg GitHubConfig) (*GitHub, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	base := http.DefaultTransport
	checkRedirect := egress.CheckRedirect
	if cfg.HTTPClient != nil && cfg.HTTPClient.Transport != nil {
		base = cfg.HTTPClient.Transport
	}
	if cfg.HTTPClient != nil && cfg.HTTPClient.CheckRedirect != nil {
		checkRedirect = cfg.HTTPClient.CheckRedirect
	}
	allow := cfg.Credentials
	if allow == nil {
		root := cfg.BaseURL
		if root == "" {
			root = "https://api.github.com/"
		}
		own, err := url.Parse(root)
		if err != nil {
			return nil, errors.New("forge: github: base url does not parse")
		}
		allow = func(u *url.URL) bool { return strings.EqualFold(u.Host, own.Host) && secureOrLoopback(u) }
	}
	lim := newLimiter(&authTransport{ts: cfg.Tokens, base: base, allow: allow}, cfg.Now, cfg.MinInterval, cfg.MaxPaceWait, cfg.RateLimitBackoff, cfg.RequestTimeout)
	lim.turns = cfg.Turns
	c := github.NewClient(&http.Client{Transport: lim, CheckRedirect: checkRedirect})
	if cfg.BaseURL != "" {
		// WithEnterpriseURLs appends api/v3/ unless it is there; a
		// localforge base already ends in it.
		base := strings.TrimSuffix(cfg.BaseURL, "/") + "/"
		var err error
		if c, err = c.WithEnterpriseURLs(base, base); err != nil {
			return nil, fmt.Errorf("forge: github: base url: %w", err)
		}
	}
	return &GitHub{cfg: cfg, client: c}, nil
}

// call runs one API call and classifies its error. The limiter bounds the
// forge's answer by the request timeout; the whole call may also wait for
// a pacing slot (at most MaxPaceWait) and mint a token.
func (g *GitHub) call(ctx context.Context, what string, f func(ctx context.Context) (*github.Response, error)) error {
	cctx, cancel := context.WithTimeout(ctx, g.cfg.MaxPaceWait+2*g.cfg.RequestTimeout)
	defer cancel()
	resp, err := f(cctx)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // the caller gave up: not the forge's fault
	}
	if cctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return &RetryError{Err: fmt.Errorf("%s: no answer within %s", what, g.cfg.RequestTimeout)}
	}
	return classify(what, resp, err, g.cfg.Now)
}

// FindPRs implements Driver: list by head (owner:branch), state all.
func (g *GitHub) FindPRs(ctx context.Context, repoURL, head string) ([]PullRequest, error) {
	// Not conditional: a head is listed about once (a redelivery lists it
	// again), and its pages would only crowd out the open lists'.
	return g.list(ctx, repoURL, "list pull requests by head", false, func(owner string) url.Values {
		return url.Values{"state": {"all"}, "head": {owner + ":" + head}}
	}, func(owner string, pr *listedPR) bool {
		// GitHub filters by head already; a fork's branch of the same
		// name would carry another owner in its label.
		return pr.Head.Ref == head && strings.EqualFold(pr.Head.Label, owner+":"+head)
	})
}

// OpenPRs implements Driver.
func (g *GitHub) OpenPRs(ctx context.Context, repoURL string) ([]PullRequest, error) {
	return g.list(ctx, repoURL, "list open pull requests", true, func(string) url.Values {
		return url.Values{"state": {"open"}}
	}, func(string, *listedPR) bool { return true })
}

// listedPR is what a driver reads of a pull request in a list: decoding
// only these fields skips the rest of GitHub's object (the head's and the
// base's whole repositories, users, links) instead of allocating it, which
// made decoding lists most of pr's CPU.
type listedPR struct {
	Number   int     `json:"number"`
	State    string  `json:"state"`
	HTMLURL  string  `json:"html_url"`
	Title    string  `json:"title"`
	Body     *string `json:"body"` // null when empty
	Draft    bool    `json:"draft"`
	Merged   bool    `json:"merged"` // single pull requests only
	MergedAt *string `json:"merged_at"`
	Head     struct {
		Ref   string `json:"ref"`
		SHA   string `json:"sha"`
		Label string `json:"label"`
	} `json:"head"`
	Base struct {
		Ref string `json:"ref"`
	} `json:"base"`
}

// list pages through the pull requests of the repository that query
// (built from the owner) selects, keeping those keep accepts; each page
// asked for with the ETag of its last answer when conditional
// (listcache.go).
func (g *GitHub) list(ctx context.Context, repoURL, what string, conditional bool, query func(owner string) url.Values,
	keep func(owner string, pr *listedPR) bool) ([]PullRequest, error) {
	owner, name, err := RepoPath(repoURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	q := query(owner)
	q.Set("per_page", "100")
	var out []PullRequest
	for {
		var prs []listedPR
		var resp *github.Response
		next := 0
		path := "repos/" + url.PathEscape(owner) + "/" + url.PathEscape(name) + "/pulls?" + q.Encode()
		var cached *listPage
		if conditional {
			cached = g.lists.get(path)
		}
		err := g.call(ctx, what, func(ctx context.Context) (*github.Response, error) {
			req, err := g.client.NewRequest(http.MethodGet, path, nil)
			if err != nil {
				return nil, err
			}
			if cached != nil {
				req.Header.Set("If-None-Match", cached.etag)
			}
			prs = prs[:0]
			resp, err = g.client.Do(ctx, req, &prs)
			var er *github.ErrorResponse
			if cached != nil && errors.As(err, &er) && er.Response != nil && er.Response.StatusCode == http.StatusNotModified {
				prs, next = cached.prs, cached.next
				return resp, nil
			}
			if err == nil {
				next = resp.NextPage
				if etag := resp.Header.Get("ETag"); conditional && sendableETag(etag) {
					g.lists.put(path, etag, prs, next)
				}
			}
			return resp, err
		})
		if err != nil {
			return nil, err
		}
		for i := range prs {
			if keep(owner, &prs[i]) {
				out = append(out, prs[i].convert(owner, name))
			}
		}
		if next == 0 {
			return out, nil
		}
		q.Set("page", strconv.Itoa(next))
	}
}

func (pr *listedPR) convert(owner, name string) PullRequest {
	state := pr.State
	if pr.Merged || pr.MergedAt != nil {
		state = StateMerged
	}
	body := ""
	if pr.Body != nil {
		body = *pr.Body
	}
	return PullRequest{
		Number: pr.Number, URL: pr.HTMLURL, State: state,
		Head: pr.Head.Ref, HeadSHA: pr.Head.SHA, Base: pr.Base.Ref,
		Title: pr.Title, Body: body, Draft: pr.Draft, Repo: owner + "/" + name,
	}
}

// CreatePR implements Driver. A 422 "A pull request already exists" (a
// create whose answer was lost, or another replica that won a race)
// adopts the existing PR.
func (g *GitHub) CreatePR(ctx context.Context, req PRRequest) (PullRequest, bool, error) {
	owner, name, err := RepoPath(req.RepoURL)
	if err != nil {
		return PullRequest{}, false, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var created *github.PullRequest
	var rawErr error
	err = g.call(ctx, "create pull request", func(ctx context.Context) (*github.Response, error) {
		var resp *github.Response
		created, resp, rawErr = g.client.PullRequests.Create(ctx, owner, name, &github.NewPullRequest{
			Title: github.String(req.Title), Head: github.String(req.Head), Base: github.String(req.Base),
			Body: github.String(req.Body), Draft: github.Bool(req.Draft),
		})
		return resp, rawErr
	})
	if err == nil {
		return convert(created, owner, name), false, nil
	}
	if alreadyExists(rawErr) {
		prs, ferr := g.FindPRs(ctx, req.RepoURL, req.Head)
		if ferr != nil {
			return PullRequest{}, false, ferr
		}
		if pr, ok := pick(prs); ok {
			return pr, true, nil
		}
		// GitHub says it exists but lists none open: a replica lag.
		return PullRequest{}, false, &RetryError{Err: fmt.Errorf("create pull request: GitHub reports one exists for %s but lists none", req.Head)}
	}
	return PullRequest{}, false, err
}

func convert(pr *github.PullRequest, owner, name string) PullRequest {
	state := pr.GetState()
	if pr.GetMerged() || pr.MergedAt != nil {
		state = StateMerged
	}
	return PullRequest{
		Number: pr.GetNumber(), URL: pr.GetHTMLURL(), State: state,
		Head: pr.GetHead().GetRef(), HeadSHA: pr.GetHead().GetSHA(), Base: pr.GetBase().GetRef(),
		Title: pr.GetTitle(), Body: pr.GetBody(), Draft: pr.GetDraft(), Repo: owner + "/" + name,
	}
}

func alreadyExists(err error) bool {
	var er *github.ErrorResponse
	if !errors.As(err, &er) || er.Response == nil || er.Response.StatusCode != http.StatusUnprocessableEntity {
		return false
	}
	for _, e := range er.Errors {
		if strings.HasPrefix(e.Message, "A pull request already exists") {
			return true
		}
	}
	return false
}

// classify maps a go-github error to the sentinels and *RetryError. The
// limiter has already turned rate-limited answers into *RetryError.
func classify(what string, resp *github.Response, err error, now func() time.Time) error {
	var re *RetryError
	var rl *github.RateLimitError
	var abuse *github.AbuseRateLimitError
	switch {
	case errors.As(err, &re):
		return re
	case errors.Is(err, ErrAuth):
		return err // the token source refused (a GitHub App that cannot mint)
	case errors.As(err, &rl):
		// go-github remembers an exhausted primary limit from the
		// headers of a successful answer and refuses calls until reset.
		return &RetryError{After: max(rl.Rate.Reset.Sub(now()), time.Second), Err: fmt.Errorf("%w: %s: primary rate limit exhausted", ErrRateLimited, what)}
	case errors.As(err, &abuse):
		return &RetryError{After: max(abuse.GetRetryAfter(), time.Second), Err: fmt.Errorf("%w: %s", ErrRateLimited, what)}
	}
	status := 0
	if resp != nil && resp.Response != nil {
		status = resp.StatusCode
	}
	switch {
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return fmt.Errorf("%w: %s: %v", ErrAuth, what, err)
	case status == http.StatusNotFound:
		return fmt.Errorf("%w: %s: %v", ErrNotFound, what, err)
	case status == http.StatusRequestTimeout, status >= 500, status == 0:
		// 5xx, and no answer at all: connection refused, reset, dropped.
		return &RetryError{Err: fmt.Errorf("%s: %w", what, err)}
	default:
		return fmt.Errorf("%w: %s: %v", ErrInvalid, what, err)
	}
}
