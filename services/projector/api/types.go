package api

import "github.com/leviathan-dev/leviathan/services/projector/graph"

// The answers of the API that clients decode (the leviathan CLI among
// them): they import this package, not the projector's.
type (
	// Summary is the body of GET /v1/graph/summary.
	Summary = graph.Summary
	// RecentEvent is one event of a Summary.
	RecentEvent = graph.RecentEvent
	// AttemptItem is one attempt of GET /v1/attempts.
	AttemptItem = graph.AttemptItem
	// FailureItem is one failure of GET /v1/failures.
	FailureItem = graph.FailureItem
)
