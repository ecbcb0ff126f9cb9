package stage

import (
	"context"
	"encoding/hex"
	"strconv"
	"time"
)

// Turns hands out turns at something every replica shares (a forge
// token's mutating calls), one at a time, and remembers when the last turn's
// work ended, wherever it ran: a lock (Lock) and a key beside it in the
// leviathan-locks bucket. Its Take satisfies forge.Turns.
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

// Take waits up to wait for a turn. It returns when the last turn's work
// ended (zero when unknown: none within the bucket's TTL) and done, which
// ends this turn, recording callEnd unless it is zero.
func (t *Turns) Take(ctx context.Context, wait time.Duration) (last time.Time, done func(callEnd time.Time), err error) {
	unlock, err := t.res.Lock(ctx, "turns."+t.name, t.holder, wait)
	if err != nil {
		return time.Time{}, nil, err
	}
	key := "last." + hex.EncodeToString([]byte(t.name))
	if e, err := t.res.Locks.Get(ctx, key); err == nil {
		if ns, err := strconv.ParseInt(string(e.Value()), 10, 64); err == nil {
			last = time.Unix(0, ns)
		}
	}
	return last, func(callEnd time.Time) {
		defer unlock()
		if callEnd.IsZero() {
			return
		}
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = t.res.Locks.Put(pctx, key, []byte(strconv.FormatInt(callEnd.UnixNano(), 10)))
	}, nil
}
