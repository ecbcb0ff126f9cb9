package gitx

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"testing"

	"github.com/leviathan-dev/leviathan/events"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		err   error
		ft    events.FailureType
		retry bool
	}{
		{fmt.Errorf("fetch: %w", ErrAuth), events.AuthFailed, false},
		{ErrRepoNotFound, events.RepoNotFound, false},
		{ErrBranchNotFound, events.BranchNotFound, false},
		{ErrRefLocked, events.RetriesExhausted, true},
		{ErrRefBlocked, events.BranchConflict, false},
		{ErrBranchConflict, events.BranchConflict, false},
		{ErrPushRejected, events.ExecutionError, false},
		{&StatusError{StatusCode: 400}, events.ExecutionError, false},
		{&StatusError{StatusCode: 503}, events.RetriesExhausted, true},
		{&url.Error{Op: "Get", URL: "http://x", Err: errors.New("connection refused")}, events.RetriesExhausted, true},
		{context.DeadlineExceeded, events.RetriesExhausted, true},
	}
	for _, c := range cases {
		ft, retry := Classify(c.err)
		if ft != c.ft || retry != c.retry {
			t.Errorf("Classify(%v) = %s, %v; want %s, %v", c.err, ft, retry, c.ft, c.retry)
		}
	}
}
