// Package backlogedit is the stage that appends the task to the target's
// .leviathan/backlog.yaml, read from the fetched snapshot.
package backlogedit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/go-git/go-git/v5/plumbing"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// Service handles repo.fetched.
type Service struct {
	res    *stage.Resources
	logger *slog.Logger
}

// New returns the backlog-edit service.
func New(res *stage.Resources, logger *slog.Logger) *Service {
	if logger == nil {
		logger = slog.Default()
	}
	return &Service{res: res, logger: logger}
}

// StageConfig is the runner configuration of this stage.
func StageConfig() stage.Config {
	return stage.Config{Name: "backlog-edit", Input: events.RepoFetched}
}

// EditedSnapshot is the Object Store name of an attempt's new backlog.
func EditedSnapshot(attemptID string) string { return attemptID + "/backlog.yaml" }

// Handle edits the backlog of one fetched attempt.
func (s *Service) Handle(ctx context.Context, in *stage.Input) error {
	var fetched events.Fetched
	b, err := s.res.Begin(ctx, in, &fetched)
	if err != nil {
		return err
	}
	req, repo := b.Req, b.Repo
	base := plumbing.NewHash(fetched.BaseCommit)
	old, oldBlob, err := repo.ReadFile(base, events.BacklogPath)
	var content []byte
	switch {
	case errors.Is(err, gitx.ErrFileNotFound) && req.CreateBacklog:
		content, err = NewBacklog(req.Task), nil
	case errors.Is(err, gitx.ErrFileNotFound):
		return stage.Failf(events.BacklogInvalid, "%s does not exist in %s at %s (set create_backlog: true to create it)",
			events.BacklogPath, req.Target.Name, fetched.BaseCommit)
	case err != nil:
		return stage.Fail(events.ExecutionError, fmt.Errorf("read %s: %w", events.BacklogPath, err))
	default:
		content, err = Append(old, req.Task)
	}
	edited := events.Edited{
		Ref: req.Ref, Path: events.BacklogPath, OldBlob: blobString(oldBlob),
		BaseCommit: fetched.BaseCommit, BaseSnapshot: fetched.Snapshot,
	}
	var ie *InvalidError
	switch {
	case errors.Is(err, ErrTaskExists):
		return s.unchanged(ctx, in, edited, req)
	case errors.As(err, &ie):
		return stage.Fail(events.BacklogInvalid, fmt.Errorf("%s: %w", events.BacklogPath, err))
	case err != nil:
		return stage.Fail(events.ExecutionError, err)
	}
	edited.Snapshot = EditedSnapshot(req.AttemptID)
	edited.NewBlob = plumbing.ComputeHash(plumbing.BlobObject, content).String()
	if err := s.res.PutSnapshot(ctx, edited.Snapshot, content); err != nil {
		return stage.Retry(fmt.Errorf("store edited backlog: %w", err))
	}
	return in.Publish(ctx, events.BacklogEdited, edited)
}

// unchanged ends an attempt whose task is already in the backlog: there
// is nothing to propose, which is a success, not a failure.
func (s *Service) unchanged(ctx context.Context, in *stage.Input, edited events.Edited, req *events.Request) error {
	edited.NewBlob = edited.OldBlob
	edited.Note = fmt.Sprintf("task %s is already in %s", req.Task.ID, events.BacklogPath)
	if err := in.Publish(ctx, events.BacklogUnchanged, edited); err != nil {
		return stage.Retry(err)
	}
	return in.Publish(ctx, events.AttemptSucceeded, events.Succeeded{
		Ref: req.Ref, Status: "succeeded", Note: edited.Note + "; no commit, no pull request",
	})
}

func blobString(h plumbing.Hash) string {
	if h.IsZero() {
		return ""
	}
	return h.String()
}
