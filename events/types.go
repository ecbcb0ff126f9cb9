package events

// Type is an event type; it is also the last tokens of the event's subject.
type Type string

// The event types of the attempt lifecycle (DESIGN.md §4).
const (
	AttemptRequested   Type = "attempt.requested"
	AttemptRejected    Type = "attempt.rejected"
	AttemptCreated     Type = "attempt.created"
	AttemptStarted     Type = "attempt.started"
	RepoFetched        Type = "repo.fetched"
	BacklogEdited      Type = "backlog.edited"
	BacklogUnchanged   Type = "backlog.unchanged"
	BranchPushed       Type = "branch.pushed"
	PRCreated          Type = "pr.created"
	AttemptSucceeded   Type = "attempt.succeeded"
	AttemptFailed      Type = "attempt.failed"
	AttemptInvalidated Type = "attempt.invalidated"
	// RequestDuplicate says a request reused the id of an attempt that
	// already runs from another request: it was ignored. It is not part of
	// that attempt's lifecycle (the attempt goes on); the control plane
	// lists it with the failures.
	RequestDuplicate Type = "request.duplicate"
)

// Terminal reports whether t ends an attempt.
func (t Type) Terminal() bool {
	return t == AttemptSucceeded || t == AttemptFailed || t == AttemptRejected
}

// FailureType classifies why an attempt failed.
type FailureType string

// The failure types of attempt.failed.
const (
	InvalidRequest   FailureType = "invalid_request"
	BacklogInvalid   FailureType = "backlog_invalid"
	PathViolation    FailureType = "path_violation"
	AuthFailed       FailureType = "auth_failed"
	RepoNotFound     FailureType = "repo_not_found"
	BranchNotFound   FailureType = "branch_not_found" // the request's base branch
	BranchConflict   FailureType = "branch_conflict"
	GuardrailBlocked FailureType = "guardrail_blocked"
	RetriesExhausted FailureType = "retries_exhausted"
	Timeout          FailureType = "timeout"
	ExecutionError   FailureType = "execution_error"
)

// Ref identifies the attempt an event belongs to. Every payload embeds it.
type Ref struct {
	AttemptID string `json:"attempt_id"`
	TaskID    string `json:"task_id"`
	TargetID  string `json:"target_id"`
}

// Target is the repository an attempt proposes work to.
type Target struct {
	Name    string `json:"name"`
	RepoURL string `json:"repo_url"`
	Branch  string `json:"branch"`
	Forge   string `json:"forge,omitempty"`
}

// Task is one backlog entry (DESIGN.md §6). Field order is the order the
// backlog editor writes them in.
type Task struct {
	ID                 string   `json:"id" yaml:"id"`
	Title              string   `json:"title" yaml:"title"`
	Scope              string   `json:"scope,omitempty" yaml:"scope,omitempty"`
	Priority           string   `json:"priority,omitempty" yaml:"priority,omitempty"`
	Ready              *bool    `json:"ready,omitempty" yaml:"ready,omitempty"`
	EstimatedSize      string   `json:"estimated_size,omitempty" yaml:"estimated_size,omitempty"`
	AllowedPaths       []string `json:"allowed_paths" yaml:"allowed_paths"`
	AcceptanceCriteria []string `json:"acceptance_criteria,omitempty" yaml:"acceptance_criteria,omitempty"`
	Dependencies       []string `json:"dependencies,omitempty" yaml:"dependencies,omitempty"`
	Description        string   `json:"description,omitempty" yaml:"description,omitempty"`
	Labels             []string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Status             string   `json:"status,omitempty" yaml:"status,omitempty"`
}

// Request is the payload of attempt.requested. A user may publish it bare,
// without an envelope; see ParseRequest.
type Request struct {
	Ref
	Target        Target `json:"target"`
	Task          Task   `json:"task"`
	BranchName    string `json:"branch_name,omitempty"`
	Draft         bool   `json:"draft,omitempty"`
	DryRun        bool   `json:"dry_run,omitempty"`
	CreateBacklog bool   `json:"create_backlog,omitempty"`
	// ResumeFrom, set by `leviathan retry`, names a failed attempt of the
	// same task whose pushed branch this one reuses when it would build
	// the same commit.
	ResumeFrom *Resume `json:"resume_from,omitempty"`
}

// Resume is the work of an earlier attempt a retry may reuse: the branch
// it pushed and the commit at its tip.
type Resume struct {
	AttemptID  string `json:"attempt_id"`
	BranchName string `json:"branch_name"`
	CommitSHA  string `json:"commit_sha"`
}

// Rejected is the payload of attempt.rejected.
type Rejected struct {
	Ref
	Reason string `json:"reason"`
	Field  string `json:"field"`
}

// Duplicate is the payload of request.duplicate: Seq is the stream
// sequence of the ignored request, FirstSeq that of the request the
// attempt runs from.
type Duplicate struct {
	Ref
	Reason   string `json:"reason"`
	Seq      uint64 `json:"seq"`
	FirstSeq uint64 `json:"first_seq,omitempty"`
}

// Created is the payload of attempt.created.
type Created struct {
	Ref
	AttemptNumber int    `json:"attempt_number"`
	Status        string `json:"status"`
	RepoURL       string `json:"repo_url"`
	Branch        string `json:"branch"`
	TaskTitle     string `json:"task_title,omitempty"`
}

// Started is the payload of attempt.started.
type Started struct {
	Ref
	Status string `json:"status"`
}

// Fetched is the payload of repo.fetched.
type Fetched struct {
	Ref
	BaseCommit   string `json:"base_commit"`
	Strategy     string `json:"strategy"`
	BytesFetched int64  `json:"bytes_fetched"`
	Snapshot     string `json:"snapshot"`
}

// SnapshotRefs names the objects of the snapshot bucket that the next
// stage reads: the fetched repository.
func (f *Fetched) SnapshotRefs() (pack string, objects []string) { return f.Snapshot, nil }

// Edited is the payload of backlog.edited and backlog.unchanged.
type Edited struct {
	Ref
	Path     string `json:"path"`
	OldBlob  string `json:"old_blob"`
	NewBlob  string `json:"new_blob"`
	Snapshot string `json:"snapshot"`
	// BaseCommit is carried forward so push needs no second lookup.
	BaseCommit string `json:"base_commit"`
	// BaseSnapshot is the object holding the fetched base objects.
	BaseSnapshot string `json:"base_snapshot"`
	Note         string `json:"note,omitempty"`
}

// SnapshotRefs names the objects of the snapshot bucket that push reads:
// the fetched repository and the edited backlog.
func (e *Edited) SnapshotRefs() (pack string, objects []string) {
	return e.BaseSnapshot, []string{e.Snapshot}
}

// Pushed is the payload of branch.pushed.
type Pushed struct {
	Ref
	BranchName   string   `json:"branch_name"`
	CommitSHA    string   `json:"commit_sha"`
	ChangedPaths []string `json:"changed_paths"`
	UpToDate     bool     `json:"up_to_date,omitempty"`
	// AdoptedPR, when set, says nothing was pushed: the task already has
	// this open pull request (on BranchName at CommitSHA), which the pr
	// stage adopts.
	AdoptedPR int `json:"adopted_pr,omitempty"`
}

// OpenForTaskSubject is where push asks pr, before pushing anything,
// whether the task already has an open pull request (OpenForTask*).
const OpenForTaskSubject = "leviathan.svc.pr.open-for-task"

// OpenForTaskRequest asks for the open pull request of a task.
type OpenForTaskRequest struct {
	RepoURL string `json:"repo_url"`
	TaskID  string `json:"task_id"`
}

// OpenForTaskReply answers it: Open with the pull request's number, head
// branch and commit; Error when the forge could not be asked.
type OpenForTaskReply struct {
	Open       bool   `json:"open"`
	Number     int    `json:"number,omitempty"`
	BranchName string `json:"branch_name,omitempty"`
	CommitSHA  string `json:"commit_sha,omitempty"`
	Error      string `json:"error,omitempty"`
}

// PROpened is the payload of pr.created.
type PROpened struct {
	Ref
	PRNumber   int    `json:"pr_number"`
	PRURL      string `json:"pr_url"`
	BranchName string `json:"branch_name"`
	CommitSHA  string `json:"commit_sha"`
	Title      string `json:"title"`
	State      string `json:"state"`
	Reused     bool   `json:"reused"`
	Repo       string `json:"repo"`
}

// Succeeded is the payload of attempt.succeeded. PRNumber and PRURL are
// null when the attempt ended without a PR (backlog unchanged, dry run).
type Succeeded struct {
	Ref
	Status   string  `json:"status"`
	PRNumber *int    `json:"pr_number"`
	PRURL    *string `json:"pr_url"`
	Note     string  `json:"note,omitempty"`
	// DryRun is set when the request asked for a dry run: what the
	// attempt would have pushed and proposed. Nothing was pushed.
	DryRun *DryRunPlan `json:"dry_run,omitempty"`
}

// DryRunPlan is what a dry run would have done.
type DryRunPlan struct {
	BranchName   string   `json:"branch_name"`
	CommitSHA    string   `json:"commit_sha"`
	ChangedPaths []string `json:"changed_paths"`
	Base         string   `json:"base"`
	PRTitle      string   `json:"pr_title"`
	Draft        bool     `json:"draft,omitempty"`
}

// Failed is the payload of attempt.failed.
type Failed struct {
	Ref
	Status       string      `json:"status"`
	Stage        string      `json:"stage"`
	FailureType  FailureType `json:"failure_type"`
	ErrorSummary string      `json:"error_summary"`
	Deliveries   int         `json:"deliveries"`
	// BranchName and CommitSHA say that the attempt left a pushed branch
	// (it failed after push): `leviathan retry` can reuse it.
	BranchName string `json:"branch_name,omitempty"`
	CommitSHA  string `json:"commit_sha,omitempty"`
}

// Invalidated is the payload of attempt.invalidated.
type Invalidated struct {
	Ref
	Reason string `json:"reason"`
}

// StageInputs are the event types a stage consumes, by stage. Only the
// services publish them: an outside producer (ingest) that could would
// start or steer an attempt's work.
var StageInputs = map[string]Type{
	"clone": AttemptRequested, "backlog-edit": RepoFetched, "push": BacklogEdited, "pr": BranchPushed,
}

// ConsumedByStage reports whether a stage consumes events of type t.
func ConsumedByStage(t Type) bool {
	for _, in := range StageInputs {
		if in == t {
			return true
		}
	}
	return false
}
