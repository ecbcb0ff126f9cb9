package stage

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of one delivery, the outcome label of the stage metrics.
const (
	OutcomeSucceeded = "succeeded" // handled, next event published, acked
	OutcomeRetried   = "retried"   // transient error, redelivered later
	OutcomeFailed    = "failed"    // attempt.failed published, message terminated
	OutcomeAbandoned = "abandoned" // left for redelivery (shutdown, injected crash)
	OutcomeDropped   = "dropped"   // not attributable to an attempt, terminated
)

// Metrics are the Prometheus metrics of the stage runners of one process:
// how many deliveries each stage handled, by outcome, and how long the
// handler took. A nil *Metrics records nothing.
type Metrics struct {
	deliveries *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	duplicates prometheus.Counter
}

// NewMetrics creates the stage metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leviathan_stage_deliveries_total",
			Help: "Attempt events a stage handled, by stage and outcome (succeeded, retried, failed, abandoned, dropped).",
		}, []string{"stage", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "leviathan_stage_handle_seconds",
			Help: "Time a stage's handler took for one delivery, by stage and outcome.",
			// From a local edit (milliseconds) to a slow forge (tens of seconds).
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"stage", "outcome"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leviathan_duplicate_requests_total",
			Help: "Requests ignored because their attempt id already runs from another request (request.duplicate).",
		}),
	}
	for _, c := range []prometheus.Collector{m.deliveries, m.duration, m.duplicates} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Duplicate counts a request ignored as a duplicate.
func (m *Metrics) Duplicate() {
	if m != nil {
		m.duplicates.Inc()
	}
}

// observe records one delivery.
func (m *Metrics) observe(stage, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.deliveries.WithLabelValues(stage, outcome).Inc()
	if outcome != OutcomeDropped {
		m.duration.WithLabelValues(stage, outcome).Observe(d.Seconds())
	}
}
