// Package forge opens pull requests on code forges. Every driver finds an
// existing pull request for the head branch before it creates one, so an
// attempt retried at any point still yields exactly one pull request.
package forge

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Sentinel errors of every driver.
var (
	// ErrAuth: the forge refused the credentials.
	ErrAuth = errors.New("forge refused the credentials")
	// ErrNotFound: the repository does not exist or is not visible.
	ErrNotFound = errors.New("repository not found on the forge")
	// ErrClosedByHuman: a pull request for the branch exists and a person
	// closed it without merging; it is not re-opened.
	ErrClosedByHuman = errors.New("pull request for this branch was closed without merging")
	// ErrInvalid: the forge rejected the request as invalid.
	ErrInvalid = errors.New("forge rejected the pull request")
)

// RetryError is a transient forge failure. After, when non-zero, is how long
// the forge asked us to wait.
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string { return "forge temporarily unavailable: " + e.Err.Error() }
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
	HeadSHA string
	Title   string
	Repo    string // owner/name
}

// Driver opens or adopts pull requests. Implementations are safe for
// concurrent use.
type Driver interface {
	// EnsurePR returns the pull request for req.Head, creating it only when
	// none exists. reused reports that it existed already.
	EnsurePR(ctx context.Context, req PRRequest) (pr PullRequest, reused bool, err error)
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
