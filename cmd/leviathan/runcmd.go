package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/leviathan-dev/leviathan/internal/stack"
)

// cmdRun runs one service against an existing NATS deployment: the mode of
// the Kubernetes Deployments (`leviathan run clone`, ...).
func cmdRun(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
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
	if err := fs.Parse(args[1:]); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	forgeCfg, err := env.Forge.config()
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	cfg.Forge = forgeCfg
	cfg.Replicas = 1
	if env.StreamReplica != "" {
		n, err := strconv.Atoi(env.StreamReplica)
		if err != nil || n < 1 {
			return &exitError{code: 2, msg: fmt.Sprintf("LEVIATHAN_STREAM_REPLICAS=%q: want a positive number", env.StreamReplica)}
		}
		cfg.Replicas = n
	}
	cfg.Logger = newLogger(stderr, env.LogLevel).With("service", cfg.Name)
	return stack.RunService(ctx, cfg)
}
