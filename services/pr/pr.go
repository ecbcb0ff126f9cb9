// Package pr is the stage that opens the pull request for a pushed branch,
// or adopts the one that already exists.
package pr

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/internal/forge"
	"github.com/leviathan-dev/leviathan/services/internal/stage"
)

// Service handles branch.pushed.
type Service struct {
	res    *stage.Resources
	driver forge.Driver
}

// New returns the pr service using driver for every target.
func New(res *stage.Resources, driver forge.Driver) *Service {
	return &Service{res: res, driver: driver}
}

// StageConfig is the runner configuration of this stage.
func StageConfig() stage.Config {
	return stage.Config{Name: "pr", Input: events.BranchPushed}
}

// Handle opens or adopts the pull request of one pushed attempt.
func (s *Service) Handle(ctx context.Context, in *stage.Input) error {
	var pushed events.Pushed
	if err := in.Event.DecodePayload(&pushed); err != nil {
		return stage.Fail(events.ExecutionError, err)
	}
	req, err := s.res.Request(ctx, in.Ref.AttemptID)
	if err != nil {
		return stage.Retry(err)
	}
	in.Ref = req.Ref
	title := "Leviathan: " + req.Task.Title
	pr, reused, err := s.driver.EnsurePR(ctx, forge.PRRequest{
		RepoURL: req.Target.RepoURL, Base: req.Target.Branch, Head: pushed.BranchName,
		Title: title, Body: Body(req, pushed.ChangedPaths), Draft: req.Draft,
	})
	if err != nil {
		return classify(err)
	}
	if err := in.Publish(ctx, events.PRCreated, events.PROpened{
		Ref: req.Ref, PRNumber: pr.Number, PRURL: pr.URL, BranchName: pushed.BranchName,
		CommitSHA: pushed.CommitSHA, Title: title, State: pr.State, Reused: reused, Repo: pr.Repo,
	}); err != nil {
		return stage.Retry(err)
	}
	return in.Publish(ctx, events.AttemptSucceeded, events.Succeeded{
		Ref: req.Ref, Status: "succeeded", PRNumber: &pr.Number, PRURL: &pr.URL,
	})
}

// Body is the pull request description of PR Proof v1: task id, attempt
// id, scope, priority, acceptance criteria and the changed files.
func Body(req *events.Request, changed []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Leviathan proposes a task for this repository's backlog.\n\n")
	fmt.Fprintf(&b, "- **Task:** %s\n- **Attempt:** %s\n", req.Task.ID, req.AttemptID)
	if req.Task.Scope != "" {
		fmt.Fprintf(&b, "- **Scope:** %s\n", req.Task.Scope)
	}
	if req.Task.Priority != "" {
		fmt.Fprintf(&b, "- **Priority:** %s\n", req.Task.Priority)
	}
	if len(req.Task.AcceptanceCriteria) > 0 {
		b.WriteString("\n**Acceptance criteria**\n\n")
		for _, c := range req.Task.AcceptanceCriteria {
			fmt.Fprintf(&b, "- %s\n", c)
		}
	}
	b.WriteString("\n**Changed files**\n\n")
	for _, p := range changed {
		fmt.Fprintf(&b, "- `%s`\n", p)
	}
	return b.String()
}

// classify maps forge errors onto the stage runner's retry rules.
func classify(err error) error {
	var re *forge.RetryError
	switch {
	case errors.As(err, &re):
		return stage.RetryAfter(re.After, err)
	case errors.Is(err, forge.ErrAuth):
		return stage.Fail(events.AuthFailed, err)
	case errors.Is(err, forge.ErrNotFound):
		return stage.Fail(events.RepoNotFound, err)
	case errors.Is(err, forge.ErrClosedByHuman):
		return stage.Fail(events.GuardrailBlocked, err)
	case errors.Is(err, forge.ErrInvalid):
		return stage.Fail(events.ExecutionError, err)
	default:
		return stage.Retry(err)
	}
}
