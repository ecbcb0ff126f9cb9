package stage

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
)

// Publisher publishes events into the stream, each with its event id as
// Nats-Msg-Id so that a republished event is dropped by JetStream.
// It is safe for concurrent use.
type Publisher struct {
	JS    jetstream.JetStream
	Actor string           // actor_id of every event, "<service>-<instance>"
	Now   func() time.Time // clock; time.Now when nil
}

// Publish builds the envelope of an event and publishes it, waiting for the
// stream's acknowledgement.
func (p *Publisher) Publish(ctx context.Context, t events.Type, ref events.Ref, payload any) (events.Envelope, error) {
	env, err := events.New(t, p.Actor, ref, payload, p.Clock())
	if err != nil {
		return env, err
	}
	return env, p.PublishEnvelope(ctx, env)
}

// PublishEnvelope publishes a ready envelope.
func (p *Publisher) PublishEnvelope(ctx context.Context, env events.Envelope) error {
	data, err := env.Marshal()
	if err != nil {
		return err
	}
	if _, err := p.JS.Publish(ctx, env.Subject(), data, jetstream.WithMsgID(env.EventID)); err != nil {
		return fmt.Errorf("publish %s for %s: %w", env.EventType, env.AttemptID, err)
	}
	return nil
}

// PublishAsync builds the envelope of an event and sends it without
// waiting: wait waits for the stream's acknowledgement, and must be called
// before anything that depends on the event being stored. A connection's
// messages are stored in the order sent, so events published after it
// follow it in the stream.
func (p *Publisher) PublishAsync(t events.Type, ref events.Ref, payload any) (wait func(context.Context) error, err error) {
	env, err := events.New(t, p.Actor, ref, payload, p.Clock())
	if err != nil {
		return nil, err
	}
	data, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	ack, err := p.JS.PublishAsync(env.Subject(), data, jetstream.WithMsgID(env.EventID))
	if err != nil {
		return nil, fmt.Errorf("publish %s for %s: %w", env.EventType, env.AttemptID, err)
	}
	return func(ctx context.Context) error {
		if err := waitAcks(ctx, ack); err != nil {
			return fmt.Errorf("publish %s for %s: %w", env.EventType, env.AttemptID, err)
		}
		return nil
	}, nil
}

// ackWait bounds a wait for the acks of asynchronous publishes, as a
// synchronous publish is bounded by the JetStream timeout.
const ackWait = 10 * time.Second

// waitAcks waits for every ack, up to ackWait in all.
func waitAcks(ctx context.Context, acks ...jetstream.PubAckFuture) error {
	t := time.NewTimer(ackWait)
	defer t.Stop()
	for _, a := range acks {
		select {
		case <-a.Ok():
		case err := <-a.Err():
			return err
		case <-t.C:
			return nats.ErrTimeout
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Clock returns the publisher's current time.
func (p *Publisher) Clock() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}
