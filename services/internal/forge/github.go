package forge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-github/v60/github"
)

// GitHubConfig configures the github driver.
type GitHubConfig struct {
	// Token is a personal access token (or installation token).
	Token string
	// BaseURL is the REST API root: empty for api.github.com, else a
	// GitHub Enterprise or localforge URL such as http://host/api/v3/.
	BaseURL string
	// HTTPClient is optional.
	HTTPClient *http.Client
}

// GitHub is the driver for GitHub, GitHub Enterprise and localforge.
type GitHub struct {
	client *github.Client
}

// NewGitHub returns a github driver with one client for its token.
func NewGitHub(cfg GitHubConfig) (*GitHub, error) {
	if cfg.Token == "" {
		return nil, errors.New("forge: github: token is required")
	}
	c := github.NewClient(cfg.HTTPClient).WithAuthToken(cfg.Token)
	if cfg.BaseURL != "" {
		base := strings.TrimSuffix(cfg.BaseURL, "/") + "/"
		var err error
		if c, err = c.WithEnterpriseURLs(base, base); err != nil {
			return nil, fmt.Errorf("forge: github: base url: %w", err)
		}
		// WithEnterpriseURLs appends api/v3/ unless it is there; a
		// localforge base already ends in it.
	}
	return &GitHub{client: c}, nil
}

// EnsurePR implements Driver: list by head (state all), adopt what is
// there, else create; a 422 "already exists" adopts the PR another try made.
func (g *GitHub) EnsurePR(ctx context.Context, req PRRequest) (PullRequest, bool, error) {
	owner, name, err := RepoPath(req.RepoURL)
	if err != nil {
		return PullRequest{}, false, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if pr, ok, err := g.find(ctx, owner, name, req); err != nil || ok {
		return pr, ok, err
	}
	created, resp, err := g.client.PullRequests.Create(ctx, owner, name, &github.NewPullRequest{
		Title: github.String(req.Title), Head: github.String(req.Head), Base: github.String(req.Base),
		Body: github.String(req.Body), Draft: github.Bool(req.Draft),
	})
	if err != nil {
		if alreadyExists(err) {
			// A create whose response we lost (502 after success, or a
			// race with another replica): adopt that PR.
			if pr, ok, ferr := g.find(ctx, owner, name, req); ferr != nil || ok {
				return pr, ok, ferr
			}
		}
		return PullRequest{}, false, classify(resp, err)
	}
	return convert(created, owner, name), false, nil
}

// find looks up the pull request whose head is req.Head.
func (g *GitHub) find(ctx context.Context, owner, name string, req PRRequest) (PullRequest, bool, error) {
	prs, resp, err := g.client.PullRequests.List(ctx, owner, name, &github.PullRequestListOptions{
		State: "all", Head: owner + ":" + req.Head, ListOptions: github.ListOptions{PerPage: 100},
	})
	if err != nil {
		return PullRequest{}, false, classify(resp, err)
	}
	var closed *github.PullRequest
	for _, pr := range prs {
		if pr.GetHead().GetRef() != req.Head {
			continue
		}
		switch {
		case pr.GetState() == "open", pr.GetMerged() || pr.MergedAt != nil:
			return convert(pr, owner, name), true, nil
		default:
			closed = pr
		}
	}
	if closed != nil {
		return PullRequest{}, false, fmt.Errorf("%w: #%d (%s)", ErrClosedByHuman, closed.GetNumber(), closed.GetHTMLURL())
	}
	return PullRequest{}, false, nil
}

func convert(pr *github.PullRequest, owner, name string) PullRequest {
	state := pr.GetState()
	if pr.GetMerged() || pr.MergedAt != nil {
		state = "merged"
	}
	return PullRequest{
		Number: pr.GetNumber(), URL: pr.GetHTMLURL(), State: state, HeadSHA: pr.GetHead().GetSHA(),
		Title: pr.GetTitle(), Repo: owner + "/" + name,
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

// classify maps a go-github error to the sentinels and RetryError.
func classify(resp *github.Response, err error) error {
	var rl *github.RateLimitError
	var abuse *github.AbuseRateLimitError
	switch {
	case errors.As(err, &rl):
		return &RetryError{Err: err, After: time.Until(rl.Rate.Reset.Time)}
	case errors.As(err, &abuse):
		return &RetryError{Err: err, After: abuse.GetRetryAfter()}
	}
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	switch {
	case status == http.StatusTooManyRequests:
		// go-github v60 has no typed error for 429.
		after := time.Minute
		if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil {
			after = time.Duration(s) * time.Second
		}
		return &RetryError{Err: err, After: after}
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return fmt.Errorf("%w: %v", ErrAuth, err)
	case status == http.StatusNotFound:
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case status == http.StatusUnprocessableEntity:
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	default:
		// 5xx, timeouts, connection errors.
		return &RetryError{Err: err}
	}
}
