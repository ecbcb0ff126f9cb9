package main

// The RTT phase: after the loopback measurement, some approaches are timed
// again through bench/rttproxy, which puts the forge a round-trip time away
// (one RTT per HTTP request, -rtt-handshake more per new connection, no
// bandwidth limit), and each attempt's round trips are counted. On
// loopback every approach's time is mostly CPU; at WAN latency it is mostly
// round trips, which is where a fetch of a few objects in several requests
// could lose to one clone.

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/leviathan-dev/leviathan/bench/rttproxy"
	"github.com/leviathan-dev/leviathan/events"
)

// defaultRTTApproaches are measured in the RTT phase: minimal against the
// two CLI baselines.
var defaultRTTApproaches = []string{approachMinimal, approachCLIBlobNone, approachCLIDepth1}

// Targets of the RTT phase, large repo, minimal (the issue that added
// it). Reported, never enforced.
const (
	targetRTT              = 50 * time.Millisecond
	targetRTTVsCLIBlobNone = 1.5
)

// rttResult is one approach on one repo through the RTT proxy.
type rttResult struct {
	MedianS float64 `json:"median_s"`
	P95S    float64 `json:"p95_s"`
	// RoundTrips is what the git requests of one attempt (fetch and
	// push) cost: one per request and the handshake per new connection.
	// All are sequential, so the attempt waits RoundTrips × RTT. The most
	// of any measured attempt.
	RoundTrips int64 `json:"round_trips"`
	// RoundTripsMin is the fewest of any attempt, set only when the
	// attempts differed.
	RoundTripsMin int64 `json:"round_trips_min,omitempty"`
	// Requests and Conns are the git requests and new connections of the
	// attempt with the most round trips.
	Requests int64 `json:"requests"`
	Conns    int64 `json:"conns"`
	// APIRoundTrips is the same for the forge's API (the most of any
	// attempt): the git work makes no API request, so 0.
	APIRoundTrips int64 `json:"api_round_trips"`
	Runs          int   `json:"runs"`
}

// gitRTTResults is the "git_rtt" key of bench/results.json.
type gitRTTResults struct {
	RTTMs               float64 `json:"rtt_ms"`
	HandshakeRoundTrips int     `json:"handshake_round_trips"` // per new connection
	// PathDepth is how many directories the backlog's path passes
	// through; MinimalNeeded the round trips the protocol needs for an
	// attempt's git work at that depth (neededRoundTrips).
	PathDepth     int                  `json:"path_depth"`
	MinimalNeeded int64                `json:"minimal_round_trips_needed"`
	Small         map[string]rttResult `json:"small,omitempty"`
	Large         map[string]rttResult `json:"large,omitempty"`
}

func (g *gitRTTResults) repo(name string) map[string]rttResult {
	switch name {
	case "small":
		return g.Small
	case "large":
		return g.Large
	}
	return nil
}

func (g *gitRTTResults) setRepo(name string, r map[string]rttResult) {
	switch name {
	case "small":
		g.Small = r
	case "large":
		g.Large = r
	}
}

// pathDepth is the number of directories on path.
func pathDepth(path string) int { return strings.Count(path, "/") }

// neededRoundTrips is the fewest sequential round trips in which smart
// HTTP (v0, stateless RPC, as gitx speaks it) can fetch the blob at path
// with no more than the objects on its path, and push a commit that
// changes it, over one new connection:
//
//   - GET info/refs?service=git-upload-pack: the branch's tip. Nothing
//     else names it, and every upload-pack request wants ids.
//   - d+1 POSTs to git-upload-pack for a path under d directories: the tip
//     commit with its root tree (filter tree:1), then one tree per
//     directory (tree:0), the file's own directory with its files
//     (combine:tree:1+blob:limit) so that the blob needs no request of
//     its own. Each wants an id that only the previous answer holds. One
//     request from the commit with tree:<d+2> would bring the blob too,
//     but also every tree of the repository down to depth d+1.
//   - POST git-receive-pack: the new objects and the ref update. A create
//     sends the zero id as the old one, so it needs no ref advertisement
//     (GET info/refs?service=git-receive-pack) first; gitx sends none.
//   - handshake round trips for the one connection all of them share.
func neededRoundTrips(path string, handshake int) int64 {
	d := pathDepth(path)
	return int64(1 + (d + 1) + 1 + handshake)
}

// summarizeRTT reduces the samples of one approach in the RTT phase.
func summarizeRTT(samples []sample) rttResult {
	secs := make([]float64, len(samples))
	var r rttResult
	for i, s := range samples {
		secs[i] = s.seconds
		if i == 0 || s.git.RoundTrips > r.RoundTrips {
			r.RoundTrips, r.Requests, r.Conns = s.git.RoundTrips, s.git.Requests, s.git.Conns
		}
		if i == 0 || s.git.RoundTrips < r.RoundTripsMin {
			r.RoundTripsMin = s.git.RoundTrips
		}
		r.APIRoundTrips = max(r.APIRoundTrips, s.api.RoundTrips)
	}
	if r.RoundTripsMin == r.RoundTrips {
		r.RoundTripsMin = 0
	}
	r.MedianS = round(median(secs), 4)
	r.P95S = round(p95(secs), 4)
	r.Runs = len(samples)
	return r
}

// rttRow is one line of the RTT phase's table.
type rttRow struct {
	repo, approach string
	r              rttResult
}

// measureRTT is the RTT phase: the approaches of cfg.rttApproaches on
// every repo, through a proxy cfg.rtt away, interleaved as the loopback
// phase is.
func measureRTT(ctx context.Context, cfg *config, srv *forgeServer, specs []repoSpec, exe, runID string, stdout io.Writer) (*gitRTTResults, []rttRow, error) {
	proxy, err := rttproxy.Start(rttproxy.Config{Target: srv.base, RTT: cfg.rtt, Handshake: cfg.rttHandshake, Classify: rttproxy.GitOrAPI})
	if err != nil {
		return nil, nil, err
	}
	defer proxy.Close()
	res := &gitRTTResults{
		RTTMs:               float64(cfg.rtt) / float64(time.Millisecond),
		HandshakeRoundTrips: cfg.rttHandshake,
		PathDepth:           pathDepth(events.BacklogPath),
		MinimalNeeded:       neededRoundTrips(events.BacklogPath, cfg.rttHandshake),
	}
	var rows []rttRow
	for _, spec := range specs {
		fmt.Fprintf(stdout, "measuring %s at %v RTT (%d per new connection): %s, interleaved, %d warm-up round(s) discarded\n",
			spec.Name, cfg.rtt, cfg.rttHandshake, strings.Join(cfg.rttApproaches, ", "), cfg.warmup)
		var ms []*measurement
		for _, approach := range cfg.rttApproaches {
			ms = append(ms, &measurement{
				srv: srv, repo: spec.Name, approach: approach, runID: runID, exe: exe,
				// No GNU time: its RSS probe would cost an attempt,
				// and peak RSS is the loopback phase's to report.
				timeBin: "",
				warmup:  cfg.warmup, n: cfg.rttN, progress: stdout,
				url: srv.cloneURLVia(proxy.URL(), spec.Name), proxy: proxy,
				// Every attempt opens its connections: the CLI's
				// processes cannot keep one, and the worker must not
				// carry one over from the attempt before.
				cold: true,
			})
		}
		if err := measureRepo(ctx, ms); err != nil {
			return nil, nil, fmt.Errorf("at %v RTT: %w", cfg.rtt, err)
		}
		byApproach := map[string]rttResult{}
		for _, m := range ms {
			r := summarizeRTT(m.samples)
			byApproach[m.approach] = r
			rows = append(rows, rttRow{repo: spec.Name, approach: m.approach, r: r})
		}
		res.setRepo(spec.Name, byApproach)
	}
	return res, rows, nil
}

// printRTT prints the RTT phase's table, minimal's speed-ups and the
// targets.
func printRTT(w io.Writer, res *gitRTTResults, rows []rttRow) {
	rtt := time.Duration(res.RTTMs * float64(time.Millisecond))
	fmt.Fprintf(w, "at %v RTT: one round trip per HTTP request, %d more per new connection, no bandwidth limit\n", rtt, res.HandshakeRoundTrips)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "repo\tapproach\tmedian s\tp95 s\tgit round trips\trequests\tconnections\tround trips × RTT s\tapi round trips\truns\t")
	for _, r := range rows {
		rts := fmt.Sprint(r.r.RoundTrips)
		if r.r.RoundTripsMin != 0 {
			rts = fmt.Sprintf("%d–%d", r.r.RoundTripsMin, r.r.RoundTrips)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%s\t%d\t%d\t%.3f\t%d\t%d\t\n", r.repo, r.approach, r.r.MedianS, r.r.P95S,
			rts, r.r.Requests, r.r.Conns, float64(r.r.RoundTrips)*rtt.Seconds(), r.r.APIRoundTrips, r.r.Runs)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, repo := range []string{"small", "large"} {
		byApproach := res.repo(repo)
		min, ok := byApproach[approachMinimal]
		if !ok || min.MedianS == 0 {
			continue
		}
		for _, base := range []string{approachCLIDepth1, approachCLIBlobNone} {
			if b, ok := byApproach[base]; ok {
				fmt.Fprintf(w, "%s at %v RTT: minimal is %.1f× faster than %s (median %.3f s vs %.3f s, %d round trips vs %d)\n",
					repo, rtt, b.MedianS/min.MedianS, base, min.MedianS, b.MedianS, min.RoundTrips, b.RoundTrips)
			}
		}
	}
	printRTTTargets(w, res, rtt)
}

func printRTTTargets(w io.Writer, res *gitRTTResults, rtt time.Duration) {
	m, ok := res.Large[approachMinimal]
	if !ok {
		return
	}
	fmt.Fprintf(w, "\ntargets, large repo, minimal, at %v RTT:\n", rtt)
	check := func(name string, ok bool, got string) {
		verdict := "met"
		if !ok {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "  %-34s %-8s %s\n", name, verdict, got)
	}
	d := res.PathDepth
	check(fmt.Sprintf("round trips ≤ %d (path depth %d)", res.MinimalNeeded, d), m.RoundTrips <= res.MinimalNeeded,
		fmt.Sprintf("%d: %d requests, %d connection(s); needed: 1 ref discovery, %d upload-pack (depth + 1), 1 receive-pack, %d for one connection",
			m.RoundTrips, m.Requests, m.Conns, d+1, res.HandshakeRoundTrips))
	if b, ok := res.Large[approachCLIBlobNone]; ok && m.MedianS > 0 {
		x := b.MedianS / m.MedianS
		got := fmt.Sprintf("%.1f×", x)
		if rtt != targetRTT {
			got += fmt.Sprintf(" (the target is at %v RTT, this is at %v)", targetRTT, rtt)
		}
		check(fmt.Sprintf("≥ %.1f× faster than cli-blob-none", targetRTTVsCLIBlobNone), x >= targetRTTVsCLIBlobNone, got)
	}
}
