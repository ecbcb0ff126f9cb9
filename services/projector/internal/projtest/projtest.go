// Package projtest holds what the projector's tests and its API's tests
// share: an embedded JetStream server with the stream, and publishing
// events into it as the services do.
package projtest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/natstest"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// Quiet is a logger that drops everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Stream runs an embedded JetStream server with the shared resources.
func Stream(t *testing.T) *stage.Resources {
	t.Helper()
	_, js := natstest.Connect(t, natstest.Run(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := stage.Ensure(ctx, js, stage.ResourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// Publish publishes envelopes with their event id as Nats-Msg-Id, as the
// services do, and returns how many JetStream dropped as duplicates.
func Publish(t *testing.T, res *stage.Resources, envs []events.Envelope) int {
	t.Helper()
	var futs []jetstream.PubAckFuture
	for _, e := range envs {
		data, _ := e.Marshal()
		f, err := res.JS.PublishAsync(e.Subject(), data, jetstream.WithMsgID(e.EventID))
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	dups := 0
	for _, f := range futs {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				dups++
			}
		case err := <-f.Err():
			t.Fatal(err)
		case <-time.After(20 * time.Second):
			t.Fatal("no publish ack")
		}
	}
	return dups
}
