package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/services/backlogedit"
	"github.com/leviathan-dev/leviathan/services/pr"
)

// inProcess runs n attempts' stage work in this process, one step after
// the other and one attempt at a time, without NATS: what each stage's
// handler does with git and the forge, minus events, snapshots, claims
// and locks. Per attempt:
//
//   - clone: events.ParseRequest, then gitx.Fetch of the backlog's path;
//   - backlog-edit: gitx.OpenPack of the fetched pack, ReadFile of the
//     backlog, backlogedit.Append;
//   - push: gitx.OpenPack again (push opens the snapshot itself),
//     Repo.Commit, the open-pull-request question it asks pr (OpenPRs),
//     gitx.Push;
//   - pr: forge.EnsurePR with the guard pr runs (OpenPRs, the task and
//     capacity checks), pr.Title and pr.Body.
//
// The driver is built as pr builds it, with pacing off. The Result keeps
// every attempt's latency (for combine), and parts holds each attempt's
// time in each of chainSteps.
func inProcess(ctx context.Context, forgeURL string, n int, targets []string, prefix string) (r Result, parts [][]float64, err error) {
	ch, err := newChains(forgeURL, n, targets, prefix)
	if err != nil {
		return Result{}, nil, err
	}
	start := time.Now()
	for range n {
		if err := ch.one(ctx); err != nil {
			return Result{}, nil, err
		}
	}
	r, parts = ch.result(time.Since(start))
	return r, parts, nil
}

// chains runs attempts of the in-process chain one at a time, on their
// own or between the pipeline's (measure interleaves them at
// concurrency 1).
type chains struct {
	driver   forge.Driver
	pol      policy.Policy
	forgeURL string
	targets  []string
	prefix   string
	n        int // attempts planned
	lat      []float64
	parts    [][]float64
	took     time.Duration // the attempts' time together
}

// newChains prepares n attempts of the chain on targets.
func newChains(forgeURL string, n int, targets []string, prefix string) (*chains, error) {
	driver, err := forge.NewGitHub(forge.GitHubConfig{Token: forgeToken, BaseURL: forgeURL + "/api/v3/", MinInterval: time.Nanosecond})
	if err != nil {
		return nil, err
	}
	room := n + 1
	return &chains{driver: driver, pol: policy.Policy{MaxOpenPRs: &room}, forgeURL: forgeURL, targets: targets, prefix: prefix, n: n,
		parts: make([][]float64, len(chainSteps))}, nil
}

// done is how many attempts ran.
func (c *chains) done() int { return len(c.lat) }

// one runs the next attempt.
func (c *chains) one(ctx context.Context) error {
	i := len(c.lat)
	t0 := time.Now()
	took, err := chain(ctx, c.driver, c.pol, c.forgeURL, c.targets[i%len(c.targets)], fmt.Sprintf("%s-%d", c.prefix, i))
	if err != nil {
		return fmt.Errorf("in-process attempt %d: %w", i, err)
	}
	d := time.Since(t0)
	c.took += d
	c.lat = append(c.lat, d.Seconds())
	for k, d := range took {
		c.parts[k] = append(c.parts[k], d.Seconds())
	}
	return nil
}

// result is the attempts' Result, with wall the time they took from the
// first one's start (their own time alone when they were interleaved).
func (c *chains) result(wall time.Duration) (Result, [][]float64) {
	lat := c.lat
	return Result{Attempts: len(lat), AttemptsPerS: float64(len(lat)) / wall.Seconds(),
		P50S: quantile(lat, 0.5), P95S: quantile(lat, 0.95), P99S: quantile(lat, 0.99), lat: lat}, c.parts
}

// inProcessSteps is the median of each part of the chain.
func inProcessSteps(parts [][]float64) []Step {
	steps := make([]Step, len(chainSteps))
	for k, name := range chainSteps {
		steps[k] = Step{From: name, P50Ms: quantile(parts[k], 0.5) * 1e3}
	}
	return steps
}

// chainSteps name the parts of chain's time.
var chainSteps = []string{"clone: fetch", "backlog-edit: open, read, edit", "push: open, commit", "push: open PR question", "push: push", "pr: ensure PR"}

func chain(ctx context.Context, driver forge.Driver, pol policy.Policy, forgeURL, target, taskID string) ([]time.Duration, error) {
	var took []time.Duration
	t := time.Now()
	lap := func() {
		took = append(took, time.Since(t))
		t = time.Now()
	}
	err := runChain(ctx, driver, pol, forgeURL, target, taskID, lap)
	return took, err
}

func runChain(ctx context.Context, driver forge.Driver, pol policy.Policy, forgeURL, target, taskID string, lap func()) error {
	id := attemptID()
	req, err := events.ParseRequest(request(forgeURL, target, taskID), id)
	if err != nil {
		return err
	}
	remote := gitx.Remote{URL: req.Target.RepoURL, Password: forgeToken}
	// clone
	snap, err := gitx.Fetch(ctx, remote, req.Target.Branch, events.BacklogPath, gitx.FetchOptions{})
	if err != nil {
		return err
	}
	lap()
	// backlog-edit
	repo, err := gitx.OpenPack(snap.Pack)
	if err != nil {
		return err
	}
	old, _, err := repo.ReadFile(snap.Commit, events.BacklogPath)
	if err != nil {
		return err
	}
	content, err := backlogedit.Append(old, req.Task)
	if err != nil {
		return err
	}
	lap()
	// push
	if repo, err = gitx.OpenPack(snap.Pack); err != nil {
		return err
	}
	sig := object.Signature{Name: "Leviathan", Email: "leviathan@localhost", When: time.Now()}
	commit, err := repo.Commit(snap.Commit, events.BacklogPath, content, gitx.CommitMeta{
		Message: fmt.Sprintf("Leviathan: Propose task %s\n", req.Task.ID), Author: sig, Committer: sig,
	})
	if err != nil {
		return err
	}
	lap()
	open, err := driver.OpenPRs(ctx, req.Target.RepoURL)
	if err != nil {
		return err
	}
	if _, ok := policy.OpenForTask(open, req.Task.ID); ok {
		return fmt.Errorf("task %s already has an open pull request", req.Task.ID)
	}
	lap()
	if _, err := gitx.Push(ctx, remote, req.BranchName, commit); err != nil {
		return err
	}
	lap()
	// pr
	guard := func(ctx context.Context) error {
		open, err := driver.OpenPRs(ctx, req.Target.RepoURL)
		if err != nil {
			return err
		}
		if _, ok := policy.OpenForTask(open, req.Task.ID); ok {
			return fmt.Errorf("task %s already has an open pull request", req.Task.ID)
		}
		return policy.CheckCapacity(pol, req.Target.Name, open, events.DefaultBranchPrefix)
	}
	_, reused, err := forge.EnsurePR(ctx, driver, forge.PRRequest{
		RepoURL: req.Target.RepoURL, Base: req.Target.Branch, Head: req.BranchName,
		Title: pr.Title(req), Body: pr.Body(req, commit.ChangedPaths), Draft: req.Draft,
	}, guard)
	if err != nil {
		return err
	}
	if reused {
		return fmt.Errorf("pull request for %s reused: the benchmark's tasks must be new", req.BranchName)
	}
	lap()
	return nil
}

// structToMap lets Results put its levels at the top level of its JSON
// object.
func structToMap(v any) (map[string]any, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	m := map[string]any{}
	return m, json.Unmarshal(data, &m)
}
