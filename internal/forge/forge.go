// Package forge opens pull requests on code forges. Every driver finds an
// existing pull request for the head branch before it creates one, so an
// attempt retried at any point still yields exactly one pull request; and
// every driver is polite to the forge's rate limits: mutating calls are
// serial per token and spaced apart, and a rate-limited answer stops all
// calls with that token until the forge says they may resume.
package forge

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Sentinel errors of every driver. Callers branch on them with errors.Is;
// messages add context, never a credential.
var (
	// ErrAuth: the forge refused the credentials (401), refused access
	// with them (403 that is not a rate limit), or a GitHub App could not
	// get an installation token.
	ErrAuth = errors.New("forge refused the credentials")
	// ErrNotFound: the repository does not exist or is not visible.
	ErrNotFound = errors.New("repository not found on the forge")
	// ErrClosedByHuman: a pull request for the branch exists and a person
	// closed it without merging; it is not re-opened.
	ErrClosedByHuman = errors.New("pull request for this branch was closed without merging")
	// ErrInvalid: the forge rejected the request as invalid (a 4xx other
	// than the above); the same request fails the same way again.
	ErrInvalid = errors.New("forge rejected the request")
	// ErrRateLimited: the forge said to slow down (403/429 rate limit),
	// or the driver is still waiting out such an answer. It always comes
	// inside a *RetryError that says how long to wait.
	ErrRateLimited = errors.New("forge rate limit")
	// ErrPaced: the next slot for a mutating call with this token is
	// further away than the driver waits in-line. It comes inside a
	// *RetryError with the time to that slot.
	ErrPaced = errors.New("mutating calls with this token are spaced apart")
)

// RetryError is a transient forge failure: 5xx, timeouts, dropped
// connections, rate limits. After, when non-zero, is the least time to
// wait before the next try (from Retry-After, X-RateLimit-Reset or the
// driver's backoff).
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string {
	if e.After > 0 {
		return fmt.Sprintf("forge temporarily unavailable (retry in %s): %v", e.After.Round(time.Millisecond), e.Err)
	}
	return "forge temporarily unavailable: " + e.Err.Error()
}
func (e *RetryError) Unwrap() error { return e.Err }

// PRRequest is a pull request to open.
type PRRequest struct {
	RepoURL string // clone URL of the target repository
	Base    string // branch to merge into
	Head    string // branch with the proposal
	Title   string
	Body    string
	Draft   bool
}

// PullRequest is a pull request as the forge reports it.
type PullRequest struct {
	Number  int
	URL     string // web page of the pull request
	State   string // open, closed, merged
	Head    string // head branch name
	HeadSHA string
	Base    string
	Title   string
	Body    string
	Draft   bool
	Repo    string // owner/name
}

// PR states as drivers report them.
const (
	StateOpen   = "open"
	StateClosed = "closed"
	StateMerged = "merged"
)

// Driver is one forge account (one token). Implementations are safe for
// concurrent use; they pace mutating calls and honour rate limits
// themselves, returning *RetryError rather than sleeping for long.
//
// Errors wrap ErrAuth, ErrNotFound or ErrInvalid when retrying cannot help,
// and are *RetryError when it can.
type Driver interface {
	// FindPRs returns the pull requests whose head branch is head (in the
	// repository itself, not a fork), in any state, newest first.
	FindPRs(ctx context.Context, repoURL, head string) ([]PullRequest, error)
	// CreatePR opens a pull request. When the forge answers that one
	// already exists for req.Head (GitHub's 422, Gitea's 409), CreatePR
	// returns that one with reused set.
	CreatePR(ctx context.Context, req PRRequest) (pr PullRequest, reused bool, err error)
	// OpenPRs lists every open pull request of the repository, all pages.
	OpenPRs(ctx context.Context, repoURL string) ([]PullRequest, error)
}

// Guard decides, just before a pull request would be created, whether it
// may be: a non-nil error stops the creation and is returned as is.
type Guard func(ctx context.Context) error

// EnsurePR returns the pull request for req.Head, creating it only when
// none exists: find by head first (any state), adopt an open or merged
// one, refuse to re-open one a human closed (ErrClosedByHuman), then ask
// guard (may be nil), then create. reused reports that the PR existed.
//
// Every driver gets these rules from this one function, so they cannot
// drift apart; the conformance suite (forgetest) checks them per driver.
func EnsurePR(ctx context.Context, d Driver, req PRRequest, guard Guard) (PullRequest, bool, error) {
	prs, err := d.FindPRs(ctx, req.RepoURL, req.Head)
	if err != nil {
		return PullRequest{}, false, err
	}
	if pr, ok := pick(prs); ok {
		return pr, true, nil
	}
	if len(prs) > 0 {
		pr := prs[0]
		return PullRequest{}, false, fmt.Errorf("%w: #%d %s; delete the branch %s or re-open the pull request by hand to propose it again",
			ErrClosedByHuman, pr.Number, pr.URL, req.Head)
	}
	if guard != nil {
		if err := guard(ctx); err != nil {
			return PullRequest{}, false, err
		}
	}
	return d.CreatePR(ctx, req)
}

// pick chooses the pull request to adopt among those of one head branch:
// an open one first, else a merged one. Closed ones are never adopted.
func pick(prs []PullRequest) (PullRequest, bool) {
	for _, want := range []string{StateOpen, StateMerged} {
		for _, pr := range prs {
			if pr.State == want {
				return pr, true
			}
		}
	}
	return PullRequest{}, false
}

// RepoPath extracts owner and name from a clone URL such as
// https://github.com/owner/name.git or http://host/git/owner/name.git.
func RepoPath(repoURL string) (owner, name string, err error) {
	u, err := url.Parse(repoURL)
	if err != nil {
		return "", "", fmt.Errorf("repo url is not a URL")
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 2 {
		return "", "", fmt.Errorf("repo url path %q has no owner/name", u.Path)
	}
	owner, name = parts[len(parts)-2], strings.TrimSuffix(parts[len(parts)-1], ".git")
	if owner == "" || name == "" {
		return "", "", fmt.Errorf("repo url path %q has no owner/name", u.Path)
	}
	return owner, name, nil
}
