package stage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestTransientNATS(t *testing.T) {
	unavailable := &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}
	for err, want := range map[error]bool{
		fmt.Errorf("consumer: %w", unavailable):                                  true,
		fmt.Errorf("stream info: %w", nats.ErrTimeout):                           true,
		nats.ErrNoResponders:                                                     true,
		context.DeadlineExceeded:                                                 true,
		&jetstream.APIError{Code: 404, ErrorCode: 10014, Description: "missing"}: false,
		jetstream.ErrConsumerNotFound:                                            false,
		ErrNotSetUp:                                                              false,
		errors.New("permissions violation"):                                      false,
		nil:                                                                      false,
	} {
		if got := TransientNATS(err); got != want {
			t.Errorf("TransientNATS(%v) = %v, want %v", err, got, want)
		}
	}
	// Retried until it works; a refusal ends it at once.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	tries := 0
	err := RetryTransient(context.Background(), log, "test", func() error {
		if tries++; tries < 3 {
			return unavailable
		}
		return nil
	})
	if err != nil || tries != 3 {
		t.Fatalf("after two 503s: %v after %d tries", err, tries)
	}
	tries = 0
	if err := RetryTransient(context.Background(), log, "test", func() error { tries++; return ErrNotSetUp }); !errors.Is(err, ErrNotSetUp) || tries != 1 {
		t.Fatalf("a refusal: %v after %d tries", err, tries)
	}
}
