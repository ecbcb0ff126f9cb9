package projector

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the projector's Prometheus metrics. With no registerer they
// are still updated, just never collected.
type metrics struct {
	applied       prometheus.Counter
	duplicates    prometheus.Counter
	undecodable   prometheus.Counter
	lag           prometheus.Gauge
	seq           prometheus.Gauge
	snapshots     *prometheus.CounterVec
	snapshotBytes prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, p *Projector) *metrics {
	m := &metrics{
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leviathan_projector_events_applied_total",
			Help: "Events applied to the graph (duplicates not counted).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leviathan_projector_events_duplicate_total",
			Help: "Events ignored because their event id was applied before.",
		}),
		undecodable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leviathan_projector_events_undecodable_total",
			Help: "Stream messages that were neither an event nor a bare request.",
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leviathan_projector_lag_events",
			Help: "Projection lag: messages in the stream after the last one applied, when it was applied.",
		}),
		seq: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leviathan_projector_applied_sequence",
			Help: "Stream sequence of the last message applied.",
		}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leviathan_projector_snapshots_total",
			Help: "Graph snapshots stored, by result (ok, error).",
		}, []string{"result"}),
		snapshotBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leviathan_projector_snapshot_bytes",
			Help: "Size of the last graph snapshot stored.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.applied, m.duplicates, m.undecodable, m.lag, m.seq, m.snapshots, m.snapshotBytes,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "leviathan_projector_ready",
				Help: "1 once the projector has caught up with the stream it found at start.",
			}, func() float64 {
				if p.Ready() {
					return 1
				}
				return 0
			}),
			&sizeCollector{p: p})
	}
	return m
}

// sizeCollector reports the graph's node and edge counts at scrape time.
type sizeCollector struct{ p *Projector }

var (
	nodesDesc = prometheus.NewDesc("leviathan_projector_nodes", "Nodes of the graph, by type.", []string{"type"}, nil)
	edgesDesc = prometheus.NewDesc("leviathan_projector_edges", "Edges of the graph, by type.", []string{"type"}, nil)
)

func (c *sizeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodesDesc
	ch <- edgesDesc
}

func (c *sizeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.p.Graph().Counts()
	for typ, v := range map[string]int{
		NodeTarget: n.Targets, NodeTask: n.Tasks, NodeAttempt: n.Attempts, NodeCommit: n.Commits, NodePullRequest: n.PullRequests,
	} {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(v), typ)
	}
	ch <- prometheus.MustNewConstMetric(edgesDesc, prometheus.GaugeValue, float64(n.DependsOn), EdgeDependsOn)
	ch <- prometheus.MustNewConstMetric(edgesDesc, prometheus.GaugeValue, float64(n.Produced), EdgeProduced)
}
