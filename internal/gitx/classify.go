package gitx

import (
	"errors"

	"github.com/leviathan-dev/leviathan/events"
)

// Classify says how an attempt should treat an error of this package:
// retry reports a failure worth another delivery (network errors,
// timeouts, temporary HTTP statuses); otherwise failure is the
// failure_type the attempt fails with at once.
func Classify(err error) (failure events.FailureType, retry bool) {
	var se *StatusError
	switch {
	case errors.Is(err, ErrAuth):
		return events.AuthFailed, false
	case errors.Is(err, ErrRepoNotFound):
		return events.RepoNotFound, false
	case errors.Is(err, ErrBranchNotFound):
		return events.BranchNotFound, false
	case errors.Is(err, ErrBranchConflict), errors.Is(err, ErrRefBlocked):
		return events.BranchConflict, false
	case errors.Is(err, ErrPushRejected), errors.Is(err, ErrInvalidRemote), errors.Is(err, ErrInvalidBranch),
		errors.Is(err, ErrInvalidPath), errors.Is(err, ErrMissingObject), errors.Is(err, ErrNoFilterSupport):
		// The same request fails the same way on every try.
		return events.ExecutionError, false
	case errors.As(err, &se) && !se.Temporary():
		return events.ExecutionError, false
	default:
		return events.RetriesExhausted, true
	}
}
