package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

const configUsage = `Usage:
  leviathan config get <target>                 print the target's policy (defaults filled in)
  leviathan config set <target> [flags]         change some fields, keep the others
      --autonomy=true|false                     the kill switch (or autonomy_enabled=false)
      --max-open-prs=N                          cap on open Leviathan pull requests (or max_open_prs=N)
      --allowed-path-prefixes=a/,b/             paths attempts may change ("" clears;
                                                or allowed_path_prefixes=a/,b/)
  leviathan config list                         every target with a policy
  leviathan config delete <target>              back to the defaults

Flags of every subcommand: --nats-url (env NATS_URL). Changes apply to the
next attempt; no restart needed. The same bucket can be edited with
  nats kv put leviathan-config <target> '{"autonomy_enabled":false}'
`

// cmdConfig reads and writes per-target policies in the leviathan-config
// bucket.
func cmdConfig(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, configUsage)
		if len(args) == 0 {
			return &exitError{code: 2, msg: "config: which subcommand?"}
		}
		return nil
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("config "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats-url", env.NATSURL, "NATS server URL (env NATS_URL)")
	var autonomy, maxOpen, prefixes optionalString
	if sub == "set" {
		fs.Var(&autonomy, "autonomy", "true or false: the kill switch")
		fs.Var(&maxOpen, "max-open-prs", "cap on open Leviathan pull requests of the target")
		fs.Var(&prefixes, "allowed-path-prefixes", "comma-separated path prefixes attempts may change (\"\" clears)")
	}
	// The target comes first (`config set demo --autonomy=false`); flags
	// may also come first.
	var target string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		target, args = args[0], args[1:]
	}
	// Flags, the target and, for set, key=value pairs as `config list`
	// prints them (autonomy_enabled=false) may come in any order; anything
	// else is an error, not silently dropped.
	fields := map[string]*optionalString{
		"autonomy_enabled": &autonomy, "autonomy": &autonomy, "max_open_prs": &maxOpen, "max-open-prs": &maxOpen,
		"allowed_path_prefixes": &prefixes, "allowed-path-prefixes": &prefixes,
	}
	for {
		if err := fs.Parse(args); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		arg := fs.Arg(0)
		args = fs.Args()[1:]
		key, value, isPair := strings.Cut(arg, "=")
		switch {
		case isPair && sub == "set" && fields[key] != nil:
			_ = fields[key].Set(value)
		case !isPair && target == "":
			target = arg
		default:
			return &exitError{code: 2, msg: fmt.Sprintf("config %s: unexpected argument %q\n%s", sub, arg, configUsage)}
		}
	}
	if sub != "list" && target == "" {
		return &exitError{code: 2, msg: "config " + sub + ": which target?"}
	}

	nc, js, err := env.connect(*natsURL, "config")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, stage.ConfigBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("the %s bucket does not exist on %s yet: run `leviathan setup` once against this NATS (a deployment's set-up Job does; `leviathan dev` does it itself), then try again", stage.ConfigBucket, *natsURL)
	} else if err != nil {
		return fmt.Errorf("bucket %s: %w", stage.ConfigBucket, err)
	}
	store := policy.Store{KV: kv}

	switch sub {
	case "get":
		p, err := store.Get(ctx, target)
		if err != nil {
			return err
		}
		return printPolicy(stdout, target, p)
	case "list":
		targets, err := store.Targets(ctx)
		if err != nil {
			return err
		}
		for _, t := range targets {
			p, err := store.Get(ctx, t)
			if err != nil {
				fmt.Fprintf(stdout, "%s\tinvalid: %v\n", t, err)
				continue
			}
			fmt.Fprintf(stdout, "%s\tautonomy_enabled=%v max_open_prs=%d allowed_path_prefixes=%s\n",
				t, p.Autonomy(), p.OpenPRLimit(), strings.Join(p.AllowedPathPrefixes, ","))
		}
		return nil
	case "delete":
		return store.Delete(ctx, target)
	case "set":
		// A broken stored value is replaced, not merged into.
		p, err := store.Get(ctx, target)
		if err != nil && !errors.Is(err, policy.ErrInvalid) {
			return err
		}
		if autonomy.set {
			b, err := strconv.ParseBool(autonomy.value)
			if err != nil {
				return &exitError{code: 2, msg: fmt.Sprintf("--autonomy=%q: want true or false", autonomy.value)}
			}
			p.AutonomyEnabled = &b
		}
		if maxOpen.set {
			n, err := strconv.Atoi(maxOpen.value)
			if err != nil || n < 0 {
				return &exitError{code: 2, msg: fmt.Sprintf("--max-open-prs=%q: want a number >= 0", maxOpen.value)}
			}
			p.MaxOpenPRs = &n
		}
		if prefixes.set {
			p.AllowedPathPrefixes = nil
			for _, pre := range strings.Split(prefixes.value, ",") {
				if pre = strings.TrimSpace(pre); pre != "" {
					p.AllowedPathPrefixes = append(p.AllowedPathPrefixes, pre)
				}
			}
		}
		if err := store.Put(ctx, target, p); err != nil {
			return err
		}
		return printPolicy(stdout, target, p)
	default:
		fmt.Fprint(stderr, configUsage)
		return &exitError{code: 2, msg: fmt.Sprintf("config: unknown subcommand %q", sub)}
	}
}

// printPolicy prints the effective policy, defaults filled in.
func printPolicy(w io.Writer, target string, p policy.Policy) error {
	b, err := json.MarshalIndent(map[string]any{
		"target": target, "autonomy_enabled": p.Autonomy(), "max_open_prs": p.OpenPRLimit(),
		"allowed_path_prefixes": p.AllowedPathPrefixes,
	}, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// optionalString is a flag that records whether it was given.
type optionalString struct {
	value string
	set   bool
}

func (o *optionalString) String() string     { return o.value }
func (o *optionalString) Set(v string) error { o.value, o.set = v, true; return nil }
