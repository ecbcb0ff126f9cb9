package stage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LockTTL is how long a lock outlives a holder that died holding it: the
// leviathan-locks bucket's TTL. A live holder renews its lock four times
// per TTL, so it may hold it as long as it needs and a slow renewal on a
// loaded machine does not lose it; a dead one blocks the others for
// seconds, not minutes.
const LockTTL = 4 * time.Second

// ErrLocked is returned by Lock when another holder still has the lock
// after the wait.
var ErrLocked = errors.New("locked by another holder")

// lockRecheck is how often a waiter tries again without being told of a
// release: a lock whose holder died lapses with its TTL, which no watcher
// hears of.
const lockRecheck = time.Second

// Lock takes the lock called name in the leviathan-locks bucket, shared by
// every replica of every service, waiting up to wait while another holder
// has it. holder says who takes it (shown to whoever waits for it) and
// owns it: a lock left by a holder of the same name (an attempt whose
// process died holding it, now redelivered) is taken over at once. The
// returned unlock releases it; it may be called more than once, from any
// goroutine.
//
// The lock is a key created only if absent, renewed every lockRenew while
// held, and deleted at the revision of the last renewal, so an unlock never
// deletes a later holder's lock. A waiter watches the key and tries again
// as soon as it is deleted. A holder that dies stops renewing, and the
// bucket drops the key within LockTTL.
func (r *Resources) Lock(ctx context.Context, name, holder string, wait time.Duration) (unlock func(), err error) {
	key := lockKey(name)
	// The value names the holder and this call, so a create whose answer
	// was lost can be recognised as ours.
	value := []byte(holder + " #" + randomToken())
	deadline := time.Now().Add(wait)
	var watch jetstream.KeyWatcher
	defer func() {
		if watch != nil {
			_ = watch.Stop()
		}
	}()
	for {
		rev, err := r.Locks.Create(ctx, key, value)
		if err == nil {
			return r.holdLock(ctx, key, value, rev), nil
		}
		if held(err) {
			// Ours from before (the same holder, dead since)? Take it over.
			if e, gerr := r.Locks.Get(ctx, key); gerr == nil {
				if lockOwner(e.Value()) == holder {
					if rev, uerr := r.Locks.Update(ctx, key, value, e.Revision()); uerr == nil {
						return r.holdLock(ctx, key, value, rev), nil
					}
				}
			}
		}
		if !held(err) {
			// The create may have been stored although its answer was lost:
			// then the lock is ours, and nobody would release it.
			r.releaseIfOurs(ctx, key, value)
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			by := "another holder"
			if e, err := r.Locks.Get(ctx, key); err == nil {
				by = lockOwner(e.Value())
			}
			return nil, fmt.Errorf("%w: %s is held by %s", ErrLocked, name, by)
		}
		if watch == nil {
			// From now on a release wakes this waiter at once; it may have
			// come before the watch began, so try again first.
			if watch, err = r.Locks.Watch(ctx, key, jetstream.UpdatesOnly()); err != nil {
				watch = nil
				if !sleep(ctx, min(lockRecheck/10, left)) {
					return nil, ctx.Err()
				}
			}
			continue
		}
		if !waitRelease(ctx, watch, min(lockRecheck, left)) && ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
}

// lockOwner is the holder named in a lock's value ("<holder> #<token>").
func lockOwner(value []byte) string {
	owner, _, _ := strings.Cut(string(value), " #")
	return owner
}

// lockKey is the key of the lock called name: any name is a valid key.
func lockKey(name string) string { return "lock." + hex.EncodeToString([]byte(name)) }

// holdLock renews the lock made at rev until the returned unlock, which
// releases it once.
func (r *Resources) holdLock(ctx context.Context, key string, value []byte, rev uint64) func() {
	var mu sync.Mutex // rev
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(r.lockRenew)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			mu.Lock()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.lockRenew)
			next, err := r.Locks.Update(rctx, key, value, rev)
			if err != nil && held(err) {
				// A renewal whose answer was lost moved the revision on:
				// still ours if the key holds our value.
				if e, gerr := r.Locks.Get(rctx, key); gerr == nil && string(e.Value()) == string(value) {
					next, err = r.Locks.Update(rctx, key, value, e.Revision())
				}
			}
			cancel()
			if err == nil {
				rev = next
			}
			mu.Unlock()
			if err != nil && held(err) {
				return // lost (lapsed and taken): nothing left to renew
			}
		}
	}()
	var once sync.Once
	if r.abandonLocks != nil {
		r.abandonLocks(func() { once.Do(func() { close(stop); <-stopped }) })
	}
	return func() {
		once.Do(func() {
			close(stop)
			<-stopped
			// Release even when ctx is done: the next holder would otherwise
			// wait for the TTL.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			mu.Lock()
			_ = r.Locks.Delete(dctx, key, jetstream.LastRevision(rev))
			mu.Unlock()
		})
	}
}

// releaseIfOurs deletes the lock if it holds value.
func (r *Resources) releaseIfOurs(ctx context.Context, key string, value []byte) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if e, err := r.Locks.Get(dctx, key); err == nil && string(e.Value()) == string(value) {
		_ = r.Locks.Delete(dctx, key, jetstream.LastRevision(e.Revision()))
	}
}

// waitRelease waits up to d for the watched lock to be deleted; it reports
// whether it was.
func waitRelease(ctx context.Context, w jetstream.KeyWatcher, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return false
			}
			if e != nil && (e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge) {
				return true
			}
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func randomToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
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
