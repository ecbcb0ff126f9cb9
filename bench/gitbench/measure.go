package main

import (
	"context"
	"fmt"
	"io"

	"github.com/leviathan-dev/leviathan/bench/rttproxy"
	"github.com/leviathan-dev/leviathan/events"
)

// sample is one measured attempt.
type sample struct {
	seconds   float64
	bytesDown int64 // gitx: Snapshot.BytesFetched; CLI: served
	served    int64 // response bytes the server sent during the attempt (fetch and push)
	rssKB     int64 // peak RSS so far: the worker's VmHWM, the largest of the CLI's commands
	// git and api are what crossed the RTT proxy during the attempt, by
	// class (zero without a proxy).
	git, api rttproxy.Count
}

// measurement is one approach on one repo: warm-up attempts, then the
// measured ones, each pushing a branch of its own that is deleted right
// after. measureRepo interleaves the attempts of all approaches.
type measurement struct {
	srv      *forgeServer
	repo     string
	approach string
	runID    string
	exe      string
	timeBin  string // GNU time, for the CLI's peak RSS; "" if there is none
	warmup   int
	n        int
	progress io.Writer
	// url is the clone URL the approach uses; "" means the server's own.
	url string
	// proxy, when set, is the RTT proxy that url points at: its counts
	// are reset before each attempt and read after it.
	proxy *rttproxy.Proxy
	// cold makes the worker close its idle connections before each
	// attempt, so that every attempt opens its own as the CLI's fresh
	// processes do (and as a service does when attempts are far apart).
	cold bool

	do      attemptFunc
	finish  func(ctx context.Context) (peakKB int64, err error)
	close   func() // releases what start took, after finish or on failure
	samples []sample
	peakKB  int64
	exact   bool // false: peakKB is only an upper bound (no GNU time)
}

// attemptFunc runs one attempt that pushes branch.
type attemptFunc func(ctx context.Context, branch string, task events.Task) (sample, error)

// measureRepo measures every approach on one repo in rounds: each round
// makes one attempt per approach (rotating which goes first), so that a
// change in the machine's load during the run weighs on all approaches
// alike instead of on whichever ran at the time. Approaches with fewer
// runs sit out the last rounds.
func measureRepo(ctx context.Context, ms []*measurement) error {
	for _, m := range ms {
		if err := m.start(ctx); err != nil {
			return fmt.Errorf("%s / %s: %w", m.repo, m.approach, err)
		}
		defer m.close()
	}
	rounds := 0
	for _, m := range ms {
		rounds = max(rounds, m.warmup+m.n)
	}
	for r := range rounds {
		for k := range ms {
			m := ms[(r+k)%len(ms)]
			if r >= m.warmup+m.n {
				continue
			}
			s, err := m.attempt(ctx, r, m.do)
			if err != nil {
				return fmt.Errorf("%s / %s: %w", m.repo, m.approach, err)
			}
			m.peakKB = max(m.peakKB, s.rssKB)
			if r >= m.warmup {
				m.samples = append(m.samples, s)
			}
		}
	}
	for _, m := range ms {
		peak, err := m.finish(ctx)
		if err != nil {
			return fmt.Errorf("%s / %s: %w", m.repo, m.approach, err)
		}
		if peak == 0 {
			return fmt.Errorf("%s / %s: no peak RSS measured", m.repo, m.approach)
		}
		m.peakKB = peak
	}
	return nil
}

// start prepares the approach: a worker process for gitx, a runner for
// the CLI.
//
// The peak RSS is the worker's VmHWM over its whole life for gitx; for the
// CLI, the largest of its commands in a probe attempt run through GNU time
// after the measured ones (so the wrapper costs the timed attempts
// nothing), or without GNU time each command's ru_maxrss (an upper bound).
func (m *measurement) start(ctx context.Context) error {
	url := m.url
	if url == "" {
		url = m.srv.cloneURL(m.repo)
	}
	m.exact = true
	m.close = func() {}
	switch m.approach {
	case approachCLIDepth1, approachCLIBlobNone:
		cli := newCLIRunner(url, m.srv.token, m.approach == approachCLIBlobNone)
		m.do = func(ctx context.Context, branch string, task events.Task) (sample, error) {
			rep, err := cli.attempt(ctx, branch, task)
			return sample{seconds: rep.seconds, rssKB: rep.rssKB}, err
		}
		if m.timeBin == "" {
			m.exact = false
			m.finish = func(context.Context) (int64, error) { return m.peakKB, nil }
			return nil
		}
		wrapped := *cli
		wrapped.timeBin = m.timeBin
		m.finish = func(ctx context.Context) (int64, error) {
			s, err := m.attempt(ctx, -1, func(ctx context.Context, branch string, task events.Task) (sample, error) {
				rep, err := wrapped.attempt(ctx, branch, task)
				return sample{seconds: rep.seconds, rssKB: rep.rssKB}, err
			})
			return s.rssKB, err
		}
		return nil
	default:
		w, err := startWorker(ctx, m.exe, url, m.approach, m.srv.token, m.cold)
		if err != nil {
			return err
		}
		m.close = func() {
			if w != nil {
				w.kill()
			}
		}
		m.do = func(ctx context.Context, branch string, task events.Task) (sample, error) {
			rep, err := w.do(workerRequest{Branch: branch, Task: task})
			if err == nil && rep.Strategy != m.approach {
				err = fmt.Errorf("the worker used strategy %q", rep.Strategy)
			}
			return sample{seconds: rep.Seconds, bytesDown: rep.BytesFetched, rssKB: rep.PeakRSSKB}, err
		}
		m.finish = func(context.Context) (int64, error) {
			err := w.finish()
			w = nil
			// VmHWM never decreases: the last reply holds the peak.
			return m.peakKB, err
		}
		return nil
	}
}

// attempt runs attempt i (-1: the RSS probe) with do, checks and deletes
// the branch it pushed, and reports progress.
func (m *measurement) attempt(ctx context.Context, i int, do attemptFunc) (sample, error) {
	if err := ctx.Err(); err != nil {
		return sample{}, err
	}
	label := fmt.Sprint(i)
	if i < 0 {
		label = "rss"
	}
	branch := fmt.Sprintf("bench/%s/%s/%s", m.approach, label, randomHex(4))
	task := events.Task{
		ID:           fmt.Sprintf("BENCH-%s-%s-%s", m.runID, m.approach, label),
		Title:        "Benchmark task",
		Priority:     "low",
		AllowedPaths: []string{"area-00/"},
	}
	// Attempts are sequential, so the server's count over one attempt is
	// that attempt's.
	before := m.srv.served.Load()
	if m.proxy != nil {
		m.proxy.Reset()
	}
	s, err := do(ctx, branch, task)
	s.served = m.srv.served.Load() - before
	if m.proxy != nil {
		c := m.proxy.Counts()
		s.git, s.api = c["git"], c["api"]
	}
	if err == nil {
		err = m.srv.checkBranch(ctx, m.repo, branch, task.ID)
	}
	// Delete the branch even after a failure: the push may have landed
	// before the error.
	derr := m.srv.deleteBranch(m.repo, branch)
	if err != nil {
		return s, fmt.Errorf("attempt %s: %w", label, err)
	}
	if derr != nil {
		return s, fmt.Errorf("deleting %s: %w", branch, derr)
	}
	if s.bytesDown == 0 {
		s.bytesDown = s.served // the CLI: only the server sees its bytes
	}
	kind := "run " + label
	switch {
	case i < 0:
		fmt.Fprintf(m.progress, "  %-13s rss probe (through GNU time, not timed): peak RSS %.1f MB\n", m.approach, float64(s.rssKB)/1024)
		return s, nil
	case i < m.warmup:
		kind = "warm-up " + label
	}
	rt := ""
	if m.proxy != nil {
		rt = fmt.Sprintf("  git: %d round trips, %d requests, %d new conns", s.git.RoundTrips, s.git.Requests, s.git.Conns)
		if s.api != (rttproxy.Count{}) {
			rt += fmt.Sprintf(", api %d", s.api.RoundTrips)
		}
	}
	fmt.Fprintf(m.progress, "  %-13s %-9s %7.3f s  %10s down  %10s served%s\n", m.approach, kind, s.seconds, humanBytes(s.bytesDown), humanBytes(s.served), rt)
	return s, nil
}
