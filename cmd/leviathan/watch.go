package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
)

// outcome is how an attempt ended.
type outcome struct {
	final events.Envelope
	seq   uint64 // stream sequence of the final event
	prURL string
}

// watchAttempt prints each event of an attempt as it happens and returns
// at its terminal event. It reads the stream from the start of the
// attempt's subjects, so it misses nothing that happened before it began.
func watchAttempt(ctx context.Context, js jetstream.JetStream, attemptID string, out io.Writer) (*outcome, error) {
	cons, err := js.OrderedConsumer(ctx, "LEVIATHAN_EVENTS", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.AttemptSubjects(attemptID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", attemptID, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, err
	}
	defer it.Stop()
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	var start time.Time
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("attempt %s did not finish: %w", attemptID, ctx.Err())
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil, err
			}
			continue
		}
		env, err := events.Decode(msg.Data())
		if err != nil {
			// The bare request body a user published.
			md, _ := msg.Metadata()
			fmt.Fprintf(out, "  %-20s (bare request body)\n", events.AttemptRequested)
			if md != nil {
				start = md.Timestamp
			}
			continue
		}
		if start.IsZero() {
			start = env.Timestamp
		}
		fmt.Fprintf(out, "  %7s  %-20s %s\n", env.Timestamp.Sub(start).Round(time.Millisecond), env.EventType, describe(env))
		if env.EventType.Terminal() {
			md, _ := msg.Metadata()
			o := &outcome{final: env}
			if md != nil {
				o.seq = md.Sequence.Stream
			}
			var s events.Succeeded
			if env.EventType == events.AttemptSucceeded && env.DecodePayload(&s) == nil && s.PRURL != nil {
				o.prURL = *s.PRURL
			}
			return o, nil
		}
	}
}

// describe is the one-line detail of an event.
func describe(env events.Envelope) string {
	switch env.EventType {
	case events.AttemptRejected:
		var p events.Rejected
		_ = env.DecodePayload(&p)
		return fmt.Sprintf("field %s: %s", p.Field, p.Reason)
	case events.AttemptCreated:
		var p events.Created
		_ = env.DecodePayload(&p)
		return fmt.Sprintf("task %s on %s (%s)", p.TaskID, p.RepoURL, p.Branch)
	case events.RepoFetched:
		var p events.Fetched
		_ = env.DecodePayload(&p)
		return fmt.Sprintf("%s at %.12s, %d bytes (%s)", p.Strategy, p.BaseCommit, p.BytesFetched, p.Snapshot)
	case events.BacklogEdited, events.BacklogUnchanged:
		var p events.Edited
		_ = env.DecodePayload(&p)
		if p.Note != "" {
			return p.Note
		}
		return fmt.Sprintf("%s %.12s -> %.12s", p.Path, p.OldBlob, p.NewBlob)
	case events.BranchPushed:
		var p events.Pushed
		_ = env.DecodePayload(&p)
		if p.AdoptedPR != 0 {
			return fmt.Sprintf("nothing pushed: the task has open pull request #%d on %s", p.AdoptedPR, p.BranchName)
		}
		return fmt.Sprintf("%s at %.12s (%s)", p.BranchName, p.CommitSHA, strings.Join(p.ChangedPaths, ", "))
	case events.RequestDuplicate:
		var p events.Duplicate
		_ = env.DecodePayload(&p)
		return p.Reason
	case events.PRCreated:
		var p events.PROpened
		_ = env.DecodePayload(&p)
		reused := ""
		if p.Reused {
			reused = ", reused"
		}
		return fmt.Sprintf("#%d %s (%s%s)", p.PRNumber, p.PRURL, p.State, reused)
	case events.AttemptSucceeded:
		var p events.Succeeded
		_ = env.DecodePayload(&p)
		return p.Note
	case events.AttemptFailed:
		var p events.Failed
		_ = env.DecodePayload(&p)
		plural := "deliveries"
		if p.Deliveries == 1 {
			plural = "delivery"
		}
		return fmt.Sprintf("%s in %s after %d %s: %s", p.FailureType, p.Stage, p.Deliveries, plural, p.ErrorSummary)
	}
	return ""
}
