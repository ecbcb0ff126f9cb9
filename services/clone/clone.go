// Package clone is the intake and fetch stage: it validates attempt
// requests, claims the attempt id, and fetches the minimum of the target
// repository into the snapshot Object Store.
package clone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// Config configures the clone service.
type Config struct {
	// Git holds the credentials for every target repository. They are
	// sent only as HTTP basic auth.
	Git gitx.Remote
	// Strategy forces a fetch strategy; empty picks the best the server
	// supports.
	Strategy gitx.Strategy
	Logger   *slog.Logger
}

// Service handles attempt.requested.
type Service struct {
	cfg Config
	res *stage.Resources
	pub *stage.Publisher
}

// New returns the clone service.
func New(res *stage.Resources, pub *stage.Publisher, cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg, res: res, pub: pub}
}

// StageConfig is the runner configuration of this stage.
func StageConfig() stage.Config {
	return stage.Config{Name: "clone", Input: events.AttemptRequested}
}

// BaseSnapshot is the Object Store name of an attempt's fetched objects.
func BaseSnapshot(attemptID string) string { return attemptID + "/base.pack" }

// Handle validates, claims and fetches one requested attempt.
func (s *Service) Handle(ctx context.Context, in *stage.Input) error {
	req, err := events.ParseRequest(in.Data, in.Ref.AttemptID)
	if err != nil {
		var ve *events.ValidationError
		if !errors.As(err, &ve) {
			return stage.Fail(events.InvalidRequest, err)
		}
		s.cfg.Logger.Info("request rejected", "attempt", in.Ref.AttemptID, "field", ve.Field, "reason", ve.Reason)
		if err := in.Publish(ctx, events.AttemptRejected, events.Rejected{Ref: in.Ref, Reason: ve.Reason, Field: ve.Field}); err != nil {
			return stage.Retry(err)
		}
		if ve.Secret {
			// The request was stored as published, credential and all:
			// erase it (overwriting it on disk) now that it is answered.
			if err := s.res.Stream.SecureDeleteMsg(ctx, in.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return stage.Retry(fmt.Errorf("erase request holding a credential: %w", err))
			}
		}
		return nil
	}
	in.Ref = req.Ref
	if err := s.res.Claim(ctx, req.AttemptID, in.Seq); err != nil {
		if errors.Is(err, stage.ErrDuplicate) {
			// The attempt already runs from another copy of the request;
			// this copy must not start a second one.
			s.cfg.Logger.Info("duplicate request ignored", "attempt", req.AttemptID, "seq", in.Seq, "err", err)
			return nil
		}
		return stage.Retry(err)
	}
	if err := in.Publish(ctx, events.AttemptCreated, events.Created{
		Ref: req.Ref, AttemptNumber: 1, Status: "created",
		RepoURL: req.Target.RepoURL, Branch: req.Target.Branch, TaskTitle: req.Task.Title,
	}); err != nil {
		return stage.Retry(err)
	}
	if err := in.Publish(ctx, events.AttemptStarted, events.Started{Ref: req.Ref, Status: "running"}); err != nil {
		return stage.Retry(err)
	}

	remote := s.cfg.Git
	remote.URL = req.Target.RepoURL
	snap, err := gitx.Fetch(ctx, remote, req.Target.Branch, events.BacklogPath, gitx.FetchOptions{Strategy: s.cfg.Strategy})
	if err != nil {
		ft, retry := gitx.Classify(err)
		return stage.Classified(err, ft, retry)
	}
	name := BaseSnapshot(req.AttemptID)
	if _, err := s.res.Snapshots.PutBytes(ctx, name, snap.Pack); err != nil {
		return stage.Retry(fmt.Errorf("store snapshot: %w", err))
	}
	return in.Publish(ctx, events.RepoFetched, events.Fetched{
		Ref: req.Ref, BaseCommit: snap.Commit.String(), Strategy: string(snap.Strategy),
		BytesFetched: snap.BytesFetched, Snapshot: name,
	})
}

// Submit validates a request at once and, when it is valid, publishes it
// as attempt.requested. It backs `nats req leviathan.api.submit`.
func (s *Service) Submit(ctx context.Context, body []byte, actor string) events.SubmitResponse {
	req, err := events.ParseRequest(body, "")
	if err != nil {
		var ve *events.ValidationError
		if errors.As(err, &ve) {
			return events.SubmitResponse{Error: ve.Reason, Field: ve.Field}
		}
		return events.SubmitResponse{Error: err.Error()}
	}
	if _, err := s.res.Attempts.Get(ctx, req.AttemptID); err == nil {
		return events.SubmitResponse{AttemptID: req.AttemptID, Error: "attempt id already used", Field: "attempt_id"}
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return events.SubmitResponse{AttemptID: req.AttemptID, Error: "cannot check attempt id: " + err.Error()}
	}
	env, err := events.New(events.AttemptRequested, actor, req.Ref, req, s.pub.Clock())
	if err != nil {
		return events.SubmitResponse{Error: err.Error()}
	}
	data, _ := json.Marshal(env)
	ack, err := s.res.JS.Publish(ctx, env.Subject(), data, jetstream.WithMsgID(env.EventID))
	if err != nil {
		return events.SubmitResponse{AttemptID: req.AttemptID, Error: "publish: " + err.Error()}
	}
	status := "accepted"
	if ack.Duplicate {
		status = "duplicate"
	}
	return events.SubmitResponse{AttemptID: req.AttemptID, Status: status}
}
