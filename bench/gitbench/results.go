package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
)

// result is one approach on one repo, as bench/results.json holds it.
type result struct {
	MedianS   float64 `json:"median_s"`
	P95S      float64 `json:"p95_s"`
	BytesDown int64   `json:"bytes_down"`
	PeakRSSMB float64 `json:"peak_rss_mb"`
}

// gitResults is the "git" key of bench/results.json: repo → approach →
// result.
type gitResults map[string]map[string]result

// summarize reduces the samples of one approach.
func summarize(samples []sample, peakKB int64) result {
	secs := make([]float64, len(samples))
	for i, s := range samples {
		secs[i] = s.seconds
	}
	down := make([]int64, len(samples))
	for i, s := range samples {
		down[i] = s.bytesDown
	}
	return result{
		MedianS:   round(median(secs), 4),
		P95S:      round(p95(secs), 4),
		BytesDown: medianInt(down),
		PeakRSSMB: round(float64(peakKB)/1024, 1),
	}
}

// median of xs (the mean of the middle two for an even count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// p95 is the nearest-rank 95th percentile: the smallest value with at least
// 95% of xs at or below it; 0 for none. With fewer than 20 samples it is the
// maximum.
func p95(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	rank := int(math.Ceil(0.95 * float64(len(s))))
	return s[max(rank, 1)-1]
}

// medianInt is the median of integers, rounded down; 0 for none.
func medianInt(xs []int64) int64 {
	f := make([]float64, len(xs))
	for i, x := range xs {
		f[i] = float64(x)
	}
	return int64(median(f))
}

func servedOf(samples []sample) []int64 {
	out := make([]int64, len(samples))
	for i, s := range samples {
		out[i] = s.served
	}
	return out
}

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

// row is one line of the printed table.
type row struct {
	repo, approach string
	r              result
	served         int64
	n              int
	rssBound       bool // the peak RSS is an upper bound
}

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "repo\tapproach\tmedian s\tp95 s\tbytes down\tserved (all)\tpeak RSS MB\truns\t")
	for _, r := range rows {
		bound := ""
		if r.rssBound {
			bound = "≤ "
		}
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%s\t%s\t%s%.1f\t%d\t\n", r.repo, r.approach, r.r.MedianS, r.r.P95S,
			humanBytes(r.r.BytesDown), humanBytes(r.served), bound, r.r.PeakRSSMB, r.n)
	}
	tw.Flush()
}

// printRatios prints how much faster minimal is than each CLI baseline, by
// median, per repo.
func printRatios(w io.Writer, res gitResults) {
	for _, repo := range []string{"small", "large"} {
		byApproach, ok := res[repo]
		if !ok {
			continue
		}
		min, ok := byApproach[approachMinimal]
		if !ok || min.MedianS == 0 {
			continue
		}
		for _, base := range []string{approachCLIDepth1, approachCLIBlobNone} {
			if b, ok := byApproach[base]; ok {
				fmt.Fprintf(w, "%s: minimal is %.1f× faster than %s (median %.3f s vs %.3f s)\n",
					repo, b.MedianS/min.MedianS, base, min.MedianS, b.MedianS)
			}
		}
	}
}

// Targets of the large repo's minimal strategy (the issue that added this
// benchmark). They are reported, never enforced: the numbers are what
// they are.
const (
	targetMedianS       = 0.15
	targetBytesDown     = 16_000
	targetVsCLIDepth1   = 25
	targetVsCLIBlobNone = 3
	targetPeakRSSMB     = 64
)

func printTargets(w io.Writer, res gitResults) {
	large, ok := res["large"]
	if !ok {
		return
	}
	m, ok := large[approachMinimal]
	if !ok {
		return
	}
	fmt.Fprintln(w, "\ntargets, large repo, minimal:")
	check := func(name string, ok bool, got string) {
		verdict := "met"
		if !ok {
			verdict = "MISSED"
		}
		fmt.Fprintf(w, "  %-34s %-8s %s\n", name, verdict, got)
	}
	check(fmt.Sprintf("median ≤ %.2f s", targetMedianS), m.MedianS <= targetMedianS, fmt.Sprintf("%.3f s", m.MedianS))
	check(fmt.Sprintf("bytes down ≤ %d", targetBytesDown), m.BytesDown <= targetBytesDown, fmt.Sprintf("%d bytes", m.BytesDown))
	check(fmt.Sprintf("peak RSS ≤ %d MB", targetPeakRSSMB), m.PeakRSSMB <= targetPeakRSSMB, fmt.Sprintf("%.1f MB", m.PeakRSSMB))
	if b, ok := large[approachCLIDepth1]; ok && m.MedianS > 0 {
		x := b.MedianS / m.MedianS
		check(fmt.Sprintf("≥ %d× faster than cli-depth1", targetVsCLIDepth1), x >= targetVsCLIDepth1, fmt.Sprintf("%.1f×", x))
	}
	if b, ok := large[approachCLIBlobNone]; ok && m.MedianS > 0 {
		x := b.MedianS / m.MedianS
		check(fmt.Sprintf("≥ %d× faster than cli-blob-none", targetVsCLIBlobNone), x >= targetVsCLIBlobNone, fmt.Sprintf("%.1f×", x))
	}
}

// humanBytes formats n in binary units.
func humanBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
}
