// Package clone is the intake and fetch stage: it validates attempt
// requests, claims the attempt id, and fetches the minimum of the target
// repository into the snapshot Object Store.
package clone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// Config configures the clone service.
type Config struct {
	// Git holds the credentials for every target repository. They are
	// sent only as HTTP basic auth.
	Git gitx.Remote
	// URLs says which repository URLs a request may name (the forge's
	// own host and the operator's allowed hosts); required.
	URLs *egress.Policy
	// Strategy forces a fetch strategy; empty picks the best the server
	// supports.
	Strategy gitx.Strategy
	Logger   *slog.Logger
	// Metrics counts duplicate requests; none when nil.
	Metrics *stage.Metrics
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
// Its deadline is longer than the other stages': a shallow fetch of a
// large repository (when the server has no partial clone) takes a while.
func StageConfig() stage.Config {
	return stage.Config{Name: "clone", Input: events.AttemptRequested, Deadline: 10 * time.Minute}
}

// BaseSnapshot is the Object Store name of an attempt's fetched objects.
func BaseSnapshot(attemptID string) string { return attemptID + "/base.pack" }

// Handle validates, claims and fetches one requested attempt.
func (s *Service) Handle(ctx context.Context, in *stage.Input) error {
	req, rej := s.check(in.Data, in.Ref.AttemptID)
	if rej != nil {
		s.cfg.Logger.Info("request rejected", "attempt", in.Ref.AttemptID, "field", rej.Field, "reason", rej.Reason)
		in.Ref = events.RejectedRef(in.Ref, in.Data)
		if err := in.Publish(ctx, events.AttemptRejected, events.Rejected{Ref: in.Ref, Reason: rej.Reason, Field: rej.Field}); err != nil {
			return stage.Retry(err)
		}
		if rej.Secret {
			// The request was stored as published, credential and all:
			// erase it (overwriting it on disk) now that it is answered.
			if err := s.res.Stream.SecureDeleteMsg(ctx, in.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return stage.Retry(fmt.Errorf("erase request holding a credential: %w", err))
			}
		}
		return nil
	}
	in.Ref = req.Ref
	// The fetch begins while the attempt id is claimed, and goes on while
	// the stream stores attempt.created and attempt.started: both are
	// stored before anything else of the attempt is published, its
	// failure included. A duplicate's fetch is cancelled and dropped.
	fctx, cancelFetch := context.WithCancel(ctx)
	defer cancelFetch()
	var snap *gitx.Snapshot
	var fetchErr error
	var fetching sync.WaitGroup
	fetching.Go(func() {
		remote := s.cfg.Git
		remote.URL = req.Target.RepoURL
		snap, fetchErr = gitx.Fetch(fctx, remote, req.Target.Branch, events.BacklogPath, gitx.FetchOptions{Strategy: s.cfg.Strategy})
	})
	stopFetch := func() {
		cancelFetch()
		fetching.Wait()
	}
	if err := s.res.Claim(ctx, req.AttemptID, in.Seq); err != nil {
		stopFetch()
		if errors.Is(err, stage.ErrDuplicate) {
			// The attempt already runs from another copy of the request;
			// this copy must not start a second one. Say so where the
			// user looks (request.duplicate: the control plane's
			// failures), not in the attempt's own lifecycle.
			s.cfg.Logger.Info("duplicate request ignored", "attempt", req.AttemptID, "seq", in.Seq, "err", err)
			return s.duplicate(ctx, req, in.Seq)
		}
		return stage.Retry(err)
	}
	created, err := in.PublishAsync(events.AttemptCreated, events.Created{
		Ref: req.Ref, AttemptNumber: 1, Status: "created",
		RepoURL: req.Target.RepoURL, Branch: req.Target.Branch, TaskTitle: req.Task.Title,
	})
	if err != nil {
		stopFetch()
		return stage.Retry(err)
	}
	started, err := in.PublishAsync(events.AttemptStarted, events.Started{Ref: req.Ref, Status: "running"})
	if err != nil {
		stopFetch()
		return stage.Retry(err)
	}
	fetching.Wait()
	for _, wait := range []func(context.Context) error{created, started} {
		if werr := wait(ctx); werr != nil {
			return stage.Retry(werr)
		}
	}
	if fetchErr != nil {
		ft, retry := gitx.Classify(fetchErr)
		return stage.Classified(fetchErr, ft, retry)
	}
	name := BaseSnapshot(req.AttemptID)
	if err := s.res.PutSnapshot(ctx, name, snap.Pack); err != nil {
		return stage.Retry(fmt.Errorf("store snapshot: %w", err))
	}
	return in.Publish(ctx, events.RepoFetched, events.Fetched{
		Ref: req.Ref, BaseCommit: snap.Commit.String(), Strategy: string(snap.Strategy),
		BytesFetched: snap.BytesFetched, Snapshot: name,
	})
}

// duplicate publishes request.duplicate for the request at seq.
func (s *Service) duplicate(ctx context.Context, req *events.Request, seq uint64) error {
	first, _ := s.res.ClaimedSeq(ctx, req.AttemptID)
	reason := fmt.Sprintf("attempt id %s is already taken by the request at stream sequence %d; this request was ignored (use a new attempt id)", req.AttemptID, first)
	env, err := events.New(events.RequestDuplicate, s.pub.Actor, req.Ref,
		events.Duplicate{Ref: req.Ref, Reason: reason, Seq: seq, FirstSeq: first}, s.pub.Clock())
	if err != nil {
		return err
	}
	env.EventID = events.DuplicateEventID(req.AttemptID, seq)
	if err := s.pub.PublishEnvelope(ctx, env); err != nil {
		return stage.Retry(err)
	}
	s.cfg.Metrics.Duplicate()
	return nil
}

// check validates a request body: first that it carries no credential
// anywhere (such a request is rejected whatever else is wrong with it, and
// marked Secret to be erased), then its fields, then that its repository
// URL is one the policy allows. Nothing of a credential is in the reason.
func (s *Service) check(data []byte, subjectID string) (*events.Request, *events.ValidationError) {
	if field, what := events.FindCredential(data); what != "" {
		return nil, &events.ValidationError{Field: field, Secret: true,
			Reason: "must not contain credentials (found " + what + "); the service's own credentials are used"}
	}
	req, err := events.ParseRequest(data, subjectID)
	if err != nil {
		var ve *events.ValidationError
		if !errors.As(err, &ve) {
			ve = &events.ValidationError{Field: "body", Reason: err.Error()}
		}
		return nil, ve
	}
	if s.cfg.URLs == nil {
		return nil, &events.ValidationError{Field: "target.repo_url", Reason: "no repository host is allowed (the service has no URL policy)"}
	}
	if err := s.cfg.URLs.CheckRepoURL(req.Target.RepoURL); err != nil {
		var r *egress.Refused
		secret := errors.As(err, &r) && r.Credential
		return nil, &events.ValidationError{Field: "target.repo_url", Reason: err.Error(), Secret: secret}
	}
	return req, nil
}

// Submit validates a request at once and, when it is valid, publishes it
// as attempt.requested. It backs `nats req leviathan.api.submit`.
func (s *Service) Submit(ctx context.Context, body []byte, actor string) events.SubmitResponse {
	req, rej := s.check(body, "")
	if rej != nil {
		return events.SubmitResponse{Error: rej.Reason, Field: rej.Field}
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
	data, err := env.Marshal()
	if err != nil {
		return events.SubmitResponse{Error: err.Error()}
	}
	ack, retried, err := s.publishRequest(ctx, env.Subject(), data, env.EventID)
	if err != nil {
		return events.SubmitResponse{AttemptID: req.AttemptID, Error: "publish: " + err.Error()}
	}
	status := "accepted"
	if ack.Duplicate && !retried {
		// A retry's duplicate is this request's own earlier try, stored
		// though its answer was lost.
		status = "duplicate"
	}
	return events.SubmitResponse{AttemptID: req.AttemptID, Status: status}
}

// SubmitRetryFor is how long Submit keeps trying a publish the stream does
// not answer (no responders while its leader moves, or no answer in
// time) before it answers with the error: less than the 5 s a user's
// `nats req` waits by default; each try waits up to 2 s for its answer.
// The message id (the request's event id) makes a retry of a publish that
// was stored a duplicate, not a second request.
const SubmitRetryFor = 4 * time.Second

// publishRequest publishes a request, retrying while the stream is not
// answering; retried says whether more than one try was made.
func (s *Service) publishRequest(ctx context.Context, subject string, data []byte, msgID string) (ack *jetstream.PubAck, retried bool, err error) {
	giveUp := time.Now().Add(SubmitRetryFor)
	for try, delay := 0, 100*time.Millisecond; ; try, delay = try+1, min(2*delay, time.Second) {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second) // a busy cluster's answer takes a while
		ack, err = s.res.JS.Publish(pctx, subject, data, jetstream.WithMsgID(msgID))
		cancel()
		if err == nil || !stage.TransientNATS(err) || ctx.Err() != nil || time.Now().Add(delay).After(giveUp) {
			return ack, try > 0, err
		}
		s.cfg.Logger.Warn("submit: the stream did not answer; retrying", "subject", subject, "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil, try > 0, err
		case <-time.After(delay):
		}
	}
}
