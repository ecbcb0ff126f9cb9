package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/leviathan-dev/leviathan/internal/stack"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// cmdRun runs one service against an existing NATS deployment: the mode of
// the Kubernetes Deployments (`leviathan run clone`, ...).
func cmdRun(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintf(stdout, "Usage: leviathan run <service> [flags]: one of %s (leviathan run <service> -h for its flags)\n", strings.Join(stack.ServiceNames, ", "))
		return nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return &exitError{code: 2, msg: fmt.Sprintf("run: which service? one of %s", strings.Join(stack.ServiceNames, ", "))}
	}
	cfg := stack.ServiceConfig{
		Name: args[0], NATSOptions: env.natsOptions(), GitUsername: env.GitUsername, GitToken: env.GitToken,
		ForgeToken: env.ForgeToken, ForgeAPIURL: env.ForgeAPIURL, ControlToken: env.ControlToken,
		AllowedHosts: list(env.AllowedHosts), PrivateHosts: list(env.PrivateHosts),
	}
	fs := flag.NewFlagSet("run "+cfg.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	defaultAddr := ":8080"
	if cfg.Name == "projector" {
		defaultAddr = ":8000"
	}
	fs.StringVar(&cfg.NATSURL, "nats-url", env.NATSURL, "NATS server URL (env NATS_URL)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", defaultAddr, "listen address of /healthz and /readyz (projector: the control plane API)")
	fs.StringVar(&cfg.DataDir, "data-dir", "/var/lib/leviathan/forge", "localforge only: data directory")
	cpuProfile := fs.String("cpu-profile", "", "write a CPU profile (pprof) of the whole run to this file, for `go tool pprof`")
	fs.BoolVar(&cfg.Setup, "setup", env.Setup, "create or update the NATS resources at start instead of waiting for `leviathan setup` (env LEVIATHAN_SETUP=1; needs a NATS user that may manage JetStream)")
	if err := fs.Parse(args[1:]); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	forgeCfg, err := env.Forge.config()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	cfg.Forge = forgeCfg
	if cfg.Replicas, err = env.replicas(); err != nil {
		return err
	}
	if env.Workers != "" {
		if cfg.Workers, err = strconv.Atoi(env.Workers); err != nil || cfg.Workers < 1 || cfg.Workers > 256 {
			return &exitError{code: 2, msg: fmt.Sprintf("LEVIATHAN_STAGE_WORKERS=%q: want a number from 1 to 256", env.Workers)}
		}
	}
	if env.ForgeLimit != "" {
		if cfg.ForgeRateLimit, err = strconv.Atoi(env.ForgeLimit); err != nil || cfg.ForgeRateLimit < 1 {
			return &exitError{code: 2, msg: fmt.Sprintf("LEVIATHAN_LOCALFORGE_RATE_LIMIT=%q: want a positive number of requests per hour", env.ForgeLimit)}
		}
	}
	if env.Deadline != "" {
		if cfg.Deadline, err = time.ParseDuration(env.Deadline); err != nil || cfg.Deadline <= 0 {
			return &exitError{code: 2, msg: fmt.Sprintf("LEVIATHAN_STAGE_DEADLINE=%q: want a duration such as 5m", env.Deadline)}
		}
	}
	cfg.Logger = newLogger(stderr, env.LogLevel).With("service", cfg.Name)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("--cpu-profile: %v", err)}
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				cfg.Logger.Error("cpu profile not written", "file", *cpuProfile, "err", err)
			}
		}()
	}
	return stack.RunService(ctx, cfg)
}

// replicas is LEVIATHAN_STREAM_REPLICAS, 1 when unset.
func (e environment) replicas() (int, error) {
	if e.StreamReplica == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(e.StreamReplica)
	if err != nil || n < 1 {
		return 0, &exitError{code: 2, msg: fmt.Sprintf("LEVIATHAN_STREAM_REPLICAS=%q: want a positive number", e.StreamReplica)}
	}
	return n, nil
}

// cmdSetup is `leviathan setup`: the one-shot set-up step of a deployment
// (a Job in the overlays). It creates or updates the stream, the buckets
// and the stages' consumers, then exits; the services need no right to
// manage JetStream.
func cmdSetup(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("nats-url", env.NATSURL, "NATS server URL (env NATS_URL)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to keep trying while NATS is not reachable or has no JetStream leader")
	tryTimeout := fs.Duration("try-timeout", 20*time.Second, "how long one try may take before it is abandoned and made again (a JetStream request a cluster dropped, during a leader election say, gets no answer)")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	replicas, err := env.replicas()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	logger := newLogger(stderr, env.LogLevel)
	var nc *nats.Conn
	var js jetstream.JetStream
	defer func() {
		if nc != nil {
			nc.Close()
		}
	}()
	// The connection is retried as the set-up is: the Job may start
	// before NATS, or while a busy server is slow to greet it.
	for delay := 250 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
		err = nil // each try starts afresh
		if nc == nil {
			nc, js, err = stack.Dial(*url, "setup", env.natsOptions()...)
		}
		if err == nil {
			tctx, tcancel := context.WithTimeout(ctx, *tryTimeout)
			err = stack.Setup(tctx, js, replicas, logger)
			tcancel()
		}
		if err == nil || ctx.Err() != nil {
			break
		}
		logger.Warn("setup: retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	fmt.Fprintf(stdout, "set up: stream %s (%d replicas), buckets and the consumers of %s\n", stage.StreamName, replicas, strings.Join(stack.StageNames, ", "))
	return nil
}
