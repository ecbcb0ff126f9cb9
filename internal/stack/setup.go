package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/backlogedit"
	"github.com/leviathan-dev/leviathan/services/clone"
	"github.com/leviathan-dev/leviathan/services/pr"
	"github.com/leviathan-dev/leviathan/services/push"
)

// stageConfigs are the runner configurations of the four stages, in flow
// order: the set-up step makes their consumers from them.
func stageConfigs() []stage.Config {
	return []stage.Config{clone.StageConfig(), backlogedit.StageConfig(), push.StageConfig(), pr.StageConfig()}
}

// Setup is the one-shot set-up step (`leviathan setup`, the overlays'
// Job): it creates or updates the stream, the buckets and every stage's
// durable consumer, with replicas of each. It is idempotent. The services
// then need no right to manage JetStream: they bind to what it made.
func Setup(ctx context.Context, js jetstream.JetStream, replicas int, logger *slog.Logger) error {
	if err := stage.Setup(ctx, js, stage.ResourceConfig{Replicas: replicas}); err != nil {
		return err
	}
	logger.Info("set up", "stream", stage.StreamName, "replicas", replicas,
		"buckets", []string{stage.SnapshotBucket, stage.ProjectorBucket, stage.AttemptsBucket, stage.ConfigBucket, stage.LocksBucket})
	for _, cfg := range stageConfigs() {
		if _, err := stage.SetupConsumer(ctx, js, cfg, replicas); err != nil {
			return fmt.Errorf("consumer %s: %w", cfg.Name, err)
		}
		logger.Info("set up", "consumer", cfg.Name)
	}
	return nil
}

// openWhenSetUp binds to the resources the set-up step made, and to the
// durable consumer of stage (none when ""), waiting with backoff (and
// saying so) while NATS is unreachable or the set-up step has not run.
func openWhenSetUp(ctx context.Context, js jetstream.JetStream, stageName string, logger *slog.Logger) (*stage.Resources, error) {
	delay := 250 * time.Millisecond
	for {
		res, err := stage.Open(ctx, js)
		if err == nil && stageName != "" {
			if _, cerr := js.Consumer(ctx, stage.StreamName, stageName); errors.Is(cerr, jetstream.ErrConsumerNotFound) {
				err = fmt.Errorf("consumer %s: %w", stageName, stage.ErrNotSetUp)
			} else {
				err = cerr
			}
		}
		if err == nil {
			return res, nil
		}
		if nc := js.Conn(); nc.IsClosed() {
			// The client gave up (refused credentials, say): no use waiting.
			if last := nc.LastError(); last != nil {
				return nil, last
			}
			return nil, err
		}
		logger.Warn("waiting for the NATS resources", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second) // a cluster back from an election is used within seconds
	}
}
