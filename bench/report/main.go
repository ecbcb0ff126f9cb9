// Command report turns bench/results.json into bench/RESULTS.md, the
// readable record `make bench` leaves: the machine, the date, the commit,
// every figure with its target, and how much each varied within its run.
// It reads only the results file; it measures nothing.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/leviathan-dev/leviathan/bench/benchresults"
)

func main() {
	in := flag.String("results", "bench/results.json", "results file to read")
	out := flag.String("out", "bench/RESULTS.md", "report to write (\"-\": standard output)")
	flag.Parse()
	data, err := os.ReadFile(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	var doc results
	if err := json.Unmarshal(data, &doc); err != nil {
		fmt.Fprintf(os.Stderr, "report: %s: %v\n", *in, err)
		os.Exit(1)
	}
	var b strings.Builder
	write(&b, doc, machine(), commit(), time.Now().UTC())
	if *out == "-" {
		fmt.Print(b.String())
		return
	}
	if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s\n", *out)
}

// results is what the report reads of bench/results.json (each benchmark
// writes its own key; see its program for the rest).
type results struct {
	Git map[string]map[string]struct {
		MedianS   float64 `json:"median_s"`
		P95S      float64 `json:"p95_s"`
		BytesDown int64   `json:"bytes_down"`
		PeakRSSMB float64 `json:"peak_rss_mb"`
	} `json:"git"`
	GitRTT *struct {
		RTTMs         float64 `json:"rtt_ms"`
		PathDepth     int     `json:"path_depth"`
		MinimalNeeded int64   `json:"minimal_round_trips_needed"`
		Large         map[string]struct {
			MedianS    float64 `json:"median_s"`
			P95S       float64 `json:"p95_s"`
			RoundTrips int64   `json:"round_trips"`
			Requests   int64   `json:"requests"`
			Conns      int64   `json:"conns"`
		} `json:"large"`
	} `json:"git_rtt"`
	Projector *struct {
		Events              int     `json:"events"`
		Replay              float64 `json:"replay_events_per_s"`
		ReplaySlowest       float64 `json:"replay_slowest_events_per_s"`
		ReplayFastest       float64 `json:"replay_fastest_events_per_s"`
		ReadLimit           float64 `json:"read_limit_events_per_s"`
		Ratio               float64 `json:"replay_to_read_ratio"`
		SummaryP50          float64 `json:"summary_p50_ms"`
		SummaryP99          float64 `json:"summary_p99_ms"`
		SummaryP50Replay    float64 `json:"summary_p50_under_replay_ms"`
		SummaryP99Replay    float64 `json:"summary_p99_under_replay_ms"`
		HeapBytesPerAttempt float64 `json:"bytes_per_attempt"`
		RSSBytesPerAttempt  float64 `json:"rss_bytes_per_attempt"`
	} `json:"projector"`
	Pipeline map[string]json.RawMessage `json:"pipeline"`
}

type level struct {
	Attempts     int     `json:"attempts"`
	AttemptsPerS float64 `json:"attempts_per_s"`
	Runs         int     `json:"runs"`
	Min          float64 `json:"attempts_per_s_min"`
	Max          float64 `json:"attempts_per_s_max"`
	P50S         float64 `json:"p50_s"`
	P95S         float64 `json:"p95_s"`
	P99S         float64 `json:"p99_s"`
}

type wan struct {
	RTTMs          float64 `json:"rtt_ms"`
	Attempts       int     `json:"attempts"`
	P50S           float64 `json:"p50_s"`
	GitRoundTrips  float64 `json:"git_round_trips"`
	GitRequests    float64 `json:"git_requests"`
	APIRoundTrips  float64 `json:"api_round_trips"`
	APIRequests    float64 `json:"api_requests"`
	InProcessP50S  float64 `json:"inprocess_p50_s"`
	InProcessRatio float64 `json:"pipeline_to_inprocess"`
}

func mark(met bool) string {
	if met {
		return "met"
	}
	return "**missed**"
}

func write(w io.Writer, r results, mach, sha string, now time.Time) {
	fmt.Fprintf(w, "# Benchmark results\n\nWritten by `make bench` (bench/report from bench/results.json) on %s.\n\n", now.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- Machine: %s\n- Commit when this file was written: %s (each benchmark's own is in bench/results.json where it records one)\n", mach, sha)
	fmt.Fprintf(w, "- Every process (benchmark, NATS, localforge, services, git) shares the machine's cores. Figures move with its load: compare runs of one machine, one after the other.\n\n")

	if p := r.Pipeline; p != nil {
		fmt.Fprintf(w, "## Pipeline (`make bench-pipeline`)\n\n")
		var pacing, date, sha string
		_ = json.Unmarshal(p["pacing"], &pacing)
		_ = json.Unmarshal(p["date"], &date)
		_ = json.Unmarshal(p["commit"], &sha)
		fmt.Fprintf(w, "Every service a process of its own against one nats-server and localforge on loopback, small repositories; %s. Measured %s at commit %s.\n\n", pacing, date, sha)
		fmt.Fprintf(w, "| run | attempts | attempts/s (median of rounds) | rounds: slowest–fastest | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|---:|\n")
		var keys []string
		for k := range p {
			if strings.HasPrefix(k, "c") || k == "inprocess_c1" {
				var l level
				if json.Unmarshal(p[k], &l) == nil && l.Attempts > 0 {
					keys = append(keys, k)
				}
			}
		}
		slices.SortFunc(keys, func(a, b string) int { return order(a) - order(b) })
		lv := map[string]level{}
		for _, k := range keys {
			var l level
			_ = json.Unmarshal(p[k], &l)
			lv[k] = l
			spread := "one round"
			if l.Runs > 1 {
				spread = fmt.Sprintf("%d rounds: %.1f–%.1f", l.Runs, l.Min, l.Max)
			}
			fmt.Fprintf(w, "| %s | %d | %.1f | %s | %.0f | %.0f | %.0f |\n", k, l.Attempts, l.AttemptsPerS, spread, l.P50S*1e3, l.P95S*1e3, l.P99S*1e3)
		}
		var overhead float64
		_ = json.Unmarshal(p["overhead_ratio_c1"], &overhead)
		var overheadRounds []float64
		_ = json.Unmarshal(p["overhead_ratio_c1_rounds"], &overheadRounds)
		var cpu map[string]float64
		_ = json.Unmarshal(p["cpu_ms_per_attempt"], &cpu)
		fmt.Fprintf(w, "\nCPU per attempt, each process's own counters (children that ended included: localforge's git), over every attempt of the run:\n\n| process | CPU ms per attempt |\n|---|---:|\n")
		names := make([]string, 0, len(cpu))
		for n := range cpu {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			fmt.Fprintf(w, "| %s | %.2f |\n", n, cpu[n])
		}
		fmt.Fprintf(w, "\nTargets:\n\n")
		if l, ok := lv["c32"]; ok {
			fmt.Fprintf(w, "- ≥ 40 attempts/s at concurrency 32: %.1f, %s\n", l.AttemptsPerS, mark(l.AttemptsPerS >= 40))
		}
		if l, ok := lv["c1"]; ok {
			fmt.Fprintf(w, "- p99 ≤ 250 ms at concurrency 1: %.0f ms, %s\n", l.P99S*1e3, mark(l.P99S <= 0.25))
		}
		if overhead > 0 {
			rounds := ""
			if len(overheadRounds) > 1 {
				rounds = " (each round's own: " + benchresults.FormatRatios(overheadRounds) + ")"
			}
			fmt.Fprintf(w, "- pipeline ≤ 1.3× the in-process chain at concurrency 1 (p50): %.2f×%s, %s\n", overhead, rounds, mark(overhead <= 1.3))
		}
		for _, n := range names {
			if n == "nats-server" || n == "localforge" {
				continue
			}
			fmt.Fprintf(w, "- %s ≤ 5 ms CPU per attempt: %.2f ms, %s\n", n, cpu[n], mark(cpu[n] <= 5))
		}
		var steps, ipSteps []struct {
			From  string  `json:"from"`
			To    string  `json:"to"`
			P50Ms float64 `json:"p50_ms"`
		}
		_ = json.Unmarshal(p["steps_c1"], &steps)
		_ = json.Unmarshal(p["inprocess_steps_c1"], &ipSteps)
		if len(steps) > 0 {
			fmt.Fprintf(w, "\nWhere an attempt's time goes at concurrency 1 (median time between its events, as the server stored them):\n\n| from | to | ms |\n|---|---|---:|\n")
			for _, s := range steps {
				fmt.Fprintf(w, "| %s | %s | %.1f |\n", s.From, s.To, s.P50Ms)
			}
		}
		if len(ipSteps) > 0 {
			fmt.Fprintf(w, "\nThe in-process chain's parts (median):\n\n| part | ms |\n|---|---:|\n")
			for _, s := range ipSteps {
				fmt.Fprintf(w, "| %s | %.1f |\n", s.From, s.P50Ms)
			}
		}
		var wn wan
		if raw, ok := p["wan"]; ok && json.Unmarshal(raw, &wn) == nil && wn.Attempts > 0 {
			fmt.Fprintf(w, "\nAt %.0f ms round-trip time (bench/rttproxy in front of localforge: one RTT per request, two per new connection), %d attempts one at a time: pipeline p50 %.0f ms, the in-process chain %.0f ms (%.2f×). Per attempt: git %.1f requests (%.1f round trips), API %.1f requests (%.1f round trips).\n",
				wn.RTTMs, wn.Attempts, wn.P50S*1e3, wn.InProcessP50S*1e3, wn.InProcessRatio, wn.GitRequests, wn.GitRoundTrips, wn.APIRequests, wn.APIRoundTrips)
		}
		fmt.Fprintf(w, "\nVariation: each concurrency ran in rounds interleaved with the others; the throughput is the rounds' median, with the slowest and fastest round beside it; the latencies are over every round's attempts.\n\n")
	}

	if g := r.Git; g != nil {
		fmt.Fprintf(w, "## Git path (`make bench-git`)\n\nOne attempt's git work (fetch, edit, commit, push) on loopback.\n\n| repo | approach | median s | p95 s | bytes down | peak RSS MB |\n|---|---|---:|---:|---:|---:|\n")
		for _, repo := range []string{"small", "large"} {
			for _, a := range []string{"minimal", "blob-none", "shallow", "cli-blob-none", "cli-depth1"} {
				if x, ok := g[repo][a]; ok {
					fmt.Fprintf(w, "| %s | %s | %.3f | %.3f | %d | %.1f |\n", repo, a, x.MedianS, x.P95S, x.BytesDown, x.PeakRSSMB)
				}
			}
		}
		if l := g["large"]; l != nil && l["minimal"].MedianS > 0 {
			m := l["minimal"]
			fmt.Fprintf(w, "\nTargets (large): median ≤ 0.15 s: %.3f, %s; ≥ 25× faster than cli-depth1: %.1f×, %s; ≥ 3× faster than cli-blob-none: %.1f×, %s; bytes down ≤ 16 KB: %d, %s; peak RSS ≤ 64 MB: %.1f, %s.\n",
				m.MedianS, mark(m.MedianS <= 0.15), l["cli-depth1"].MedianS/m.MedianS, mark(l["cli-depth1"].MedianS/m.MedianS >= 25),
				l["cli-blob-none"].MedianS/m.MedianS, mark(l["cli-blob-none"].MedianS/m.MedianS >= 3),
				m.BytesDown, mark(m.BytesDown <= 16<<10), m.PeakRSSMB, mark(m.PeakRSSMB <= 64))
		}
		fmt.Fprintf(w, "\nVariation within the run: p95 against the median.\n\n")
	}
	if g := r.GitRTT; g != nil && len(g.Large) > 0 {
		fmt.Fprintf(w, "## Git path at %.0f ms RTT (`make bench-git`, its RTT phase)\n\nCold connections each attempt; the backlog's path is %d directory deep, for which the protocol needs %d round trips.\n\n| approach | median s | p95 s | round trips | requests | connections |\n|---|---:|---:|---:|---:|---:|\n", g.RTTMs, g.PathDepth, g.MinimalNeeded)
		for _, a := range []string{"minimal", "cli-blob-none", "cli-depth1"} {
			if x, ok := g.Large[a]; ok {
				fmt.Fprintf(w, "| %s | %.3f | %.3f | %d | %d | %d |\n", a, x.MedianS, x.P95S, x.RoundTrips, x.Requests, x.Conns)
			}
		}
		m, b := g.Large["minimal"], g.Large["cli-blob-none"]
		if m.MedianS > 0 && b.MedianS > 0 {
			fmt.Fprintf(w, "\nTargets: round trips ≤ %d: %d, %s; ≥ 1.5× faster than cli-blob-none: %.1f×, %s.\n\n",
				g.MinimalNeeded, m.RoundTrips, mark(m.RoundTrips <= g.MinimalNeeded), b.MedianS/m.MedianS, mark(b.MedianS/m.MedianS >= 1.5))
		}
	}
	if p := r.Projector; p != nil {
		fmt.Fprintf(w, "## Projector (`make bench-projector`)\n\nReplay of %d events from a restarted NATS server, median of the run's replays.\n\n", p.Events)
		fmt.Fprintf(w, "| figure | value | target |\n|---|---:|---|\n")
		fmt.Fprintf(w, "| replay events/s | %.0f (slowest %.0f, fastest %.0f) | ≥ 250,000: %s |\n", p.Replay, p.ReplaySlowest, p.ReplayFastest, mark(p.Replay >= 250000))
		if p.ReadLimit > 0 {
			fmt.Fprintf(w, "| read limit events/s (same reads, nothing decoded) | %.0f | |\n", p.ReadLimit)
			fmt.Fprintf(w, "| replay ÷ read limit | %.3f | ≥ 0.6: %s |\n", p.Ratio, mark(p.Ratio >= 0.6))
		}
		fmt.Fprintf(w, "| summary p50 / p99 ms, idle | %.3f / %.3f | p99 ≤ 2 ms: %s |\n", p.SummaryP50, p.SummaryP99, mark(p.SummaryP99 <= 2))
		if p.SummaryP99Replay > 0 {
			fmt.Fprintf(w, "| summary p50 / p99 ms, while a replay runs | %.3f / %.3f | |\n", p.SummaryP50Replay, p.SummaryP99Replay)
		}
		fmt.Fprintf(w, "| heap bytes per attempt | %.0f | ≤ 2,048: %s |\n", p.HeapBytesPerAttempt, mark(p.HeapBytesPerAttempt <= 2048))
		if p.RSSBytesPerAttempt != 0 {
			fmt.Fprintf(w, "| process RSS bytes per attempt | %.0f | ≤ 2,048: %s |\n", p.RSSBytesPerAttempt, mark(p.RSSBytesPerAttempt <= 2048))
		}
		fmt.Fprintf(w, "\nVariation within the run: the slowest and fastest replay.\n")
	}
}

func order(k string) int {
	var n int
	if _, err := fmt.Sscanf(k, "c%d", &n); err == nil {
		return n
	}
	return 1 << 20
}

// machine describes this machine: CPU model, cores, memory.
func machine() string {
	model := runtime.GOARCH
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			var kb int64
			if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
				mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%s, %d cores%s, %s", model, runtime.NumCPU(), mem, runtime.Version())
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	sha := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		sha += " (with uncommitted changes)"
	}
	return sha
}
