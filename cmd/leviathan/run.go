package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/internal/stack"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = stack.Version

const usage = `leviathan proposes tasks to repositories as pull requests.

Usage:
  leviathan dev      [flags]            run everything on this machine (embedded NATS, localforge, control plane)
  leviathan demo     [flags]            run everything, submit one attempt, print the PR and the graph summary
  leviathan setup    [flags]            create or update the NATS stream, buckets and consumers (once per deploy)
  leviathan run      <service> [flags]  run one service: clone, backlog-edit, push, pr, projector, localforge
  leviathan submit   [flags]            submit an attempt (--wait to follow it to the end)
  leviathan watch    [attempt] [flags]  follow one attempt to its end, or every event live
  leviathan retry    <attempt> [flags]  a new attempt for a failed one's task, reusing its pushed branch
  leviathan summary  [flags]            print the graph summary from the control plane API
  leviathan verify   [flags]            replay the stream and check the control plane's hash chain
  leviathan config   get|set|list|delete  per-target guardrails in the leviathan-config bucket
  leviathan forge    repo create <owner>/<name>  a repository in localforge (--from DIR, --backlog)
  leviathan version

Run "leviathan <command> -h" for the flags of a command.
`

// exitError carries a process exit code without printing more.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// run is the whole program; main only supplies the process's context,
// arguments, environment and output streams.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, getenv, stdout, stderr)
	var ee *exitError
	if errors.As(err, &ee) && ee.msg == flag.ErrHelp.Error() {
		return nil // -h: the flags were printed; asking for help is no error
	}
	return err
}

func dispatch(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &exitError{code: 2, msg: "no command given"}
	}
	env := envConfig(getenv)
	switch args[0] {
	case "dev":
		return cmdDev(ctx, args[1:], env, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], env, stdout, stderr)
	case "setup":
		return cmdSetup(ctx, args[1:], env, stdout, stderr)
	case "run":
		return cmdRun(ctx, args[1:], env, stdout, stderr)
	case "submit":
		return cmdSubmit(ctx, args[1:], env, stdout, stderr)
	case "watch":
		return cmdWatch(ctx, args[1:], env, stdout, stderr)
	case "retry":
		return cmdRetry(ctx, args[1:], env, stdout, stderr)
	case "summary":
		return cmdSummary(ctx, args[1:], env, stdout, stderr)
	case "forge":
		return cmdForge(ctx, args[1:], env, stdout, stderr)
	case "verify":
		return cmdVerify(ctx, args[1:], env, stdout, stderr)
	case "config":
		return cmdConfig(ctx, args[1:], env, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "leviathan", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return &exitError{code: 2, msg: fmt.Sprintf("unknown command %q", args[0])}
	}
}

// environment is the configuration main reads from the environment.
// Packages never read the environment themselves.
type environment struct {
	NATSURL       string // NATS_URL
	NATSUser      string // NATS_USER (with NATS_PASSWORD: user/password auth)
	NATSPassword  string // NATS_PASSWORD
	NATSCAFile    string // NATS_CA_FILE: CA of the server's TLS certificate
	NATSCertFile  string // NATS_CERT_FILE, NATS_KEY_FILE: client certificate
	NATSKeyFile   string
	GitUsername   string // LEVIATHAN_GIT_USERNAME (default x-access-token)
	GitToken      string // LEVIATHAN_GIT_TOKEN
	ForgeToken    string // LEVIATHAN_FORGE_TOKEN (GitHub token)
	ForgeAPIURL   string // LEVIATHAN_FORGE_API_URL (empty: api.github.com)
	ControlToken  string // LEVIATHAN_CONTROL_PLANE_TOKEN
	ControlURL    string // LEVIATHAN_CONTROL_PLANE_URL (summary)
	LogLevel      string // LEVIATHAN_LOG_LEVEL (debug, info, warn, error)
	StreamReplica string // LEVIATHAN_STREAM_REPLICAS
	AllowedHosts  string // LEVIATHAN_ALLOWED_HOSTS (comma-separated: host, host:port, http://host:port)
	PrivateHosts  string // LEVIATHAN_PRIVATE_HOSTS (comma-separated host names)
	Setup         bool   // LEVIATHAN_SETUP=1: services set up the NATS resources themselves
	Deadline      string // LEVIATHAN_STAGE_DEADLINE: of one run of a stage's handler
	Workers       string // LEVIATHAN_STAGE_WORKERS: messages a stage handles at once
	ForgeLimit    string // LEVIATHAN_LOCALFORGE_RATE_LIMIT: localforge's API requests per hour
	Forge         forgeEnv
}

func envConfig(getenv func(string) string) environment {
	e := environment{
		NATSURL:       getenv("NATS_URL"),
		NATSUser:      getenv("NATS_USER"),
		NATSPassword:  getenv("NATS_PASSWORD"),
		NATSCAFile:    getenv("NATS_CA_FILE"),
		NATSCertFile:  getenv("NATS_CERT_FILE"),
		NATSKeyFile:   getenv("NATS_KEY_FILE"),
		GitUsername:   getenv("LEVIATHAN_GIT_USERNAME"),
		GitToken:      getenv("LEVIATHAN_GIT_TOKEN"),
		ForgeToken:    getenv("LEVIATHAN_FORGE_TOKEN"),
		ForgeAPIURL:   getenv("LEVIATHAN_FORGE_API_URL"),
		ControlToken:  getenv("LEVIATHAN_CONTROL_PLANE_TOKEN"),
		ControlURL:    getenv("LEVIATHAN_CONTROL_PLANE_URL"),
		LogLevel:      getenv("LEVIATHAN_LOG_LEVEL"),
		StreamReplica: getenv("LEVIATHAN_STREAM_REPLICAS"),
		AllowedHosts:  getenv("LEVIATHAN_ALLOWED_HOSTS"),
		PrivateHosts:  getenv("LEVIATHAN_PRIVATE_HOSTS"),
		Setup:         getenv("LEVIATHAN_SETUP") == "1" || getenv("LEVIATHAN_SETUP") == "true",
		Deadline:      getenv("LEVIATHAN_STAGE_DEADLINE"),
		Workers:       getenv("LEVIATHAN_STAGE_WORKERS"),
		ForgeLimit:    getenv("LEVIATHAN_LOCALFORGE_RATE_LIMIT"),
		Forge:         forgeEnvFrom(getenv),
	}
	if e.NATSURL == "" {
		e.NATSURL = "nats://127.0.0.1:4222"
	}
	if e.GitUsername == "" {
		e.GitUsername = "x-access-token"
	}
	return e
}

// list splits a comma-separated variable.
func list(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// natsOptions are the connection options every NATS client of the CLI
// uses. Credentials come from their own variables, not from NATS_URL, so a
// Kubernetes Secret can supply them and they never appear in a URL or a log.
//
// TLS: NATS_CA_FILE verifies the server with that CA (and requires TLS);
// NATS_CERT_FILE and NATS_KEY_FILE present a client certificate.
func (e environment) natsOptions() []nats.Option {
	var opts []nats.Option
	if e.NATSUser != "" || e.NATSPassword != "" {
		opts = append(opts, nats.UserInfo(e.NATSUser, e.NATSPassword))
	}
	if e.NATSCAFile != "" {
		opts = append(opts, nats.RootCAs(e.NATSCAFile))
	}
	if e.NATSCertFile != "" || e.NATSKeyFile != "" {
		opts = append(opts, nats.ClientCert(e.NATSCertFile, e.NATSKeyFile))
	}
	return opts
}

// connect opens a client connection to NATS for a CLI command, with the
// credentials of the environment, and its JetStream context.
func (e environment) connect(url, command string) (*nats.Conn, jetstream.JetStream, error) {
	return stack.Dial(url, command, e.natsOptions()...)
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}
