// Package eventgen makes realistic, deterministic event streams for the
// projector's tests and benchmark: the envelopes and payloads the services
// publish, attempt after attempt, with a mix of outcomes.
package eventgen

import (
	"crypto/sha1"
	"encoding/json"
	"fmt"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// Outcome is how a generated attempt ends.
type Outcome int

// The outcomes, in the proportions Mix uses.
const (
	Succeeded Outcome = iota // the full flow with a pull request (90%)
	Failed                   // attempt.failed at push: path_violation (6%)
	Unchanged                // backlog.unchanged, succeeded without a PR (2%)
	Rejected                 // attempt.rejected by clone (2%)
)

// Mix is the outcome of attempt i: deterministic, and spread evenly.
func Mix(i int) Outcome {
	switch r := i % 50; {
	case r < 45:
		return Succeeded
	case r < 48:
		return Failed
	case r < 49:
		return Unchanged
	}
	return Rejected
}

// Base is the timestamp of the first generated event.
var Base = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// Targets are the targets attempts are spread over.
var Targets = []string{"demo", "radix", "orbit", "atlas"}

// Attempt returns the events of attempt number i with the given outcome,
// as the services publish them (bare-request bodies aside).
func Attempt(i int, o Outcome) []events.Envelope {
	target := Targets[i%len(Targets)]
	id := fmt.Sprintf("a-%07d", i)
	taskID := fmt.Sprintf("T-%d", i/3) // a task is proposed up to three times
	ref := events.Ref{AttemptID: id, TaskID: taskID, TargetID: target}
	repoURL := "https://github.com/leviathan-dev/" + target + ".git"
	at := Base.Add(time.Duration(i) * 3 * time.Second)
	instance := fmt.Sprintf("%04x", i%7)
	var out []events.Envelope
	add := func(t events.Type, actor string, p any) {
		at = at.Add(137 * time.Millisecond)
		env, err := events.New(t, actor, ref, p, at)
		if err != nil {
			panic(err) // the payloads above always marshal
		}
		out = append(out, env)
	}
	title := fmt.Sprintf("Propose backlog entry %d for the %s team", i/3, target)
	add(events.AttemptRequested, "user:cli", events.Request{
		Ref:    ref,
		Target: events.Target{Name: target, RepoURL: repoURL, Branch: "main", Forge: "github"},
		Task: events.Task{ID: taskID, Title: title, Priority: "medium", Scope: "docs",
			AllowedPaths:       []string{events.BacklogPath},
			AcceptanceCriteria: []string{"the entry is proposed", "nothing else changes"}},
		BranchName: events.DefaultBranchPrefix + id,
	})
	if o == Rejected {
		add(events.AttemptRejected, "clone-"+instance, events.Rejected{Ref: ref, Field: "task.allowed_paths[0]", Reason: `"../x" contains '..'`})
		return out
	}
	add(events.AttemptCreated, "clone-"+instance, events.Created{Ref: ref, AttemptNumber: 1, Status: "created",
		RepoURL: repoURL, Branch: "main", TaskTitle: title})
	add(events.AttemptStarted, "clone-"+instance, events.Started{Ref: ref, Status: "running"})
	base := hash("base", i)
	add(events.RepoFetched, "clone-"+instance, events.Fetched{Ref: ref, BaseCommit: base, Strategy: "minimal",
		BytesFetched: 2731, Snapshot: id + "/base"})
	edited := events.Edited{Ref: ref, Path: events.BacklogPath, OldBlob: hash("old", i), NewBlob: hash("new", i),
		Snapshot: id + "/edit", BaseCommit: base, BaseSnapshot: id + "/base"}
	if o == Unchanged {
		edited.NewBlob, edited.Note = edited.OldBlob, "task "+taskID+" is already in the backlog"
		add(events.BacklogUnchanged, "backlog-edit-"+instance, edited)
		add(events.AttemptSucceeded, "backlog-edit-"+instance, events.Succeeded{Ref: ref, Status: "succeeded", Note: edited.Note})
		return out
	}
	add(events.BacklogEdited, "backlog-edit-"+instance, edited)
	if o == Failed {
		add(events.AttemptFailed, "push-"+instance, events.Failed{Ref: ref, Status: "failed", Stage: "push",
			FailureType: events.PathViolation, ErrorSummary: "changed README.md, outside allowed_paths", Deliveries: 1})
		return out
	}
	sha := hash("commit", i)
	branch := events.DefaultBranchPrefix + id
	add(events.BranchPushed, "push-"+instance, events.Pushed{Ref: ref, BranchName: branch, CommitSHA: sha,
		ChangedPaths: []string{events.BacklogPath}})
	pr := i + 1
	prURL := fmt.Sprintf("https://github.com/leviathan-dev/%s/pull/%d", target, pr)
	add(events.PRCreated, "pr-"+instance, events.PROpened{Ref: ref, PRNumber: pr, PRURL: prURL, BranchName: branch,
		CommitSHA: sha, Title: "Leviathan: " + title, State: "open", Repo: "leviathan-dev/" + target})
	add(events.AttemptSucceeded, "pr-"+instance, events.Succeeded{Ref: ref, Status: "succeeded", PRNumber: &pr, PRURL: &prURL})
	return out
}

// hash is a git-like object id, distinct per kind and attempt.
func hash(kind string, i int) string {
	return fmt.Sprintf("%x", sha1.Sum([]byte(fmt.Sprintf("%s %d", kind, i))))
}

// Stream returns the events of attempts 0, 1, ... until there are at least
// n, in order.
func Stream(n int) []events.Envelope {
	out := make([]events.Envelope, 0, n+8)
	for i := 0; len(out) < n; i++ {
		out = append(out, Attempt(i, Mix(i))...)
	}
	return out
}

// Python returns the four events the Python proof run POSTed, as the
// ingest API turns them into envelopes: no repo_url, no title, no
// branch.pushed.
func Python(attempt, target string) []events.Envelope {
	task := "pr-proof-v1-backlog-only"
	at := time.Date(2026, 1, 28, 12, 0, 0, 0, time.UTC)
	var out []events.Envelope
	add := func(typ string, payload map[string]any) {
		payload["attempt_id"], payload["task_id"], payload["target_id"] = attempt, task, target
		raw, _ := json.Marshal(payload)
		at = at.Add(time.Second)
		out = append(out, events.Envelope{
			EventID: fmt.Sprintf("00000000-0000-4000-8000-%012d", len(out)+1), EventType: events.Type(typ),
			Timestamp: at, ActorID: "pr-proof-worker-" + attempt, AttemptID: attempt, TargetID: target, Payload: raw,
		})
	}
	add("attempt.created", map[string]any{"attempt_number": 1, "status": "created"})
	add("attempt.started", map[string]any{"status": "running"})
	add("pr.created", map[string]any{"pr_number": 42, "pr_url": "https://github.com/o/" + target + "/pull/42",
		"branch_name": "agent/backlog-propose-" + attempt, "commit_sha": "abc123"})
	add("attempt.succeeded", map[string]any{"status": "succeeded", "pr_number": 42, "pr_url": "https://github.com/o/" + target + "/pull/42"})
	return out
}
