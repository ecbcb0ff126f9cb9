// Command pipebench is the pipeline benchmark behind `make bench-pipeline`
// (see bench/README.md). It runs the deployment's shape on loopback: one
// nats-server, localforge, and every service (clone, backlog-edit, push, pr,
// projector) as a process of its own, each `leviathan run <name>`. It then
// submits attempts the way a user does (a bare request published on
// leviathan.attempts.<id>.attempt.requested) at several concurrencies and
// reports attempts/s, end-to-end latency and each process's CPU per attempt.
//
// In the same run it calls the same stage code in one process, one step
// after the other, without NATS (the in-process chain), and it runs a few
// attempts through a proxy that puts the forge a round-trip time away,
// counting the git and API round trips of one attempt.
//
// It writes the "pipeline" key of bench/results.json.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/leviathan-dev/leviathan/bench/benchresults"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pipebench:", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	n          int           // attempts per concurrency and round
	runs       int           // rounds
	conc       []int         // concurrencies
	targets    int           // repositories per concurrency
	inproc     int           // attempts of the in-process chain
	rtt        time.Duration // of the round-trip phase; 0 skips it
	rttN       int           // attempts of the round-trip phase
	out        string        // results file; "-" writes none
	binDir     string        // where the binaries are built
	profileDir string        // CPU profiles of the services, when set
	logDir     string        // every process's output, when set
	progress   io.Writer     // progress lines
	timeout    time.Duration // for one concurrency's attempts to end
	quiet      bool          // no per-level progress
	extraEnv   []string      // for every service (tests)
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("pipebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := config{}
	conc := fs.String("c", "1,8,32", "concurrencies: attempts kept in flight")
	fs.IntVar(&cfg.n, "n", 300, "attempts per concurrency and round")
	fs.IntVar(&cfg.runs, "runs", 3, "rounds, each of every concurrency; throughput is their median")
	fs.IntVar(&cfg.targets, "targets", 16, "target repositories per concurrency")
	fs.IntVar(&cfg.inproc, "inprocess-n", 100, "attempts of the in-process chain per round, one at a time, spread between the attempts of the round's concurrency 1")
	fs.DurationVar(&cfg.rtt, "rtt", 50*time.Millisecond, "round-trip time of the WAN phase (0 skips it)")
	fs.IntVar(&cfg.rttN, "rtt-n", 15, "attempts of the WAN phase (concurrency 1)")
	fs.StringVar(&cfg.out, "out", "bench/results.json", "results file (the \"pipeline\" key is replaced; \"-\" writes none)")
	fs.StringVar(&cfg.logDir, "logs", "", "append each process's output to <name>.log in this directory")
	fs.StringVar(&cfg.profileDir, "profile", "", "write each service's CPU profile (pprof) into this directory")
	fs.DurationVar(&cfg.timeout, "timeout", 10*time.Minute, "longest wait for one concurrency's attempts to end")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, s := range strings.Split(*conc, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c < 1 {
			return cfg, fmt.Errorf("-c %q: want positive numbers separated by commas", *conc)
		}
		cfg.conc = append(cfg.conc, c)
	}
	if cfg.n < 1 || cfg.runs < 1 || cfg.targets < 1 || cfg.inproc < 0 || cfg.rttN < 1 {
		return cfg, errors.New("-n, -runs, -targets and -rtt-n must be positive; -inprocess-n not negative")
	}
	return cfg, nil
}

// Result is one concurrency's figures (and the in-process chain's).
type Result struct {
	Attempts     int     `json:"attempts"`
	Failed       int     `json:"failed"`
	AttemptsPerS float64 `json:"attempts_per_s"` // the median of the rounds'
	// Runs is the rounds it was measured in; AttemptsPerSMin and Max the
	// slowest and the fastest round's throughput.
	Runs            int     `json:"runs,omitempty"`
	AttemptsPerSMin float64 `json:"attempts_per_s_min,omitempty"`
	AttemptsPerSMax float64 `json:"attempts_per_s_max,omitempty"`
	P50S            float64 `json:"p50_s"`
	P95S            float64 `json:"p95_s"`
	P99S            float64 `json:"p99_s"`
	lat             []float64
}

// RTTResult is the WAN phase: one attempt at a time through the proxy.
type RTTResult struct {
	RTTMs    float64 `json:"rtt_ms"`
	Attempts int     `json:"attempts"`
	P50S     float64 `json:"p50_s"`
	// Per attempt: HTTP requests, new connections and the round trips
	// they cost (requests + 2 per connection), git and API apart.
	GitRequests    float64 `json:"git_requests"`
	GitConns       float64 `json:"git_conns"`
	GitRoundTrips  float64 `json:"git_round_trips"`
	APIRequests    float64 `json:"api_requests"`
	APIConns       float64 `json:"api_conns"`
	APIRoundTrips  float64 `json:"api_round_trips"`
	InProcessP50S  float64 `json:"inprocess_p50_s"`
	InProcessRatio float64 `json:"pipeline_to_inprocess"`
}

// Step is the median time from one event of an attempt to the next.
type Step struct {
	From  string  `json:"from"`
	To    string  `json:"to"`
	P50Ms float64 `json:"p50_ms"`
}

// Results is the "pipeline" key of bench/results.json.
type Results struct {
	Date     string            `json:"date"`
	Commit   string            `json:"commit,omitempty"`
	Pacing   string            `json:"pacing"`
	Levels   map[string]Result `json:"-"`
	Overhead float64           `json:"overhead_ratio_c1,omitempty"`
	// OverheadRounds is each round's ratio of the same p50s.
	OverheadRounds []float64 `json:"overhead_ratio_c1_rounds,omitempty"`
	// CPU per attempt of each process over every pipeline attempt of
	// the run (all concurrencies).
	CPUms map[string]float64 `json:"cpu_ms_per_attempt"`
	// CPUmsByLevel is the same per concurrency.
	CPUmsByLevel map[string]map[string]float64 `json:"cpu_ms_per_attempt_by_level"`
	RTT          *RTTResult                    `json:"wan,omitempty"`
	// Steps is where an attempt's time goes at concurrency 1: the median
	// time between its consecutive events, as the server stored them.
	Steps []Step `json:"steps_c1,omitempty"`
	// InProcessSteps is the same for the in-process chain: the median of
	// each part of its work.
	InProcessSteps []Step `json:"inprocess_steps_c1,omitempty"`
	// Services are the processes, in the order of the CPU table.
	Services []string `json:"-"`
}

// MarshalJSON puts the levels ("c1", "c8", "inprocess_c1") at the top.
func (r Results) MarshalJSON() ([]byte, error) {
	type plain Results
	m, err := structToMap(plain(r))
	if err != nil {
		return nil, err
	}
	for k, v := range r.Levels {
		m[k] = v
	}
	return json.Marshal(m)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg.progress = stderr
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if cfg.out != "-" && !filepath.IsAbs(cfg.out) {
		cfg.out = filepath.Join(root, cfg.out)
	}
	res, err := measure(ctx, cfg, root)
	if err != nil {
		return err
	}
	printResults(stdout, cfg, res)
	if cfg.out == "-" {
		return nil
	}
	if err := benchresults.Write(cfg.out, "pipeline", res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote the \"pipeline\" key of %s\n", cfg.out)
	return nil
}

func printResults(w io.Writer, cfg config, r *Results) {
	fmt.Fprintf(w, "\npipeline: %d rounds of %d attempts per concurrency, %s\n\n", cfg.runs, cfg.n, r.Pacing)
	fmt.Fprintf(w, "%-14s %9s %9s %15s %9s %9s %9s\n", "", "attempts", "per s", "rounds' range", "p50 ms", "p95 ms", "p99 ms")
	keys := make([]string, 0, len(r.Levels))
	for k := range r.Levels {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return levelOrder(a) - levelOrder(b) })
	for _, k := range keys {
		l := r.Levels[k]
		spread := ""
		if l.Runs > 1 {
			spread = fmt.Sprintf("%.1f–%.1f", l.AttemptsPerSMin, l.AttemptsPerSMax)
		}
		fmt.Fprintf(w, "%-14s %9d %9.1f %15s %9.1f %9.1f %9.1f\n", k, l.Attempts-l.Failed, l.AttemptsPerS, spread, l.P50S*1e3, l.P95S*1e3, l.P99S*1e3)
	}
	if r.Overhead > 0 {
		fmt.Fprintf(w, "\npipeline / in-process p50 at concurrency 1: %.2f", r.Overhead)
		if len(r.OverheadRounds) > 1 {
			fmt.Fprintf(w, " (rounds: %s)", benchresults.FormatRatios(r.OverheadRounds))
		}
		fmt.Fprintln(w)
	}
	if len(r.Steps) > 0 {
		fmt.Fprintf(w, "\nwhere an attempt's time goes at concurrency 1 (median between its events, as stored):\n")
		for _, s := range r.Steps {
			fmt.Fprintf(w, "  %-18s → %-18s %6.1f ms\n", s.From, s.To, s.P50Ms)
		}
	}
	if len(r.InProcessSteps) > 0 {
		fmt.Fprintf(w, "\nthe in-process chain's parts (median):\n")
		for _, s := range r.InProcessSteps {
			fmt.Fprintf(w, "  %-40s %6.1f ms\n", s.From, s.P50Ms)
		}
	}
	fmt.Fprintf(w, "\nCPU ms per attempt (each process's own user+system time, its ended children's included)\n%-14s", "")
	levels := []string{}
	for _, c := range cfg.conc {
		levels = append(levels, fmt.Sprint("c", c))
	}
	for _, l := range levels {
		fmt.Fprintf(w, " %8s", l)
	}
	fmt.Fprintf(w, " %8s\n", "all")
	for _, s := range r.Services {
		fmt.Fprintf(w, "%-14s", s)
		for _, l := range levels {
			fmt.Fprintf(w, " %8.2f", r.CPUmsByLevel[l][s])
		}
		fmt.Fprintf(w, " %8.2f\n", r.CPUms[s])
	}
	if t := r.RTT; t != nil {
		fmt.Fprintf(w, "\nat %.0f ms round-trip time (proxy in front of localforge; %d attempts, one at a time)\n", t.RTTMs, t.Attempts)
		fmt.Fprintf(w, "  pipeline p50 %.0f ms; in-process chain p50 %.0f ms (%.2f×)\n", t.P50S*1e3, t.InProcessP50S*1e3, t.InProcessRatio)
		fmt.Fprintf(w, "  per attempt: git %.1f requests + %.1f connections = %.1f round trips; API %.1f requests + %.1f connections = %.1f round trips\n",
			t.GitRequests, t.GitConns, t.GitRoundTrips, t.APIRequests, t.APIConns, t.APIRoundTrips)
	}
	fmt.Fprintln(w, "\ntargets (DESIGN: 2 cores, localforge on the same cores)")
	last := fmt.Sprint("c", cfg.conc[len(cfg.conc)-1])
	if l, ok := r.Levels["c32"]; ok {
		target(w, l.AttemptsPerS >= 40, "≥ 40 attempts/s at concurrency 32: %.1f", l.AttemptsPerS)
	} else {
		fmt.Fprintf(w, "  (no concurrency 32 run; highest %s)\n", last)
	}
	if l, ok := r.Levels["c1"]; ok {
		target(w, l.P99S <= 0.25, "p99 ≤ 250 ms at concurrency 1: %.0f ms", l.P99S*1e3)
	}
	if r.Overhead > 0 {
		target(w, r.Overhead <= 1.3, "pipeline ≤ 1.3× the in-process chain at concurrency 1: %.2f×", r.Overhead)
	}
	for _, s := range r.Services {
		if s == "nats-server" || s == "localforge" {
			continue
		}
		target(w, r.CPUms[s] <= 5, "%s ≤ 5 ms CPU per attempt (git I/O included): %.2f ms", s, r.CPUms[s])
	}
}

func target(w io.Writer, met bool, format string, args ...any) {
	mark := "met   "
	if !met {
		mark = "MISSED"
	}
	fmt.Fprintf(w, "  %s %s\n", mark, fmt.Sprintf(format, args...))
}

func levelOrder(k string) int {
	if n, err := strconv.Atoi(strings.TrimPrefix(k, "c")); err == nil {
		return n
	}
	return 1 << 20 // inprocess_c1 last
}

// moduleRoot is the directory holding go.mod, from the working directory
// up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the repository (no go.mod found)")
		}
		dir = parent
	}
}
