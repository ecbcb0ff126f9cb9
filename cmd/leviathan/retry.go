package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// cmdRetry is `leviathan retry <attempt_id>`: a new attempt for the task
// and target of a failed one. When the failed attempt left a pushed branch
// (it failed at pr), the new one reuses it: its push rebuilds the same
// commit when the base is unchanged, finds the branch already there, and
// goes on to open the pull request.
func cmdRetry(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("retry", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", env.NATSURL, "NATS server URL (env NATS_URL)")
	attempt := fs.String("attempt-id", "", "id of the new attempt (default: <attempt_id>-r<time>)")
	wait := fs.Bool("wait", false, "follow the new attempt and exit with its outcome")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long --wait waits")
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintln(stdout, "Usage: leviathan retry <attempt_id> [flags]")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return nil
	}
	if len(args) == 0 || args[0] == "" || args[0][0] == '-' {
		return &exitError{code: 2, msg: "retry: which attempt? leviathan retry <attempt_id> [flags]"}
	}
	orig := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	nc, js, err := env.connect(*natsURL, "retry")
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := js.Stream(ctx, stage.StreamName)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stage.StreamName, err)
	}
	last := func(t events.Type) (*jetstream.RawStreamMsg, error) {
		return st.GetLastMsgForSubject(ctx, events.Subject(orig, t))
	}
	reqMsg, err := last(events.AttemptRequested)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return &exitError{code: 2, msg: fmt.Sprintf("retry: the stream has no attempt %s", orig)}
	} else if err != nil {
		return err
	}
	req, err := events.ParseRequest(reqMsg.Data, orig)
	if err != nil {
		return &exitError{code: 2, msg: fmt.Sprintf("retry: the request of %s does not parse: %v", orig, err)}
	}
	failedMsg, err := last(events.AttemptFailed)
	if err != nil {
		if _, serr := last(events.AttemptSucceeded); serr == nil {
			return &exitError{code: 2, msg: fmt.Sprintf("retry: attempt %s succeeded; nothing to retry", orig)}
		}
		return &exitError{code: 2, msg: fmt.Sprintf("retry: attempt %s has not failed (still running, or rejected)", orig)}
	}
	env2, err := events.Decode(failedMsg.Data)
	if err != nil {
		return err
	}
	var failed events.Failed
	if err := env2.DecodePayload(&failed); err != nil {
		return err
	}
	id := *attempt
	if id == "" {
		id = fmt.Sprintf("%s-r%s", orig, time.Now().UTC().Format("150405"))
		if len(id) > 128 {
			id = "a-" + time.Now().UTC().Format("20060102-150405") + "-" + randomSuffix()
		}
	}
	next := *req
	next.Ref = events.Ref{AttemptID: id}
	next.TaskID, next.TargetID, next.BranchName, next.ResumeFrom = "", "", "", nil
	if failed.BranchName != "" && failed.CommitSHA != "" {
		next.BranchName = failed.BranchName
		next.ResumeFrom = &events.Resume{AttemptID: orig, BranchName: failed.BranchName, CommitSHA: failed.CommitSHA}
		fmt.Fprintf(stdout, "attempt %s failed at %s (%s) after pushing %s: the new attempt reuses it\n", orig, failed.Stage, failed.FailureType, failed.BranchName)
	} else {
		fmt.Fprintf(stdout, "attempt %s failed at %s (%s)\n", orig, failed.Stage, failed.FailureType)
	}
	body, err := json.Marshal(next)
	if err != nil {
		return err
	}
	return submitAndFollow(ctx, nc, js, body, *wait, *timeout, stdout)
}
