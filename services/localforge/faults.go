package localforge

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault makes the API fail matching requests the way GitHub fails them, so
// forge drivers can be tested against secondary rate limits and outages.
type Fault struct {
	// Method matches the request method; "" matches any.
	Method string
	// Path matches when it is a substring of the request path; "" matches any.
	Path string
	// Status is the response status. 403 and 429 are answered as GitHub's
	// secondary rate limit; anything else with the status text as message.
	Status int
	// RetryAfter is sent as the Retry-After header (whole seconds) when > 0.
	RetryAfter time.Duration
	// Times is how many matching requests fail; 0 means one.
	Times int
}

// InjectFault queues flt. Faults are checked in the order injected, after
// authentication and rate limiting, and each match uses up one of Times.
func (f *Forge) InjectFault(flt Fault) {
	if flt.Times <= 0 {
		flt.Times = 1
	}
	f.faults.mu.Lock()
	defer f.faults.mu.Unlock()
	f.faults.queue = append(f.faults.queue, flt)
}

// ClearFaults drops every queued fault.
func (f *Forge) ClearFaults() {
	f.faults.mu.Lock()
	defer f.faults.mu.Unlock()
	f.faults.queue = nil
}

// faultQueue holds injected faults; it has its own lock so a fault never
// waits behind a PR mutation.
type faultQueue struct {
	mu    sync.Mutex
	queue []Fault
}

// match returns the first fault matching r and uses it up.
func (q *faultQueue) match(r *http.Request) (Fault, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, flt := range q.queue {
		if (flt.Method == "" || strings.EqualFold(flt.Method, r.Method)) && strings.Contains(r.URL.Path, flt.Path) {
			if q.queue[i].Times--; q.queue[i].Times == 0 {
				q.queue = append(q.queue[:i], q.queue[i+1:]...)
			}
			return flt, true
		}
	}
	return Fault{}, false
}

// serve writes the fault's response.
func (flt Fault) serve(w http.ResponseWriter) {
	if flt.RetryAfter > 0 {
		// Round up: a client must never retry before the fault would allow.
		secs := (flt.RetryAfter + time.Second - 1) / time.Second
		w.Header().Set("Retry-After", strconv.Itoa(int(secs)))
	}
	e := apiError{Message: http.StatusText(flt.Status)}
	if flt.Status == http.StatusForbidden || flt.Status == http.StatusTooManyRequests {
		// go-github recognises a secondary rate limit by this URL suffix.
		e = apiError{
			Message:          "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
			DocumentationURL: "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
		}
	}
	writeError(w, flt.Status, e)
}
