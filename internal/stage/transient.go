package stage

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TransientNATS reports whether err is NATS or JetStream saying "not now":
// a request that timed out or found no responder, a connection between
// servers, or JetStream unavailable while its cluster elects a leader
// (503). Trying again later helps; a refusal (permissions, a missing
// resource, a bad request) is not one of these.
func TransientNATS(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return false
	case errors.As(err, &apiErr):
		return apiErr.Code == 503 || apiErr.Code == 408
	}
	for _, e := range []error{nats.ErrTimeout, context.DeadlineExceeded, nats.ErrNoResponders, nats.ErrConnectionReconnecting,
		nats.ErrDisconnected, jetstream.ErrNoStreamResponse, jetstream.ErrNoHeartbeat} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// RetryTransient runs f until it returns nil, an error that is not
// TransientNATS, or ctx ends, waiting longer between tries (to 5 s) and
// logging each: a service starting while NATS changes leaders waits for
// it, as it waits for NATS itself, instead of exiting.
func RetryTransient(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	wait := 250 * time.Millisecond
	for {
		err := f()
		if err == nil || !TransientNATS(err) || ctx.Err() != nil {
			return err
		}
		log.Warn("retrying", "what", what, "in", wait, "err", err)
		if !sleep(ctx, wait) {
			return err
		}
		wait = min(2*wait, 5*time.Second)
	}
}
