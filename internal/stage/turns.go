package stage

import (
	"context"
	"time"
)

// Turns hands out turns at something every replica shares (a forge
// account's mutating calls), one at a time, with the lock of Lock. A turn
// may be held on for a while after its work (the pause the next turn must
// wait), measured by the holder's own timer, so the replicas' clocks never
// need to agree. Its Take satisfies forge.Turns.
type Turns struct {
	res    *Resources
	name   string
	holder string
}

// Turns returns the turns called name; holder names this process to
// whoever waits.
func (r *Resources) Turns(name, holder string) *Turns {
	return &Turns{res: r, name: name, holder: holder}
}

// Take waits up to wait for a turn. done ends it after hold (at once when
// hold is 0); it must be called once. The turn is renewed while held, so
// hold may be long (a rate limit's wait); a holder that dies holding a
// turn loses it within LockTTL.
func (t *Turns) Take(ctx context.Context, wait time.Duration) (done func(hold time.Duration), err error) {
	unlock, err := t.res.Lock(ctx, "turns."+t.name, t.holder, wait)
	if err != nil {
		return nil, err
	}
	return func(hold time.Duration) {
		if hold <= 0 {
			unlock()
			return
		}
		time.AfterFunc(hold, unlock)
	}, nil
}

// Pause holds every sharer's calls, reads included, for d: a rate limit met
// here is a rate limit of the whole account. It is a second lock, held by
// this process for d by its own timer (renewed while it lives, so it lapses
// within LockTTL if it dies). A pause another holder has on already stands;
// each replica also holds its own calls for the wait it was told.
func (t *Turns) Pause(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	unlock, err := t.res.Lock(ctx, "pause."+t.name, t.holder, 0)
	if err != nil {
		return
	}
	time.AfterFunc(d, unlock)
}

// Paused reports whether another holder's pause is on. Without an answer
// from NATS it reports none: the forge's next refusal still holds this one.
func (t *Turns) Paused(ctx context.Context) bool {
	e, err := t.res.Locks.Get(ctx, lockKey("pause."+t.name))
	if err != nil {
		return false
	}
	return lockOwner(e.Value()) != t.holder
}
