package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdSubmit(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("submit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", env.NATSURL, "NATS server URL (env NATS_URL)")
	file := fs.String("f", "", "read the whole request JSON from this file ('-' for stdin); the request flags are then ignored")
	attempt := fs.String("attempt-id", "", "attempt id (default: generated)")
	target := fs.String("target", "", "target name")
	repoURL := fs.String("repo-url", "", "target repository clone URL (no credentials)")
	branch := fs.String("branch", "main", "base branch")
	taskID := fs.String("task-id", "", "task id")
	title := fs.String("title", "", "task title")
	priority := fs.String("priority", "", "task priority: high, medium or low")
	draft := fs.Bool("draft", false, "open the pull request as a draft")
	dryRun := fs.Bool("dry-run", false, "stop before pushing; attempt.succeeded says what would have been pushed and proposed")
	createBacklog := fs.Bool("create-backlog", false, "create "+events.BacklogPath+" when the target has none")
	branchName := fs.String("branch-name", "", "the branch to push (default agent/backlog-propose-<attempt id>)")
	var allowed, criteria stringList
	fs.Var(&allowed, "allowed-path", "path the task may change (repeatable; default .leviathan/backlog.yaml)")
	fs.Var(&criteria, "acceptance", "acceptance criterion (repeatable)")
	wait := fs.Bool("wait", false, "follow the attempt and exit with its outcome")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long --wait waits")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: leviathan submit [flags]: a request from flags (--target, --repo-url, --task-id, --title, ...) or from a file (-f)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	var body []byte
	var err error
	switch *file {
	case "":
		if len(allowed) == 0 {
			allowed = stringList{events.BacklogPath}
		}
		id := *attempt
		if id == "" {
			id = "a-" + time.Now().UTC().Format("20060102-150405") + "-" + randomSuffix()
		}
		body, err = json.Marshal(events.Request{
			Ref:    events.Ref{AttemptID: id},
			Target: events.Target{Name: *target, RepoURL: *repoURL, Branch: *branch},
			Task: events.Task{ID: *taskID, Title: *title, Priority: *priority,
				AllowedPaths: allowed, AcceptanceCriteria: criteria},
			Draft: *draft, DryRun: *dryRun, CreateBacklog: *createBacklog, BranchName: *branchName,
		})
	case "-":
		body, err = io.ReadAll(os.Stdin)
	default:
		body, err = os.ReadFile(*file)
	}
	if err != nil {
		return err
	}
	nc, js, err := env.connect(*natsURL, "submit")
	if err != nil {
		return err
	}
	defer nc.Close()
	return submitAndFollow(ctx, nc, js, body, *wait, *timeout, stdout)
}

// submitAndFollow submits a request, prints the answer and, with wait,
// follows the attempt to its end and exits with its outcome.
func submitAndFollow(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, body []byte, wait bool, timeout time.Duration, stdout io.Writer) error {
	resp, err := submit(ctx, nc, body)
	if err != nil {
		return err
	}
	if resp.Error != "" {
		return &exitError{code: 2, msg: fmt.Sprintf("request rejected: %s: %s", resp.Field, resp.Error)}
	}
	fmt.Fprintf(stdout, "attempt %s %s\n", resp.AttemptID, resp.Status)
	if !wait {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	o, err := watchAttempt(wctx, js, resp.AttemptID, stdout)
	if err != nil {
		return err
	}
	return reportOutcome(o, stdout)
}

// submit sends a request to leviathan.api.submit and decodes the answer.
func submit(ctx context.Context, nc *nats.Conn, body []byte) (*events.SubmitResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, "leviathan.api.submit", body)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, errors.New("no clone service is answering leviathan.api.submit (is `leviathan dev` or the clone service running?)")
		}
		return nil, fmt.Errorf("submit: %w", err)
	}
	var resp events.SubmitResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("submit: bad answer: %w", err)
	}
	return &resp, nil
}

// reportOutcome prints the end of an attempt and turns failure into a
// non-zero exit.
func reportOutcome(o *outcome, stdout io.Writer) error {
	switch o.final.EventType {
	case events.AttemptSucceeded:
		if o.prURL != "" {
			fmt.Fprintf(stdout, "succeeded: %s\n", o.prURL)
		} else {
			fmt.Fprintf(stdout, "succeeded: %s\n", describe(o.final))
		}
		return nil
	case events.AttemptRejected:
		return &exitError{code: 2, msg: "attempt rejected: " + describe(o.final)}
	default:
		return &exitError{code: 1, msg: "attempt failed: " + describe(o.final)}
	}
}

// randomSuffix ends the attempt ids submit and retry make: 32 random
// bits after the second the id was made in. Two ids of one second were
// the same once in 65,536 pairs with 16 bits, which a script submitting
// dozens a second meets within minutes (the second request is refused
// as a duplicate); with 32 bits, once in about 4 billion.
func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
