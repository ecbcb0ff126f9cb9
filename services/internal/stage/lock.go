package stage

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LockTTL is how long a lock outlives a holder that died holding it: the
// leviathan-locks bucket's TTL. A holder must finish its work well within
// it (see Lock).
const LockTTL = 2 * time.Minute

// ErrLocked is returned by Lock when another holder still has the lock
// after the wait.
var ErrLocked = errors.New("locked by another holder")

// Lock takes the lock called name in the leviathan-locks bucket, shared by
// every replica of every service, waiting up to wait while another holder
// has it. holder says who takes it (shown to whoever waits for it). The
// returned unlock releases it; it is safe to call more than once.
//
// The lock is a key created only if absent and deleted at the revision
// that created it, so an unlock never deletes a later holder's lock. A
// holder that dies keeps it for at most LockTTL, after which the bucket
// drops the key; a holder must therefore bound its work well below that
// (the caller's context) and must not rely on the lock past it.
func (r *Resources) Lock(ctx context.Context, name, holder string, wait time.Duration) (unlock func(), err error) {
	key := "lock." + hex.EncodeToString([]byte(name)) // any name is a valid key
	deadline := time.Now().Add(wait)
	pause := 5 * time.Millisecond
	for {
		rev, err := r.Locks.Create(ctx, key, []byte(holder))
		if err == nil {
			released := false
			return func() {
				if released {
					return
				}
				released = true
				// Release even when ctx is done: the next holder would
				// otherwise wait for the TTL.
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_ = r.Locks.Delete(dctx, key, jetstream.LastRevision(rev))
			}, nil
		}
		if !held(err) {
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			by := "another holder"
			if e, err := r.Locks.Get(ctx, key); err == nil {
				by = string(e.Value())
			}
			return nil, fmt.Errorf("%w: %s is held by %s", ErrLocked, name, by)
		}
		t := time.NewTimer(min(pause, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// held reports whether a create failed because the key exists (or, for a
// contender that lost a race for a deleted key, changed under it).
func held(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
