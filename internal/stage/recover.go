package stage

import (
	"log/slog"
	"runtime/debug"

	"github.com/nats-io/nats.go/micro"
)

// Recover logs a panic, with its stack, instead of letting it end the
// process. Defer it first in a callback NATS runs (a subscription's
// handler) or in a goroutine of the service's own: a bug met by one
// message must not take down the stage for every other.
func Recover(log *slog.Logger, where string) {
	if v := recover(); v != nil {
		log.Error("panic recovered", "in", where, "panic", v, "stack", string(debug.Stack()))
	}
}

// Endpoint is h, with a panic logged and answered as an error (500).
func Endpoint(log *slog.Logger, where string, h micro.HandlerFunc) micro.HandlerFunc {
	return func(r micro.Request) {
		defer func() {
			if v := recover(); v != nil {
				log.Error("panic recovered", "in", where, "panic", v, "stack", string(debug.Stack()))
				_ = r.Error("500", "internal error", nil)
			}
		}()
		h(r)
	}
}
