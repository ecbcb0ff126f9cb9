package stage

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/forge"
)

// The turns satisfy the forge's interfaces.
var (
	_ forge.Turns  = (*Turns)(nil)
	_ forge.Pauser = (*Turns)(nil)
)

// TestTurns: one turn at a time; a turn held on after its work keeps the
// next one waiting that long, by the holder's timer; another name is
// another sequence of turns.
func TestTurns(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	a, b := res.Turns("forge/api.github.com/token", "replica a"), res.Turns("forge/api.github.com/token", "replica b")

	done, err := a.Take(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Take(ctx, 50*time.Millisecond); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "replica a") {
		t.Fatalf("a second turn while the first runs: %v", err)
	}
	ended := time.Now()
	done(300 * time.Millisecond) // the pause after a call
	done2, err := b.Take(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(ended); waited < 300*time.Millisecond {
		t.Fatalf("the next turn began %v after the call, want at least the 300ms pause", waited)
	}
	done2(0)
	start := time.Now()
	done3, err := a.Take(ctx, time.Second) // released at once
	if err != nil || time.Since(start) > 200*time.Millisecond {
		t.Fatalf("after a turn ended at once: %v after %v", err, time.Since(start))
	}
	done3(0)

	if done, err := res.Turns("forge/other/token", "c").Take(ctx, 50*time.Millisecond); err != nil {
		t.Fatalf("another name: %v", err)
	} else {
		done(0)
	}
}
