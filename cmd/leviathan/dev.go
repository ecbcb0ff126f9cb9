package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stack"
	"github.com/leviathan-dev/leviathan/services/projector/api"
)

// stackFlags are the flags dev and demo share.
func stackFlags(fs *flag.FlagSet, cfg *stack.StackConfig, dataDir, natsAddr, forgeAddr, httpAddr string) {
	fs.StringVar(&cfg.DataDir, "data-dir", dataDir, "directory for NATS storage, repositories, PR records and tokens")
	fs.StringVar(&cfg.NATSAddr, "nats-addr", natsAddr, "embedded NATS listen address (port 0: any free port)")
	fs.StringVar(&cfg.ForgeAddr, "forge-addr", forgeAddr, "localforge listen address")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", httpAddr, "control plane listen address")
}

func cmdDev(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg stack.StackConfig
	stackFlags(fs, &cfg, ".leviathan-dev", "127.0.0.1:4222", "127.0.0.1:3000", "127.0.0.1:8000")
	fs.IntVar(&cfg.DemoRepos, "repos", 1, "demo repositories in localforge: demo, demo-2 … demo-N (targets of the same names)")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if cfg.DemoRepos < 1 || cfg.DemoRepos > 1000 {
		return &exitError{code: 2, msg: "dev: --repos must be 1 to 1000"}
	}
	cfg.ControlToken = env.ControlToken
	cfg.AllowedHosts, cfg.PrivateHosts = list(env.AllowedHosts), list(env.PrivateHosts)
	cfg.Logger = newLogger(stderr, env.LogLevel)
	s, err := stack.StartStack(ctx, cfg)
	if err != nil {
		return err
	}
	printDevHelp(stdout, s)
	<-ctx.Done()
	fmt.Fprintln(stdout, "shutting down")
	return s.Close()
}

func printDevHelp(w io.Writer, s *stack.Stack) {
	abs, _ := filepath.Abs(s.DataDir())
	fmt.Fprintf(w, `Leviathan is running.
  NATS (JetStream)   %s
  localforge         %s   (demo repository: %s)
  control plane      %s
  data               %s

Submit an attempt with the nats CLI (validated at once, answers {attempt_id, status}):
  nats -s %s req leviathan.api.submit '{"attempt_id":"a-1","target":{"name":"demo","repo_url":"%s","branch":"%s"},"task":{"id":"T-1","title":"My first task","allowed_paths":[".leviathan/backlog.yaml"]}}'

or publish the bare request body straight into the stream:
  nats -s %s pub leviathan.attempts.a-2.attempt.requested '{"target":{"name":"demo","repo_url":"%s"},"task":{"id":"T-2","title":"Another task","allowed_paths":[".leviathan/backlog.yaml"]}}'

or follow one to the end:
  leviathan submit --nats-url %s --target demo --repo-url %s --task-id T-3 --title "Third task" --wait

Graph summary (the token is in %s):
  curl -H "Authorization: Bearer $(cat %s)" %s/v1/graph/summary

A repository of your own in localforge (git user: any name; password: the token in %s):
  leviathan forge repo create acme/atlas --backlog --forge-url %s --token-file %s [--from DIR]
`, s.NATSURL, s.ForgeURL, s.DemoRepoURL(), s.ControlURL, abs,
		s.NATSURL, s.DemoRepoURL(), "main",
		s.NATSURL, s.DemoRepoURL(),
		s.NATSURL, s.DemoRepoURL(),
		filepath.Join(abs, "control-plane.token"), filepath.Join(abs, "control-plane.token"), s.ControlURL,
		filepath.Join(abs, "forge.token"), s.ForgeURL, filepath.Join(abs, "forge.token"))
	if more := s.DemoRepoURLs(); len(more) > 1 {
		fmt.Fprintf(w, "\nDemo repositories (target name, clone URL):\n")
		for _, r := range more {
			fmt.Fprintf(w, "  %-10s %s\n", r[0], r[1])
		}
	}
	fmt.Fprintln(w, "\nCtrl-C stops everything; state is kept in the data directory.")
}

func cmdDemo(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg stack.StackConfig
	// Free ports and a fresh directory by default, so the demo runs next
	// to a `leviathan dev` and twice in a row.
	stackFlags(fs, &cfg, "", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the attempt")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	if cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "leviathan-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
	}
	cfg.ControlToken = env.ControlToken
	cfg.AllowedHosts, cfg.PrivateHosts = list(env.AllowedHosts), list(env.PrivateHosts)
	cfg.Logger = newLogger(stderr, firstSet(env.LogLevel, "warn"))
	s, err := stack.StartStack(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Fprintf(stdout, "Leviathan demo: NATS %s, localforge %s, control plane %s\n", s.NATSURL, s.ForgeURL, s.ControlURL)

	req := events.Request{
		Ref:    events.Ref{AttemptID: "demo-" + time.Now().UTC().Format("20060102-150405")},
		Target: events.Target{Name: "demo", RepoURL: s.DemoRepoURL(), Branch: "main"},
		Task: events.Task{
			ID: "DEMO-1", Title: "Try Leviathan end to end", Priority: "medium", Scope: "demo",
			AllowedPaths:       []string{events.BacklogPath},
			AcceptanceCriteria: []string{"a pull request proposes this task", "the graph shows the attempt"},
		},
	}
	body, _ := json.Marshal(req)
	resp, err := submit(ctx, s.NATS(), body)
	if err != nil {
		return err
	}
	if resp.Error != "" {
		return fmt.Errorf("demo request rejected: %s: %s", resp.Field, resp.Error)
	}
	fmt.Fprintf(stdout, "submitted attempt %s:\n", resp.AttemptID)
	js, err := jetstream.New(s.NATS())
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	o, err := watchAttempt(wctx, js, resp.AttemptID, stdout)
	if err != nil {
		return err
	}
	if err := reportOutcome(o, stdout); err != nil {
		return err
	}
	// The summary must include the attempt's last event.
	for s.Applied() < o.seq && wctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	summaryJSON, err := fetchSummary(wctx, s.ControlURL, s.ControlToken())
	if err != nil {
		return err
	}
	var sum api.Summary
	if err := json.Unmarshal([]byte(summaryJSON), &sum); err != nil {
		return fmt.Errorf("graph summary: %w", err)
	}
	printSummary(stdout, s.ControlURL, sum)
	fmt.Fprintln(stdout, "\nThe demo's servers stop as it exits, and its data directory goes with them (--data-dir keeps it):\n"+
		"the pull request's URL above works only while they run. `leviathan dev` runs the same stack until Ctrl-C.")
	return nil
}

// fetchSummary reads the graph summary through the control plane API, as
// any client would.
func fetchSummary(ctx context.Context, baseURL, token string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/v1/graph/summary", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("graph summary: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", fmt.Errorf("graph summary: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("graph summary: %s", apiError(resp, body))
	}
	var out bytes.Buffer
	if err := json.Indent(&out, body, "", "  "); err != nil {
		return "", fmt.Errorf("graph summary: %w", err)
	}
	return out.String(), nil
}

// apiError says why the control plane refused a request: its status and
// the reason it gave ({"detail": ...}), and what to do about a 401.
func apiError(resp *http.Response, body []byte) string {
	msg := resp.Status
	var d struct {
		Detail any `json:"detail"`
	}
	if json.Unmarshal(body, &d) == nil && d.Detail != nil {
		msg += ": " + fmt.Sprint(d.Detail)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		msg += " (the token is not the control plane's: check LEVIATHAN_CONTROL_PLANE_TOKEN or --token-file)"
	}
	return msg
}

func firstSet(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
