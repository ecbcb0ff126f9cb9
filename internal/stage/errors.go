package stage

import (
	"errors"
	"fmt"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// Error is how a handler tells the runner what to do with a failure. The
// runner decides retry or fail from this type only, never from message text.
//
// A handler error that is not an *Error is treated as transient: it is
// retried with backoff and becomes retries_exhausted on the last delivery.
type Error struct {
	// Type is the failure_type reported when the attempt fails.
	Type events.FailureType
	// Retry marks a transient failure: the message is redelivered.
	Retry bool
	// After, when set on a retry, is the delay the remote side asked for
	// (Retry-After); it overrides the runner's backoff.
	After time.Duration
	// Wait marks waiting, not failing (a rate limit, the forge's pacing
	// turn, a lock held by a live holder): the runner keeps the message,
	// waits After and runs the handler again, spending no delivery.
	Wait bool
	// Err is the cause. Its text becomes error_summary, so it must never
	// hold a credential.
	Err error
}

func (e *Error) Error() string {
	if e.Wait {
		return fmt.Sprintf("waiting %v: %v", e.After, e.Err)
	}
	if e.Retry {
		return fmt.Sprintf("transient: %v", e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Type, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Fail is a permanent failure of type t: the attempt fails at once.
func Fail(t events.FailureType, err error) error {
	return &Error{Type: t, Err: err}
}

// Failf is Fail with a formatted cause.
func Failf(t events.FailureType, format string, args ...any) error {
	return &Error{Type: t, Err: fmt.Errorf(format, args...)}
}

// Retry is a transient failure retried with the runner's backoff.
func Retry(err error) error {
	return &Error{Type: events.RetriesExhausted, Retry: true, Err: err}
}

// RetryAfter is a transient failure retried no sooner than d.
func RetryAfter(d time.Duration, err error) error {
	return &Error{Type: events.RetriesExhausted, Retry: true, After: d, Err: err}
}

// Wait says the handler must wait d before it can go on (DESIGN.md §3,
// "waiting is not failing"): the runner holds the message, keeping it
// alive, and runs the handler again after d. The wait spends none of the
// attempt's deliveries.
func Wait(d time.Duration, err error) error {
	return &Error{Type: events.RetriesExhausted, Retry: true, Wait: true, After: d, Err: err}
}

// Classified is Retry(err) when retry is set, else Fail(t, err): for
// packages that classify their own errors (gitx.Classify).
func Classified(err error, t events.FailureType, retry bool) error {
	if retry {
		return Retry(err)
	}
	return Fail(t, err)
}

// classify turns any handler error into an *Error.
func classify(err error) *Error {
	var se *Error
	if errors.As(err, &se) {
		return se
	}
	return &Error{Type: events.RetriesExhausted, Retry: true, Err: err}
}
