package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// cmdWatch follows one attempt to its end (exit code as submit --wait), or
// every event live until Ctrl-C.
func cmdWatch(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: leviathan watch [flags] [attempt-id]")
		fs.PrintDefaults()
	}
	natsURL := fs.String("nats-url", env.NATSURL, "NATS server URL (env NATS_URL)")
	all := fs.Bool("all", false, "without an attempt: start from the first event in the stream, not from now")
	timeout := fs.Duration("timeout", 0, "stop after this long (0: until the attempt ends, or Ctrl-C)")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	attempt := fs.Arg(0)
	if fs.NArg() > 1 { // flags after the attempt id
		if err := fs.Parse(fs.Args()[1:]); err != nil || fs.NArg() > 0 {
			return &exitError{code: 2, msg: "watch: at most one attempt id"}
		}
	}
	if attempt != "" && !events.ValidExternalAttemptID(attempt) {
		return &exitError{code: 2, msg: fmt.Sprintf("watch: %q is not an attempt id", attempt)}
	}
	nc, js, err := env.connect(*natsURL, "watch")
	if err != nil {
		return err
	}
	defer nc.Close()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	if attempt != "" {
		if err := knownAttempt(ctx, js, attempt, 5*time.Second); err != nil {
			return err
		}
		o, err := watchAttempt(ctx, js, attempt, stdout)
		if err != nil {
			return err
		}
		return reportOutcome(o, stdout)
	}
	return followAll(ctx, js, *all, stdout)
}

// followAll prints every event as it arrives until ctx ends.
func followAll(ctx context.Context, js jetstream.JetStream, fromStart bool, out io.Writer) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: events.AllStreamSubjects, DeliverPolicy: jetstream.DeliverNewPolicy}
	if fromStart {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	cons, err := js.OrderedConsumer(ctx, "LEVIATHAN_EVENTS", cfg)
	if err != nil {
		return fmt.Errorf("watch: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer it.Stop()
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil // Ctrl-C or --timeout: following ends there
			}
			continue
		}
		env, err := events.Decode(msg.Data())
		if err != nil {
			attempt, _, _ := events.ParseSubject(msg.Subject())
			fmt.Fprintf(out, "%-12s  %-20s %-20s (bare request body)\n", "", attempt, events.AttemptRequested)
			continue
		}
		fmt.Fprintf(out, "%-12s  %-20s %-20s %s\n", env.Timestamp.Format("15:04:05.000"), env.AttemptID, env.EventType, describe(env))
	}
}

// knownAttempt waits up to wait for the stream to hold an event of the
// attempt (it may have just been submitted), and says so when it never
// does, instead of waiting for ever.
func knownAttempt(ctx context.Context, js jetstream.JetStream, attempt string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		st, err := js.Stream(ctx, stage.StreamName)
		if err != nil {
			return fmt.Errorf("stream %s: %w", stage.StreamName, err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.AttemptSubjects(attempt)))
		if err != nil {
			return err
		}
		if len(info.State.Subjects) > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return &exitError{code: 1, msg: fmt.Sprintf("watch: the stream has no attempt %s (never submitted, or aged out)", attempt)}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
