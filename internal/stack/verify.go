package stack

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector"
	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// ChainCheck is what VerifyChain found.
type ChainCheck struct {
	// From and To are the stream sequences compared; Links how many links
	// the projector recorded in them.
	From, To uint64
	Links    int
	// Break is the first broken link, nil when there is none; EventID and
	// EventType name the event at its sequence while the stream has it.
	Break              *graph.Break
	EventID, EventType string
}

// VerifyChain replays the stream and compares the hash chain of the
// replay with recorded, the links a running projector recorded (its
// GET /v1/events/chain), up to the newest of them. Where the stream's
// first messages have aged out, the replay starts from the hash recorded
// before them and the comparison from the stream's first sequence.
func VerifyChain(ctx context.Context, js jetstream.JetStream, recorded []graph.Link, logger *slog.Logger) (ChainCheck, error) {
	var c ChainCheck
	res, err := stage.Open(ctx, js)
	if err != nil {
		return c, err
	}
	info, err := res.Stream.Info(ctx)
	if err != nil {
		return c, fmt.Errorf("stream info: %w", err)
	}
	if len(recorded) == 0 {
		return c, nil
	}
	c.From, c.To = max(info.State.FirstSeq, 1), recorded[len(recorded)-1].Seq
	var start *graph.Hash
	if i := sort.Search(len(recorded), func(i int) bool { return recorded[i].Seq >= c.From }); i > 0 {
		start = &recorded[i-1].Hash
	}
	g, err := projector.Replay(ctx, res, start, logger)
	if err != nil {
		return c, err
	}
	for _, l := range recorded {
		if l.Seq >= c.From && l.Seq <= c.To {
			c.Links++
		}
	}
	_, n, _ := g.ChainHead()
	c.Break = graph.FirstBreak(recorded, g.Links(0, n), c.From, c.To)
	if c.Break != nil {
		if msg, err := res.Stream.GetMsg(ctx, c.Break.Seq); err == nil {
			if env, err := events.Decode(msg.Data); err == nil {
				c.EventID, c.EventType = env.EventID, string(env.EventType)
			} else if _, t, err := events.ParseSubject(msg.Subject); err == nil {
				c.EventID, c.EventType = "seq-"+strconv.FormatUint(c.Break.Seq, 10), string(t) // a bare request
			}
		}
	}
	return c, nil
}
