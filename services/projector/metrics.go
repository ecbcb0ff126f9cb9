package projector

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leviathan-dev/leviathan/services/projector/graph"
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
	// Stages ended by events applied once ready (a replay at start does
	// not count history again after every restart).
	stages       *prometheus.CounterVec
	stageSeconds *prometheus.HistogramVec
}

// stageEnded counts a stage that ended and observes how long it took.
func (m *metrics) stageEnded(stage, outcome string, took time.Duration, known bool) {
	m.stages.WithLabelValues(stage, outcome).Inc()
	if known {
		m.stageSeconds.WithLabelValues(stage, outcome).Observe(took.Seconds())
	}
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
		stages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leviathan_projector_stage_attempts_total",
			Help: "Attempts that ended a stage (clone, backlog-edit, push, pr; other for stages Leviathan does not have), by outcome (ok, failed, rejected), in events applied since the projector was ready.",
		}, []string{"stage", "outcome"}),
		stageSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "leviathan_projector_stage_duration_seconds",
			Help:    "Time an attempt spent in a stage, from the event that started it to the one that ended it (event timestamps), in events applied since the projector was ready.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"stage", "outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.applied, m.duplicates, m.undecodable, m.lag, m.seq, m.snapshots, m.snapshotBytes,
			m.stages, m.stageSeconds,
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
	attemptsDesc = prometheus.NewDesc("leviathan_projector_attempts", "Attempts in the graph, by status.", []string{"status"}, nil)
	nodesDesc    = prometheus.NewDesc("leviathan_projector_nodes", "Nodes of the graph, by type.", []string{"type"}, nil)
	edgesDesc    = prometheus.NewDesc("leviathan_projector_edges", "Edges of the graph, by type.", []string{"type"}, nil)
)

func (c *sizeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- attemptsDesc
	ch <- nodesDesc
	ch <- edgesDesc
}

func (c *sizeCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.p.Graph()
	for status, v := range g.AttemptsByStatus() {
		ch <- prometheus.MustNewConstMetric(attemptsDesc, prometheus.GaugeValue, float64(v), status)
	}
	n := g.Counts()
	for typ, v := range map[string]int{
		graph.NodeTarget: n.Targets, graph.NodeTask: n.Tasks, graph.NodeAttempt: n.Attempts, graph.NodeCommit: n.Commits, graph.NodePullRequest: n.PullRequests,
	} {
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(v), typ)
	}
	ch <- prometheus.MustNewConstMetric(edgesDesc, prometheus.GaugeValue, float64(n.DependsOn), graph.EdgeDependsOn)
	ch <- prometheus.MustNewConstMetric(edgesDesc, prometheus.GaugeValue, float64(n.Produced), graph.EdgeProduced)
}
