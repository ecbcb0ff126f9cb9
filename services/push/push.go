// Package push is the stage that commits the edited backlog object-level
// and pushes the attempt's branch.
package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// Config configures the push service.
type Config struct {
	// Git holds the credentials for every target repository: Username
	// and Password, or an HTTPClient that authenticates each request
	// (forge.GitHTTPClient, for GitHub App installation tokens).
	Git gitx.Remote
	// AuthorName and AuthorEmail sign the commits (default
	// "Leviathan <leviathan@example.com>").
	AuthorName, AuthorEmail string
	Logger                  *slog.Logger
}

// Service handles backlog.edited.
type Service struct {
	cfg      Config
	res      *stage.Resources
	policies policy.Store
}

// New returns the push service.
func New(res *stage.Resources, cfg Config) *Service {
	if cfg.AuthorName == "" {
		cfg.AuthorName = "Leviathan"
	}
	if cfg.AuthorEmail == "" {
		cfg.AuthorEmail = "leviathan@example.com"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg, res: res, policies: policy.Store{KV: res.Config}}
}

// StageConfig is the runner configuration of this stage.
func StageConfig() stage.Config {
	return stage.Config{Name: "push", Input: events.BacklogEdited}
}

// Handle commits and pushes one edited attempt.
func (s *Service) Handle(ctx context.Context, in *stage.Input) error {
	var edited events.Edited
	b, err := s.res.Begin(ctx, in, &edited)
	if err != nil {
		return err
	}
	req, repo, content := b.Req, b.Repo, b.Objects[0]
	// pr's answer on the task's open pull request is needed only just
	// before the push; it is asked now, while the commit is built and the
	// policy read (a dry run reaches no forge, so it does not ask).
	// Whatever ends the attempt before the push drops the answer.
	var open <-chan events.OpenForTaskReply
	if !req.DryRun {
		octx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch := make(chan events.OpenForTaskReply, 1)
		go func() { ch <- s.openForTask(octx, req) }()
		open = ch
	}
	// The commit time is the edit event's time, so a redelivered push
	// rebuilds the identical commit and the re-push is a no-op. A retry
	// (`leviathan retry`) takes the failed attempt's edit time: when the
	// base and the task are unchanged, it builds that attempt's commit
	// again and reuses its pushed branch.
	when := in.Event.Timestamp
	rf := req.ResumeFrom
	if rf != nil {
		if m, err := s.res.Stream.GetLastMsgForSubject(ctx, events.Subject(rf.AttemptID, events.BacklogEdited)); err == nil {
			if env, err := events.Decode(m.Data); err == nil {
				when = env.Timestamp
			}
		}
	}
	sig := object.Signature{Name: s.cfg.AuthorName, Email: s.cfg.AuthorEmail, When: when}
	commit, err := repo.Commit(plumbing.NewHash(edited.BaseCommit), edited.Path, content, gitx.CommitMeta{
		Message: fmt.Sprintf("Leviathan: Propose task %s\n", req.Task.ID), Author: sig, Committer: sig,
	})
	if err != nil {
		return stage.Fail(events.ExecutionError, fmt.Errorf("build commit: %w", err))
	}
	branch := req.BranchName
	if rf != nil && commit.Hash.String() != rf.CommitSHA {
		// The base moved (or the task changed) since: the old branch holds
		// another commit, so this attempt pushes its own branch.
		branch = events.DefaultBranchPrefix + req.AttemptID
	}
	if bad := outside(req.Task.AllowedPaths, commit.ChangedPaths); len(bad) > 0 {
		return stage.Failf(events.PathViolation, "changed paths %s are outside allowed_paths %s",
			strings.Join(bad, ", "), strings.Join(req.Task.AllowedPaths, ", "))
	}
	// The target's policy, read afresh: a change in leviathan-config
	// applies to the next push without a restart.
	pol, err := s.policies.Get(ctx, req.Target.Name)
	switch {
	case errors.Is(err, policy.ErrInvalid):
		return stage.Fail(events.GuardrailBlocked, err) // fail safe
	case err != nil:
		return stage.Retry(err)
	}
	if bad := pol.PathsOutside(commit.ChangedPaths); len(bad) > 0 {
		return stage.Failf(events.PathViolation, "changed paths %s are outside the allowed_path_prefixes %s of target %s",
			strings.Join(bad, ", "), strings.Join(pol.AllowedPathPrefixes, ", "), req.Target.Name)
	}
	if req.DryRun {
		return s.dryRun(ctx, in, req, commit, pol)
	}
	// The kill switch stops the attempt before anything reaches the
	// target repository; the pr stage checks it again before creating.
	if err := policy.CheckAutonomy(pol, req.Target.Name); err != nil {
		return stage.Fail(events.GuardrailBlocked, err)
	}
	// A task that already has an open pull request gets no second
	// branch: pr adopts that pull request (it would anyway; asking first
	// keeps the repository free of a branch without a PR).
	if open := <-open; open.Open {
		return in.Publish(ctx, events.BranchPushed, events.Pushed{
			Ref: req.Ref, BranchName: open.BranchName, CommitSHA: open.CommitSHA, UpToDate: true, AdoptedPR: open.Number,
		})
	}
	remote := s.cfg.Git
	remote.URL = req.Target.RepoURL
	res, err := gitx.Push(ctx, remote, branch, commit)
	if err != nil {
		ft, retry := gitx.Classify(err)
		return stage.Classified(err, ft, retry)
	}
	return in.Publish(ctx, events.BranchPushed, events.Pushed{
		Ref: req.Ref, BranchName: branch, CommitSHA: commit.Hash.String(),
		ChangedPaths: commit.ChangedPaths, UpToDate: res.UpToDate,
	})
}

// openForTask asks pr (which holds the forge's credentials) whether the
// task has an open pull request. When pr cannot answer (none running, the
// forge failing), push goes on: pr's own check before it creates adopts
// the open pull request all the same, only after the branch is pushed.
func (s *Service) openForTask(ctx context.Context, req *events.Request) events.OpenForTaskReply {
	data, _ := json.Marshal(events.OpenForTaskRequest{RepoURL: req.Target.RepoURL, TaskID: req.Task.ID})
	rctx, cancel := context.WithTimeout(ctx, openForTaskWait)
	defer cancel()
	msg, err := s.res.JS.Conn().RequestWithContext(rctx, events.OpenForTaskSubject, data)
	var reply events.OpenForTaskReply
	if err == nil {
		err = json.Unmarshal(msg.Data, &reply)
	}
	if err == nil && reply.Error != "" {
		err = errors.New(reply.Error)
	}
	if err != nil {
		if ctx.Err() == nil { // else the attempt ended before it needed the answer
			s.cfg.Logger.Warn("could not ask pr for the task's open pull request; pushing", "attempt", req.AttemptID, "err", err)
		}
		return events.OpenForTaskReply{}
	}
	return reply
}

// openForTaskWait bounds push's question to pr.
const openForTaskWait = 10 * time.Second

// dryRun ends a dry run before the push: attempt.succeeded says what
// would have been pushed and proposed.
func (s *Service) dryRun(ctx context.Context, in *stage.Input, req *events.Request, commit *gitx.NewCommit, pol policy.Policy) error {
	note := fmt.Sprintf("dry run: would push branch %s at commit %s (changing %s) and propose it to %s",
		req.BranchName, commit.Hash, strings.Join(commit.ChangedPaths, ", "), req.Target.Branch)
	if req.Draft {
		note += " as a draft"
	}
	if err := policy.CheckAutonomy(pol, req.Target.Name); err != nil {
		note += "; a real run would be blocked: " + err.Error()
	}
	return in.Publish(ctx, events.AttemptSucceeded, events.Succeeded{
		Ref: req.Ref, Status: "succeeded", Note: note,
		DryRun: &events.DryRunPlan{
			BranchName: req.BranchName, CommitSHA: commit.Hash.String(), ChangedPaths: commit.ChangedPaths,
			// The title the pr stage would give it (pr.Title).
			Base: req.Target.Branch, PRTitle: "Leviathan: " + req.Task.Title, Draft: req.Draft,
		},
	})
}

// outside lists the changed paths that allowed does not cover.
func outside(allowed, changed []string) []string {
	var bad []string
	for _, p := range changed {
		if !events.PathAllowed(allowed, p) {
			bad = append(bad, p)
		}
	}
	return bad
}
