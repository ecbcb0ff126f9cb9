// Package pr is the stage that opens the pull request for a pushed branch,
// or adopts the one that already exists, within the target's guardrails.
package pr

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// Service handles branch.pushed.
type Service struct {
	res      *stage.Resources
	driver   forge.Driver
	policies policy.Store
}

// New returns the pr service using driver for every target and the
// policies of the resources' leviathan-config bucket.
func New(res *stage.Resources, driver forge.Driver) *Service {
	return &Service{res: res, driver: driver, policies: policy.Store{KV: res.Config}}
}

// StageConfig is the runner configuration of this stage.
func StageConfig() stage.Config {
	return stage.Config{Name: "pr", Input: events.BranchPushed}
}

// Title is the pull request title of PR Proof v1.
func Title(req *events.Request) string { return "Leviathan: " + req.Task.Title }

// The per-repository lock of Handle: how long to wait in one go for
// another holder, when to try again (waiting, which spends none of the
// attempt's deliveries), and the longest the work under it may take.
const (
	lockWait  = 15 * time.Second
	lockRetry = time.Second
	lockHold  = 90 * time.Second
)

// lockName names the repository of the request's target for the lock:
// host and owner/name, in lower case (GitHub's are case-insensitive), so
// two targets on one repository take turns too; the target's name when
// the URL has no owner/name.
func lockName(req *events.Request) string {
	owner, name, err := forge.RepoPath(req.Target.RepoURL)
	u, uerr := url.Parse(req.Target.RepoURL)
	if err != nil || uerr != nil {
		return "target/" + req.Target.Name
	}
	return strings.ToLower(u.Host + "/" + owner + "/" + name)
}

// adoptTask is returned by the guard when another attempt already has an
// open pull request for the same task on the target: that PR is adopted
// instead of opening a second one.
type adoptTask struct{ pr forge.PullRequest }

func (a *adoptTask) Error() string { return fmt.Sprintf("task already proposed in #%d", a.pr.Number) }

// Handle opens or adopts the pull request of one pushed attempt.
//
// Order of decisions: a PR for the branch is looked up first and adopted
// (or, closed by a human, refused); only when a new PR would be created do
// the guardrails run — kill switch, one open PR per task, max_open_prs —
// reading the policy afresh, so a change in leviathan-config applies to
// the next attempt without a restart.
func (s *Service) Handle(ctx context.Context, in *stage.Input) error {
	var pushed events.Pushed
	// A redelivery after this stage already succeeded (a crash before the
	// ack) must not decide anew: the PR may have been closed since, and
	// attempt.failed is not a duplicate JetStream would drop. Asked while
	// Begin loads the request: both are reads by the attempt's id.
	var done bool
	var doneErr error
	var wg sync.WaitGroup
	id := in.Ref.AttemptID // from the subject; Begin sets in.Ref from the request
	wg.Go(func() { done, doneErr = s.succeeded(ctx, id) })
	b, err := s.res.Begin(ctx, in, &pushed)
	wg.Wait()
	if err != nil {
		return err
	}
	req := b.Req
	if doneErr != nil {
		return stage.Retry(doneErr)
	} else if done {
		return nil
	}
	title := Title(req)
	// The guardrails look at the repository's open pull requests, then a
	// new one may be created: replicas would both look before either
	// creates, so one at a time per repository holds the lock from the
	// lookup to the create. The lock is asked for while the forge is asked
	// for the branch's own pull request, which needs none (only this
	// attempt pushes the branch; a second delivery of it that creates the
	// pull request first is adopted by the guard below, by its branch).
	lk := s.lockAsync(ctx, req)
	defer lk.release()
	lctx, cancel := context.WithTimeout(ctx, lockHold)
	guard := func(ctx context.Context) error {
		if err := lk.wait(); err != nil {
			return err
		}
		return s.guard(ctx, req)
	}
	pr, reused, err := forge.EnsurePR(lctx, s.driver, forge.PRRequest{
		RepoURL: req.Target.RepoURL, Base: req.Target.Branch, Head: pushed.BranchName,
		Title: title, Body: Body(req, pushed.ChangedPaths), Draft: req.Draft,
	}, guard)
	cancel()
	// The events below need no lock: it is released while they are
	// published (the deferred release waits for that to end).
	go lk.release()
	branch, commit, note := pushed.BranchName, pushed.CommitSHA, ""
	var adopt *adoptTask
	switch {
	case errors.As(err, &adopt) && adopt.pr.Head == pushed.BranchName:
		// This attempt's own, created by another delivery of it since the
		// lookup by branch.
		pr, reused, title = adopt.pr, true, adopt.pr.Title
		note = fmt.Sprintf("pull request #%d already existed for branch %s; adopted", pr.Number, branch)
	case errors.As(err, &adopt):
		pr, reused = adopt.pr, true
		branch, commit, title = pr.Head, pr.HeadSHA, pr.Title
		other := ""
		if _, attempt, ok := policy.MarkedTask(pr.Body); ok {
			other = " by attempt " + attempt
		}
		note = fmt.Sprintf("task %s already has open pull request #%d (branch %s%s); adopted it instead of opening a second; branch %s was pushed but has no pull request",
			req.Task.ID, pr.Number, pr.Head, other, pushed.BranchName)
	case err != nil:
		return classify(err)
	case reused && pushed.AdoptedPR != 0:
		title = pr.Title
		other := ""
		if _, attempt, ok := policy.MarkedTask(pr.Body); ok {
			other = " by attempt " + attempt
		}
		note = fmt.Sprintf("task %s already has open pull request #%d (branch %s%s); adopted it, and nothing was pushed",
			req.Task.ID, pr.Number, branch, other)
	case reused:
		title = pr.Title
		note = fmt.Sprintf("pull request #%d already existed for branch %s; adopted", pr.Number, branch)
	}
	if err := in.Publish(ctx, events.PRCreated, events.PROpened{
		Ref: req.Ref, PRNumber: pr.Number, PRURL: pr.URL, BranchName: branch,
		CommitSHA: commit, Title: title, State: pr.State, Reused: reused, Repo: pr.Repo,
	}); err != nil {
		return stage.Retry(err)
	}
	return in.Publish(ctx, events.AttemptSucceeded, events.Succeeded{
		Ref: req.Ref, Status: "succeeded", PRNumber: &pr.Number, PRURL: &pr.URL, Note: note,
	})
}

// repoLock is the repository's lock of Handle, asked for in the
// background.
type repoLock struct {
	done   chan struct{}
	unlock func()
	err    error
}

// lockAsync starts taking the repository's lock of req.
func (s *Service) lockAsync(ctx context.Context, req *events.Request) *repoLock {
	lk := &repoLock{done: make(chan struct{})}
	go func() {
		defer close(lk.done)
		lk.unlock, lk.err = s.res.Lock(ctx, "pr."+lockName(req), "attempt "+req.AttemptID, lockWait)
	}()
	return lk
}

// wait waits for the lock and returns the stage error when it was not
// taken.
func (lk *repoLock) wait() error {
	<-lk.done
	switch {
	case errors.Is(lk.err, stage.ErrLocked):
		return stage.Wait(lockRetry, lk.err)
	case lk.err != nil:
		return stage.Retry(lk.err)
	}
	return nil
}

// release releases the lock once it is taken; a second call waits for
// the first's release to end.
func (lk *repoLock) release() {
	if lk.wait() == nil {
		lk.unlock()
	}
}

// OpenForTask answers push's question before it pushes: the task's open
// pull request on the repository, if any.
func (s *Service) OpenForTask(ctx context.Context, q events.OpenForTaskRequest) events.OpenForTaskReply {
	open, err := s.driver.OpenPRs(ctx, q.RepoURL)
	if err != nil {
		return events.OpenForTaskReply{Error: err.Error()}
	}
	pr, ok := policy.OpenForTask(open, q.TaskID)
	if !ok {
		return events.OpenForTaskReply{}
	}
	return events.OpenForTaskReply{Open: true, Number: pr.Number, BranchName: pr.Head, CommitSHA: pr.HeadSHA}
}

// succeeded reports whether attempt.succeeded of the attempt is in the
// stream already.
func (s *Service) succeeded(ctx context.Context, attemptID string) (bool, error) {
	_, err := s.res.Stream.GetLastMsgForSubject(ctx, events.Subject(attemptID, events.AttemptSucceeded))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return false, nil
	default:
		return false, err
	}
}

// guard runs the guardrails just before a pull request is created.
func (s *Service) guard(ctx context.Context, req *events.Request) error {
	pol, err := s.policies.Get(ctx, req.Target.Name)
	switch {
	case errors.Is(err, policy.ErrInvalid):
		// Fail safe: a broken policy blocks rather than allows.
		return stage.Fail(events.GuardrailBlocked, err)
	case err != nil:
		return stage.Retry(err)
	}
	if err := policy.CheckAutonomy(pol, req.Target.Name); err != nil {
		return stage.Fail(events.GuardrailBlocked, err)
	}
	open, err := s.driver.OpenPRs(ctx, req.Target.RepoURL)
	if err != nil {
		return classify(err)
	}
	if pr, ok := policy.OpenForTask(open, req.Task.ID); ok {
		return &adoptTask{pr: pr}
	}
	if err := policy.CheckCapacity(pol, req.Target.Name, open, events.DefaultBranchPrefix); err != nil {
		return stage.Fail(events.GuardrailBlocked, err)
	}
	return nil
}

// Body is the pull request description of PR Proof v1: task id, attempt
// id, scope, priority, acceptance criteria and the changed files; then the
// hidden marker (policy.Marker) by which later attempts recognise an open
// PR for the same task.
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
	b.WriteString("\n" + policy.Marker(req.Task.ID, req.AttemptID) + "\n")
	return b.String()
}

// classify maps forge errors onto the stage runner's retry rules. Errors
// that are already stage errors (from the guard) pass through.
func classify(err error) error {
	var se *stage.Error
	var re *forge.RetryError
	switch {
	case errors.As(err, &se):
		return err
	case errors.As(err, &re) && (errors.Is(err, forge.ErrRateLimited) || errors.Is(err, forge.ErrPaced)):
		// The forge said to wait, or another call has the account's turn:
		// waiting, not failing.
		return stage.Wait(re.After, err)
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
