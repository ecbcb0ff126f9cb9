package localforge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Fault makes the API fail matching requests the way GitHub fails them, so
// forge drivers can be tested against rate limits, outages, slow answers
// and lost responses.
//
// A fault applies to the next Times matching requests (or one per entry of
// Statuses). For each, in order: the forge works for Slow, whether or not
// the client still waits; the request takes effect first when
// AfterEffect is set; then the answer is delayed by Delay; then the
// connection is dropped (Drop), or the fault's status is answered, or —
// for status 0 — the request is served normally, late.
type Fault struct {
	// Method matches the request method; "" matches any.
	Method string `json:"method,omitempty"`
	// Path matches when it is a substring of the request path; "" matches any.
	Path string `json:"path,omitempty"`
	// Status is the response status. 403 and 429 are answered as GitHub's
	// secondary rate limit unless Message or RateLimitReset says otherwise;
	// 401 as "Bad credentials"; anything else with the status text.
	Status int `json:"status,omitempty"`
	// Statuses is a sequence: the n-th matching request is answered with
	// Statuses[n], where 0 serves the request normally. When set it
	// replaces Status and Times.
	Statuses []int `json:"statuses,omitempty"`
	// RetryAfter is sent as the Retry-After header (whole seconds, rounded
	// up) when > 0.
	RetryAfter time.Duration `json:"-"`
	// RateLimitReset, when > 0, answers as an exhausted primary rate limit:
	// X-RateLimit-Remaining: 0 and X-RateLimit-Reset this far from now.
	RateLimitReset time.Duration `json:"-"`
	// Message replaces the error message (e.g. 403 "Resource not
	// accessible by integration", a permission error, not a rate limit).
	Message string `json:"message,omitempty"`
	// Body, when set, is sent as the JSON body instead of an error: with
	// status 200 and "[]" it imitates a list that lags behind a write.
	Body json.RawMessage `json:"body,omitempty"`
	// Delay holds the answer back this long (latency; a client with a
	// shorter timeout gives up).
	Delay time.Duration `json:"-"`
	// Slow keeps the forge at work on the request this long before
	// anything else, and it finishes even when the client has given up
	// (a slow write on GitHub's side is not undone by a timeout).
	Slow time.Duration `json:"-"`
	// Drop closes the connection without an answer.
	Drop bool `json:"drop,omitempty"`
	// AfterEffect lets the request take effect before the fault answers:
	// "the PR was created, then the gateway answered 502".
	AfterEffect bool `json:"after_effect,omitempty"`
	// Times is how many matching requests fail; 0 means one.
	Times int `json:"times,omitempty"`
}

// MarshalJSON writes durations as Go duration strings ("1.5s"), the
// shape of the admin endpoint.
func (flt Fault) MarshalJSON() ([]byte, error) {
	type plain Fault // without methods: no recursion
	out := struct {
		plain
		RetryAfter     string `json:"retry_after,omitempty"`
		RateLimitReset string `json:"rate_limit_reset,omitempty"`
		Delay          string `json:"delay,omitempty"`
		Slow           string `json:"slow,omitempty"`
	}{plain: plain(flt)}
	if flt.RetryAfter > 0 {
		out.RetryAfter = flt.RetryAfter.String()
	}
	if flt.RateLimitReset > 0 {
		out.RateLimitReset = flt.RateLimitReset.String()
	}
	if flt.Delay > 0 {
		out.Delay = flt.Delay.String()
	}
	if flt.Slow > 0 {
		out.Slow = flt.Slow.String()
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads durations as strings ("2s") and rejects unknown
// fields, so a typo in a test's fault is an error, not a silent no-op.
func (flt *Fault) UnmarshalJSON(data []byte) error {
	type plain Fault
	var in struct {
		plain
		RetryAfter     string `json:"retry_after,omitempty"`
		RateLimitReset string `json:"rate_limit_reset,omitempty"`
		Delay          string `json:"delay,omitempty"`
		Slow           string `json:"slow,omitempty"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return err
	}
	*flt = Fault(in.plain)
	for _, d := range []struct {
		name string
		s    string
		dst  *time.Duration
	}{{"retry_after", in.RetryAfter, &flt.RetryAfter}, {"rate_limit_reset", in.RateLimitReset, &flt.RateLimitReset}, {"delay", in.Delay, &flt.Delay}, {"slow", in.Slow, &flt.Slow}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v < 0 {
			return fmt.Errorf("%s: %q is not a duration such as \"1.5s\"", d.name, d.s)
		}
		*d.dst = v
	}
	return nil
}

// validate rejects faults that could never do what they say.
func (flt Fault) validate() error {
	for _, s := range append([]int{flt.Status}, flt.Statuses...) {
		if s != 0 && (s < 100 || s > 599) {
			return fmt.Errorf("status %d is not an HTTP status", s)
		}
	}
	if flt.Status == 0 && len(flt.Statuses) == 0 && !flt.Drop && flt.Delay == 0 && flt.Slow == 0 {
		return fmt.Errorf("a fault needs a status, statuses, drop, delay or slow")
	}
	return nil
}

// InjectFault queues flt. Faults are checked in the order injected, after
// authentication and rate limiting, and each match uses up one of Times.
func (f *Forge) InjectFault(flt Fault) {
	if len(flt.Statuses) > 0 {
		flt.Times = len(flt.Statuses)
	}
	if flt.Times <= 0 {
		flt.Times = 1
	}
	f.faults.mu.Lock()
	defer f.faults.mu.Unlock()
	f.faults.queue = append(f.faults.queue, &queuedFault{Fault: flt})
}

// ClearFaults drops every queued fault.
func (f *Forge) ClearFaults() {
	f.faults.mu.Lock()
	defer f.faults.mu.Unlock()
	f.faults.queue = nil
}

// Faults returns the faults still queued, with what is left of each.
func (f *Forge) Faults() []Fault {
	f.faults.mu.Lock()
	defer f.faults.mu.Unlock()
	out := make([]Fault, 0, len(f.faults.queue))
	for _, q := range f.faults.queue {
		flt := q.Fault
		if len(flt.Statuses) > 0 {
			flt.Statuses = flt.Statuses[q.used:]
		}
		flt.Times -= q.used
		out = append(out, flt)
	}
	return out
}

// faultQueue holds injected faults; it has its own lock so a fault never
// waits behind a PR mutation.
type faultQueue struct {
	mu    sync.Mutex
	queue []*queuedFault
}

type queuedFault struct {
	Fault
	used int
}

// step is what one matching request gets from a fault.
type step struct {
	Fault
	status int // 0: serve normally (after the delay)
}

// match returns the step of the first fault matching r and uses it up.
func (q *faultQueue) match(r *http.Request) (step, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, flt := range q.queue {
		if (flt.Method == "" || strings.EqualFold(flt.Method, r.Method)) && strings.Contains(r.URL.Path, flt.Path) {
			st := step{Fault: flt.Fault, status: flt.Status}
			if len(flt.Statuses) > 0 {
				st.status = flt.Statuses[flt.used]
			}
			if flt.used++; flt.used >= flt.Times {
				q.queue = append(q.queue[:i], q.queue[i+1:]...)
			}
			return st, true
		}
	}
	return step{}, false
}

// serve answers one faulted request; next is the real handler.
func (st step) serve(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if st.Slow > 0 {
		time.Sleep(st.Slow)
		// The forge finishes what it started, whether the client waits
		// or not.
		r = r.WithContext(context.WithoutCancel(r.Context()))
	}
	var rec *recorder
	if st.AfterEffect {
		rec = newRecorder()
		next.ServeHTTP(rec, r)
	}
	if st.Delay > 0 {
		t := time.NewTimer(st.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done(): // the client gave up; so do we
			t.Stop()
			return
		}
	}
	if st.Drop {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
			return
		}
		// No hijacking (HTTP/2): abort the response instead.
		panic(http.ErrAbortHandler)
	}
	if st.status == 0 {
		if rec != nil {
			rec.replay(w)
			return
		}
		next.ServeHTTP(w, r)
		return
	}
	h := w.Header()
	if st.RetryAfter > 0 {
		// Round up: a client must never retry before the fault would allow.
		secs := (st.RetryAfter + time.Second - 1) / time.Second
		h.Set("Retry-After", strconv.Itoa(int(secs)))
	}
	if len(st.Body) > 0 {
		h.Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(st.status)
		_, _ = w.Write(st.Body)
		return
	}
	e := apiError{Message: http.StatusText(st.status)}
	switch {
	case st.RateLimitReset > 0:
		h.Set("X-RateLimit-Remaining", "0")
		h.Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Add(st.RateLimitReset).Unix(), 10))
		e = apiError{
			Message:          "API rate limit exceeded for user ID 1.",
			DocumentationURL: "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-primary-rate-limits",
		}
	case st.Message != "":
		e = apiError{Message: st.Message}
	case st.status == http.StatusUnauthorized:
		e = apiError{Message: "Bad credentials"}
	case st.status == http.StatusNotFound:
		e = apiError{Message: "Not Found"}
	case st.status == http.StatusForbidden || st.status == http.StatusTooManyRequests:
		// go-github recognises a secondary rate limit by this URL suffix.
		e = apiError{
			Message:          "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
			DocumentationURL: "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
		}
	}
	writeError(w, st.status, e)
}

// recorder keeps a response so a fault can discard it or send it late.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (rec *recorder) Header() http.Header { return rec.header }

func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return rec.body.Write(b)
}

func (rec *recorder) WriteHeader(status int) {
	if rec.status == 0 {
		rec.status = status
	}
}

func (rec *recorder) replay(w http.ResponseWriter) {
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(max(rec.status, http.StatusOK))
	_, _ = w.Write(rec.body.Bytes())
}
