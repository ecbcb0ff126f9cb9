package stage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/natstest"
)

// TestLockIsExclusive: holders of one lock never overlap, whatever their
// number; another name is another lock.
func TestLockIsExclusive(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	var inside, overlaps, done atomic.Int32
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			for range 8 {
				unlock, err := res.Lock(ctx, "target a", fmt.Sprint("worker ", g), 30*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) > 1 {
					overlaps.Add(1)
				}
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				done.Add(1)
				unlock()
			}
		})
	}
	// Meanwhile another name is free.
	unlock, err := res.Lock(ctx, "target b", "other", time.Second)
	if err != nil {
		t.Fatalf("another name waited for the first: %v", err)
	}
	unlock()
	wg.Wait()
	if overlaps.Load() != 0 || done.Load() != 48 {
		t.Fatalf("%d overlaps, %d of 48 sections", overlaps.Load(), done.Load())
	}
}

// TestLockWaitsThenGivesUp: a second holder waits, is told who holds the
// lock when the wait runs out, and gets it once it is released.
func TestLockWaitsThenGivesUp(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	unlock, err := res.Lock(ctx, "demo", "attempt a-1", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = res.Lock(ctx, "demo", "attempt a-2", 100*time.Millisecond)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "held by attempt a-1") || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("second holder after %v: %v", time.Since(start), err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		unlock()
	}()
	unlock2, err := res.Lock(ctx, "demo", "attempt a-2", 5*time.Second)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	unlock2()
	unlock2() // twice is harmless
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := res.Lock(cctx, "demo", "x", time.Second); err == nil {
		t.Fatal("a cancelled context took the lock")
	}
}

// TestStaleUnlock: a holder whose lock expired (here: purged, as the
// bucket's TTL would) does not release the next holder's lock.
func TestStaleUnlock(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	stale, err := res.Lock(ctx, "demo", "slow holder", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := res.Locks.Keys(ctx)
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v: %v", keys, err)
	}
	if err := res.Locks.Purge(ctx, keys[0]); err != nil {
		t.Fatal(err)
	}
	next, err := res.Lock(ctx, "demo", "next holder", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stale()
	if _, err := res.Lock(ctx, "demo", "third", 50*time.Millisecond); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "next holder") {
		t.Fatalf("the stale unlock released the next holder's lock: %v", err)
	}
	next()
}

// TestLockWaiterWakesOnRelease: a waiter takes the lock as soon as it is
// released (it watches the key), not at its next periodic try, so a
// replica that releases and asks again at once does not starve the other.
func TestLockWaiterWakesOnRelease(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	for range 3 {
		unlock, err := res.Lock(ctx, "demo", "first", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan time.Time, 1)
		go func() {
			unlock2, err := res.Lock(ctx, "demo", "second", 10*time.Second)
			if err != nil {
				t.Error(err)
			}
			got <- time.Now()
			unlock2()
		}()
		time.Sleep(150 * time.Millisecond) // the waiter is watching by now
		released := time.Now()
		unlock()
		if took := (<-got).Sub(released); took > lockRecheck/2 {
			t.Fatalf("the waiter took the lock %v after its release, want well under the %v recheck", took, lockRecheck)
		}
	}
}

// TestReleaseIfOurs: after a create whose answer was lost, the lock is
// released only if the stored value is this call's.
func TestReleaseIfOurs(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	if _, err := res.Locks.Create(ctx, "lock.k", []byte("me #1")); err != nil {
		t.Fatal(err)
	}
	res.releaseIfOurs(ctx, "lock.k", []byte("someone #2"))
	if _, err := res.Locks.Get(ctx, "lock.k"); err != nil {
		t.Fatalf("another's lock was released: %v", err)
	}
	res.releaseIfOurs(ctx, "lock.k", []byte("me #1"))
	if _, err := res.Locks.Get(ctx, "lock.k"); err == nil {
		t.Fatal("our own lock was kept")
	}
}

// shortLocks is a stream and buckets whose locks lapse after ttl.
func shortLocks(t *testing.T, ttl time.Duration) *Resources {
	t.Helper()
	_, js := natstest.Connect(t, natstest.Run(t))
	res, err := Ensure(context.Background(), js, ResourceConfig{LockTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestLockRenewedWhileHeldAndLapsesWhenTheHolderDies: a live holder keeps
// its lock for many TTLs; when it dies (stops renewing), another takes the
// lock within about a TTL; and the same owner takes over its own dead lock
// at once (a redelivered attempt re-enters its lock).
func TestLockRenewedWhileHeldAndLapsesWhenTheHolderDies(t *testing.T) {
	const ttl = time.Second
	res := shortLocks(t, ttl)
	ctx := context.Background()
	var die func()
	res.abandonLocks = func(d func()) { die = d }

	unlock, err := res.Lock(ctx, "repo", "attempt a-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * ttl) // renewed meanwhile
	if _, err := res.Lock(ctx, "repo", "attempt b-1", 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("after 3 TTLs of a live holder: %v, want ErrLocked", err)
	}

	// The holder dies: the same attempt, redelivered, re-enters at once.
	die()
	again, err := res.Lock(ctx, "repo", "attempt a-1", 0)
	if err != nil {
		t.Fatalf("the same attempt after its holder died: %v", err)
	}
	again()
	unlock() // the dead holder's unlock finds nothing of its own

	// Another attempt waits at most about a TTL for a dead holder.
	if _, err := res.Lock(ctx, "repo", "attempt a-2", 0); err != nil {
		t.Fatal(err)
	}
	die()
	start := time.Now()
	b, err := res.Lock(ctx, "repo", "attempt b-2", 10*ttl)
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	b()
	t.Logf("a dead holder's lock passed on after %v (TTL %v)", time.Since(start).Round(10*time.Millisecond), ttl)
}

// TestLockSurvivesALostRenewalAnswer: a renewal the server applied but
// whose answer was lost (the revision moved on without the holder
// knowing) does not make the holder lose the lock.
func TestLockSurvivesALostRenewalAnswer(t *testing.T) {
	const ttl = time.Second
	res := shortLocks(t, ttl)
	ctx := context.Background()
	unlock, err := res.Lock(ctx, "repo", "attempt a-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	key := lockKey("repo")
	e, err := res.Locks.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	// The "lost answer": the same value written at the current revision.
	if _, err := res.Locks.Update(ctx, key, e.Value(), e.Revision()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * ttl)
	if _, err := res.Lock(ctx, "repo", "attempt b-1", 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("after a lost renewal answer another holder got the lock: %v", err)
	}
}
