// Command gitbench is the git benchmark behind `make bench-git` (see
// bench/README.md). It generates a small and a large repository (cached under
// bench/cache), serves them with localforge (the real `git http-backend`) on
// 127.0.0.1 and times, per repository, one attempt's git work: fetch, backlog
// edit, commit and push, through gitx with each fetch strategy and through
// the git CLI as a baseline. It prints a table and writes the "git" key of
// bench/results.json.
//
// Then, unless -rtt 0, it times some approaches again through an RTT proxy
// (bench/rttproxy) that puts the forge a round-trip time away, counting
// each attempt's HTTP round trips, and writes the "git_rtt" key (rtt.go).
//
// Everything it reads and writes is under bench/.
//
// `gitbench worker` is the services' side of a measurement: the parent
// re-executes itself so that the git work runs in a process of its own, as
// in the real services, and its peak RSS can be read from the parent.
package main

import (
	"context"
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
	"github.com/leviathan-dev/leviathan/internal/gitx"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gitbench:", err)
		os.Exit(1)
	}
}

// The approaches, in the order of the table. The first three are gitx
// strategies run by a worker process; the last two are the git CLI.
const (
	approachMinimal     = string(gitx.StrategyMinimal)
	approachBlobNone    = string(gitx.StrategyBlobNone)
	approachShallow     = string(gitx.StrategyShallow)
	approachCLIDepth1   = "cli-depth1"
	approachCLIBlobNone = "cli-blob-none"
)

var allApproaches = []string{approachMinimal, approachBlobNone, approachShallow, approachCLIDepth1, approachCLIBlobNone}

// config is what the flags say.
type config struct {
	root       string   // repository root (holds go.mod and bench/)
	cacheDir   string   // generated repositories
	out        string   // results file
	n          int      // measured iterations per approach
	nSlow      int      // measured iterations of the approaches that move the whole snapshot of the large repo
	warmup     int      // discarded iterations per approach
	repos      []string // subset of specs, by name
	approaches []string // subset of allApproaches
	trace      bool     // print every HTTP request the server answers

	// The RTT phase (rtt.go).
	rtt           time.Duration // added round-trip time; 0: no RTT phase
	rttN          int           // measured iterations per approach
	rttHandshake  int           // round trips per new connection
	rttApproaches []string      // subset of allApproaches
	rttOnly       bool          // skip the loopback phase (and the "git" key)
}

func (c *config) validate() error {
	if c.n < 1 || c.nSlow < 1 || c.warmup < 0 {
		return errors.New("-n and -n-slow must be at least 1, -warmup at least 0")
	}
	for _, r := range c.repos {
		if specByName(r) == nil {
			return fmt.Errorf("unknown repo %q (want small, large)", r)
		}
	}
	for _, a := range slices.Concat(c.approaches, c.rttApproaches) {
		if !slices.Contains(allApproaches, a) {
			return fmt.Errorf("unknown approach %q (want %s)", a, strings.Join(allApproaches, ", "))
		}
	}
	if c.rtt < 0 || c.rttN < 1 || c.rttHandshake < 1 {
		return errors.New("-rtt must be at least 0, -rtt-n and -rtt-handshake at least 1")
	}
	if c.rttOnly && c.rtt == 0 {
		return errors.New("-rtt-only needs an -rtt above 0")
	}
	return nil
}

// iterations is how many measured runs an approach gets on a repo. Moving
// the whole depth-1 snapshot of the large repo takes seconds per run, so
// those get fewer.
func (c *config) iterations(repo, approach string) int {
	if repo == "large" && (approach == approachShallow || approach == approachCLIDepth1) {
		return c.nSlow
	}
	return c.n
}

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "worker" {
		return runWorker(ctx, args[1:], getenv, stdin, stdout)
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	return runBench(ctx, cfg, stdout)
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("gitbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &config{}
	fs.StringVar(&cfg.root, "root", "", "repository root (default: found from the working directory)")
	fs.IntVar(&cfg.n, "n", 7, "measured iterations per approach")
	fs.IntVar(&cfg.nSlow, "n-slow", 5, "measured iterations of shallow and cli-depth1 on the large repo")
	fs.IntVar(&cfg.warmup, "warmup", 1, "discarded warm-up iterations per approach")
	repos := fs.String("repos", "small,large", "repositories to measure")
	approaches := fs.String("approaches", strings.Join(allApproaches, ","), "approaches to measure")
	fs.BoolVar(&cfg.trace, "trace", false, "print every HTTP request: path, status, bytes, duration")
	fs.StringVar(&cfg.out, "out", "", "results file (default <root>/bench/results.json; \"-\" writes none)")
	fs.DurationVar(&cfg.rtt, "rtt", 50*time.Millisecond, "round-trip time the RTT phase adds in front of the server (0: no RTT phase)")
	fs.IntVar(&cfg.rttN, "rtt-n", 5, "measured iterations per approach in the RTT phase (after -warmup ones)")
	fs.IntVar(&cfg.rttHandshake, "rtt-handshake", 2, "round trips a new connection costs in the RTT phase (1: TCP; 2: TCP and TLS 1.3)")
	rttApproaches := fs.String("rtt-approaches", strings.Join(defaultRTTApproaches, ","), "approaches to measure in the RTT phase")
	fs.BoolVar(&cfg.rttOnly, "rtt-only", false, "run only the RTT phase (the \"git\" key is then left as it is)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg.repos = splitList(*repos)
	cfg.approaches = splitList(*approaches)
	cfg.rttApproaches = splitList(*rttApproaches)
	if cfg.root == "" {
		root, err := findRoot()
		if err != nil {
			return nil, err
		}
		cfg.root = root
	}
	cfg.cacheDir = filepath.Join(cfg.root, "bench", "cache")
	if cfg.out == "" {
		cfg.out = filepath.Join(cfg.root, "bench", "results.json")
	}
	return cfg, cfg.validate()
}

// findRoot walks up from the working directory to the directory holding
// this module's go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/leviathan-dev/leviathan\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the repository root (go.mod of github.com/leviathan-dev/leviathan); pass -root")
		}
		dir = parent
	}
}

// runBench is the whole benchmark: generate, serve, measure, report.
func runBench(ctx context.Context, cfg *config, stdout io.Writer) error {
	began := time.Now()
	var specs []repoSpec
	for _, name := range cfg.repos {
		specs = append(specs, *specByName(name))
	}
	forgeDir, metas, err := ensureRepos(ctx, cfg.cacheDir, specs, stdout)
	if err != nil {
		return err
	}
	srv, err := startForge(ctx, forgeDir, specs)
	if err != nil {
		return err
	}
	defer srv.close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}

	timeBin := findGNUTime(ctx)
	if timeBin == "" && !cfg.rttOnly && slices.ContainsFunc(cfg.approaches, func(a string) bool { return strings.HasPrefix(a, "cli-") }) {
		fmt.Fprintln(stdout, "warning: no GNU time (/usr/bin/time): the CLI's peak RSS is each git command's ru_maxrss, which includes this program's own RSS (an upper bound, marked ≤)")
	}
	if cfg.trace {
		srv.trace = stdout
	}
	// Other work on the machine skews every number; say how busy it was.
	load := loadAvg()
	fmt.Fprintf(stdout, "load average before measuring: %s\n", load)
	if l, err := strconv.ParseFloat(strings.Fields(load)[0], 64); err == nil && l >= 1 {
		fmt.Fprintln(stdout, "warning: the machine is busy; the numbers will be noisy and slower than on an idle machine")
	}
	runID := randomHex(4)
	results := gitResults{}
	var rows []row
	loopback := specs
	if cfg.rttOnly {
		loopback = nil
	}
	for _, spec := range loopback {
		fmt.Fprintf(stdout, "measuring %s: %s, interleaved, %d warm-up round(s) discarded\n", spec.Name, strings.Join(cfg.approaches, ", "), cfg.warmup)
		var ms []*measurement
		for _, approach := range cfg.approaches {
			ms = append(ms, &measurement{
				srv: srv, repo: spec.Name, approach: approach, runID: runID, exe: exe, timeBin: timeBin,
				warmup: cfg.warmup, n: cfg.iterations(spec.Name, approach), progress: stdout,
			})
		}
		if err := measureRepo(ctx, ms); err != nil {
			return err
		}
		results[spec.Name] = map[string]result{}
		for _, m := range ms {
			r := summarize(m.samples, m.peakKB)
			results[spec.Name][m.approach] = r
			rows = append(rows, row{repo: spec.Name, approach: m.approach, r: r, served: medianInt(servedOf(m.samples)), n: len(m.samples), rssBound: !m.exact})
		}
	}
	var rtt *gitRTTResults
	var rttRows []rttRow
	if cfg.rtt > 0 {
		if rtt, rttRows, err = measureRTT(ctx, cfg, srv, specs, exe, runID, stdout); err != nil {
			return err
		}
	}
	// Pushed branches are deleted after each run; this drops their
	// objects too, so the cache does not grow from run to run.
	for _, spec := range specs {
		if _, err := gitOutput(ctx, srv.repoDir(spec.Name), nil, nil, "prune", "--expire=now"); err != nil {
			return err
		}
	}

	fmt.Fprintf(stdout, "load average after measuring: %s\n\n", loadAvg())
	for _, spec := range specs {
		m := metas[spec.Name]
		fmt.Fprintf(stdout, "%s repo: %d files in %d directories, depth-1 pack %s (%d bytes), generated in %.1f s\n",
			spec.Name, m.Files, m.Dirs, humanBytes(m.Depth1PackBytes), m.Depth1PackBytes, m.GenerateSeconds)
	}
	if !cfg.rttOnly {
		fmt.Fprintln(stdout)
		printTable(stdout, rows)
		fmt.Fprintln(stdout)
		printRatios(stdout, results)
		printTargets(stdout, results)
	}
	if rtt != nil {
		fmt.Fprintln(stdout)
		printRTT(stdout, rtt, rttRows)
	}

	if cfg.out != "-" {
		fmt.Fprintln(stdout)
		if !cfg.rttOnly {
			if err := benchresults.Write(cfg.out, "git", results); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote %s (key \"git\")\n", cfg.out)
		}
		if rtt != nil {
			if err := benchresults.Write(cfg.out, "git_rtt", rtt); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "wrote %s (key \"git_rtt\")\n", cfg.out)
		}
	}
	fmt.Fprintf(stdout, "total time %.1f s\n", time.Since(began).Seconds())
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// loadAvg is the 1, 5 and 15 minute load averages, "?" where unknown.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}
