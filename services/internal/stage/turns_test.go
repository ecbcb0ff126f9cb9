package stage

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestTurns: one turn at a time; each turn learns when the last call
// ended, wherever it ran; a turn given up without a call changes nothing.
func TestTurns(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	a, b := res.Turns("forge/api.github.com/token", "replica a"), res.Turns("forge/api.github.com/token", "replica b")

	last, done, err := a.Take(ctx, time.Second)
	if err != nil || !last.IsZero() {
		t.Fatalf("first turn: last %v, %v", last, err)
	}
	if _, _, err := b.Take(ctx, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second turn while the first runs: %v", err)
	}
	end := time.Now().Add(-time.Second).Round(0)
	done(end)

	last, done, err = b.Take(ctx, time.Second)
	if err != nil || !last.Equal(end) {
		t.Fatalf("next turn: last %v, want %v (%v)", last, end, err)
	}
	done(time.Time{}) // no call made
	if last, done, err = a.Take(ctx, time.Second); err != nil || !last.Equal(end) {
		t.Fatalf("after a turn without a call: last %v, want %v (%v)", last, end, err)
	}
	done(time.Time{})

	// Another name is another sequence of turns.
	if last, done, err := res.Turns("forge/other/token", "c").Take(ctx, 50*time.Millisecond); err != nil || !last.IsZero() {
		t.Fatalf("another name: %v %v", last, err)
	} else {
		done(time.Time{})
	}
}
