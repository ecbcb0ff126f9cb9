package stage

import (
	"context"
	"fmt"
	"time"

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

// Clock returns the publisher's current time.
func (p *Publisher) Clock() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}
