package graph

import (
	"time"
)

// Time is a timestamp as the API writes it: UTC, RFC 3339 with always six
// fractional digits (2026-01-28T12:00:27.555700Z), the microseconds
// upstream's datetimes carry. The fixed width makes timestamps sort as
// strings (upstream's operator console sorts them so); trimmed zeros,
// as Go's RFC3339Nano writes them, would not.
type Time struct{ time.Time }

// TimeLayout is the layout of Time's JSON.
const TimeLayout = "2006-01-02T15:04:05.000000Z07:00"

// MarshalJSON writes t in TimeLayout, in UTC.
func (t Time) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(TimeLayout)+2)
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, TimeLayout)
	return append(b, '"'), nil
}

// UnmarshalJSON reads any RFC 3339 time.
func (t *Time) UnmarshalJSON(b []byte) error {
	return t.Time.UnmarshalJSON(b)
}
