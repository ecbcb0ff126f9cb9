package gitx

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
)

// Sentinel errors. Every error returned by this package that means one of
// these wraps it (test with errors.Is); the message adds context, never a
// credential. Network failures are not mapped: they keep their *url.Error /
// net.Error in the chain so callers can classify them as transient, and
// unexpected HTTP statuses surface as *StatusError.
var (
	// ErrAuth: the server rejected the credentials (HTTP 401) or refused
	// access with them (HTTP 403).
	ErrAuth = errors.New("gitx: authentication failed")
	// ErrRepoNotFound: the server has no repository at that URL (HTTP 404).
	ErrRepoNotFound = errors.New("gitx: repository not found")
	// ErrBranchNotFound: the base branch to fetch does not exist (this
	// includes an empty repository).
	ErrBranchNotFound = errors.New("gitx: branch not found")
	// ErrBranchConflict: the branch to push already exists at another
	// commit. Push never forces.
	ErrBranchConflict = errors.New("gitx: branch exists at another commit")
	// ErrRefBlocked: an existing ref makes the branch name impossible (a ref
	// cannot be both a file and a directory: refs/heads/agent blocks
	// refs/heads/agent/x and refs/heads/agent/x/y blocks refs/heads/agent/x).
	ErrRefBlocked = errors.New("gitx: branch name blocked by an existing ref")
	// ErrPushRejected: the server refused the ref update for another reason
	// (a hook, a protected ref, a policy); the message carries its reason.
	ErrPushRejected = errors.New("gitx: push rejected by server")
	// ErrRefLocked: the server could not lock the ref to update it (another
	// update holds it, or a crashed one left its lock): transient, unlike
	// ErrPushRejected; a later try goes through.
	ErrRefLocked = errors.New("gitx: the server could not lock the ref")
	// ErrFileNotFound: an element of the path is missing from the tree (or
	// is not a directory where one is needed, or the file is not a blob).
	ErrFileNotFound = errors.New("gitx: file not found")
	// ErrMissingObject: an object needed to answer is not in the snapshot
	// (for example a tree off the path that the snapshot was fetched for).
	ErrMissingObject = errors.New("gitx: object not in snapshot")
	// ErrInvalidPath: a file path is empty, absolute, not clean, or names
	// .git.
	ErrInvalidPath = errors.New("gitx: invalid path")
	// ErrInvalidRemote: the remote URL is not http(s), has no host, or
	// carries credentials (they belong in Remote.Username/Password).
	ErrInvalidRemote = errors.New("gitx: invalid remote")
	// ErrInvalidBranch: the branch name is not a valid git branch name.
	ErrInvalidBranch = errors.New("gitx: invalid branch name")
	// ErrNoFilterSupport: the server cannot do the forced fetch strategy
	// (no "filter" or "shallow" capability, a refused filter kind, refused
	// wants by id) or, choosing automatically, any strategy at all.
	ErrNoFilterSupport = errors.New("gitx: server does not support the requested fetch strategy")
)

// StatusError is an HTTP status from the git server that maps to no
// sentinel (401, 403 and 404 do). Callers retry on Temporary ones.
type StatusError struct {
	StatusCode int
	URL        string // without credentials or query
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("HTTP %d %s from %s", e.StatusCode, http.StatusText(e.StatusCode), e.URL)
}

// Temporary reports whether the status may go away on a retry: 408, 429 and
// every 5xx.
func (e *StatusError) Temporary() bool {
	return e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusTooManyRequests ||
		e.StatusCode >= 500
}

// transportError maps an error from a go-git transport session onto this
// package's errors. go-git wraps network failures in
// plumbing.UnexpectedError, which has no Unwrap method; unwrapping it here
// is what keeps *url.Error, net.Error and context errors reachable through
// errors.As/errors.Is.
func transportError(op string, r Remote, err error) error {
	where := r.displayURL()
	switch {
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed):
		return fmt.Errorf("%w: %s %s", ErrAuth, op, where)
	case errors.Is(err, transport.ErrRepositoryNotFound):
		return fmt.Errorf("%w: %s %s", ErrRepoNotFound, op, where)
	}
	for {
		var ue *plumbing.UnexpectedError
		var pe *plumbing.PermanentError
		switch {
		case errors.As(err, &ue):
			err = ue.Err
			continue
		case errors.As(err, &pe):
			err = pe.Err
			continue
		}
		break
	}
	var he *githttp.Err
	if errors.As(err, &he) {
		return fmt.Errorf("gitx: %s: %w", op, &StatusError{StatusCode: he.StatusCode(), URL: where})
	}
	return fmt.Errorf("gitx: %s %s: %w", op, where, err)
}

// isTransportErr reports whether an error from a go-git session call came
// from below the git protocol: go-git wraps HTTP and network failures in
// UnexpectedError (or PermanentError) or returns a transport sentinel.
func isTransportErr(err error) bool {
	return errors.As(err, new(*plumbing.UnexpectedError)) || errors.As(err, new(*plumbing.PermanentError)) ||
		errors.Is(err, transport.ErrAuthenticationRequired) || errors.Is(err, transport.ErrAuthorizationFailed) ||
		errors.Is(err, transport.ErrRepositoryNotFound) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded)
}

// errRefused marks a request the server understood and refused (an ERR
// packet, a fatal side-band message, an unparseable answer): the automatic
// strategy choice falls back to the next strategy on it, and on nothing
// else, since a network or auth failure would only fail again.
var errRefused = errors.New("server refused the request")

// redactedError hides a secret that might have reached an error message
// through text we do not control (a server echoing a request, a proxy). It
// is a last line of defence: nothing in this package puts the password in
// an error on purpose.
type redactedError struct {
	err    error
	secret string
}

func (e *redactedError) Error() string {
	return strings.ReplaceAll(e.err.Error(), e.secret, "[REDACTED]")
}

func (e *redactedError) Unwrap() error { return e.err }

// redact wraps err so its message never shows secret. Secrets shorter than
// four bytes are not replaced: they would shred ordinary words and are not
// real tokens anyway.
func redact(err error, secret string) error {
	if err == nil || len(secret) < 4 {
		return err
	}
	return &redactedError{err: err, secret: secret}
}
