package forge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Pacing defaults (DESIGN.md §7, GitHub's "best practices for using the
// REST API": no concurrent mutating requests, at least one second apart;
// after a secondary rate limit without Retry-After, wait at least a minute
// and longer on each repeat).
const (
	DefaultMinInterval      = time.Second
	DefaultMaxPaceWait      = 5 * time.Second
	DefaultRateLimitBackoff = time.Minute
	// maxBackoffDoubling bounds the exponential backoff of repeated
	// header-less rate limits: 60 s, 2 min, 4 min, 8 min, 16 min.
	maxBackoffDoubling = 4
)

// limiter is the politeness of one token: it spaces mutating calls and
// holds every call while the forge has said to wait. It is an
// http.RoundTripper so that every request through the token's client obeys
// it, whichever API method made it; go-github never sees a rate-limited
// answer, so its own client-side rate-limit memory (which, for a secondary
// limit, would wait until the primary window's reset, up to an hour) never
// engages.
type limiter struct {
	next http.RoundTripper
	now  func() time.Time

	interval time.Duration // between the end of one mutating call and the start of the next
	timeout  time.Duration // for the forge's answer, once the call is sent
	maxWait  time.Duration // longest in-line wait; beyond it, RetryError
	backoff  time.Duration // wait after a rate limit that names none

	sem   chan struct{} // one mutating call at a time
	turns Turns         // shared with other processes; nil: this one only

	mu        sync.Mutex
	nextSlot  time.Time // earliest start of the next mutating call
	holdUntil time.Time // no calls at all before this
	strikes   int       // consecutive rate limits that named no wait
}

func newLimiter(next http.RoundTripper, now func() time.Time, interval, maxWait, backoff, timeout time.Duration) *limiter {
	return &limiter{next: next, now: now, interval: interval, maxWait: maxWait, backoff: backoff, timeout: timeout, sem: make(chan struct{}, 1)}
}

// cancelOnClose ends a request's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// Turns shares one forge account's mutating calls among processes (the
// replicas of a service).
type Turns interface {
	// Take waits up to wait for the account's turn (longer is an error).
	// done ends the turn after hold: the limiter holds it for the minimum
	// interval after its call, so the next call anywhere starts no sooner,
	// by this process's clock alone; 0 ends it at once (no call was made).
	Take(ctx context.Context, wait time.Duration) (done func(hold time.Duration), err error)
}

// Pauser is Turns that also share a rate limit's pause: whatever call of
// one process meets a rate limit, read or write, every process sharing the
// turns holds all its calls at once instead of learning of the limit from
// its own next refusal.
type Pauser interface {
	// Pause holds every sharer's calls for d, timed by this process's clock.
	Pause(d time.Duration)
	// Paused reports whether another process's pause is on.
	Paused(ctx context.Context) bool
}

// pausedRecheck is how long a call waits when another process has paused
// the account, before it looks again: the pause's holder alone knows its
// length.
const pausedRecheck = time.Second

// MaxTurn bounds RequestTimeout plus MinInterval when Turns is set. A
// Turns implementation keeps a turn while its holder lives (stage.Turns
// renews it), however long it is held, and lets it lapse soon after the
// holder dies.
const MaxTurn = 100 * time.Second

// mutating reports whether a request changes state on the forge.
func mutating(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

func (l *limiter) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := l.held(req.Context()); err != nil {
		closeBody(req)
		return nil, err
	}
	hold := l.interval
	if mutating(req.Method) {
		release, err := l.acquire(req.Context())
		if err != nil {
			closeBody(req)
			return nil, err
		}
		// The turn is held the interval after the call, or for the whole
		// wait a rate limit asks for: then every replica sharing the turns
		// holds its mutating calls too, at once.
		defer func() { release(hold) }()
	}
	// The request timeout bounds the forge's answer, body included, not
	// the wait for a slot above.
	ctx, cancel := context.WithTimeout(req.Context(), l.timeout)
	req = req.WithContext(ctx)
	start := l.now()
	resp, err := l.next.RoundTrip(req)
	if err != nil {
		cancel()
		if mutating(req.Method) {
			// No answer (a timeout, a dropped connection): the forge may
			// still be carrying the call out. The next one, here or in
			// another replica, waits as long again as this one ran, so it
			// does not overlap a call the forge is still working on.
			hold = max(hold, l.now().Sub(start)+l.interval)
		}
		return nil, err
	}
	if wait, limited := l.rateLimitWait(resp); limited {
		hold = max(hold, wait)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		_ = resp.Body.Close()
		l.mu.Lock()
		later := false
		if until := l.now().Add(wait); until.After(l.holdUntil) {
			l.holdUntil, later = until, true
		}
		l.mu.Unlock()
		// Only a pause that ends later than the one on already replaces
		// it (this process's pause lock is re-entered, not added to).
		if p, ok := l.turns.(Pauser); ok && later {
			p.Pause(wait)
		}
		cancel()
		return nil, &RetryError{After: wait, Err: fmt.Errorf("%w: HTTP %d on %s %s", ErrRateLimited, resp.StatusCode, req.Method, req.URL.Path)}
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	if resp.StatusCode < 400 && mutating(req.Method) {
		// Secondary limits are mostly about mutating calls: only one
		// that goes through shows the limit has passed.
		l.mu.Lock()
		l.strikes = 0
		l.mu.Unlock()
	}
	return resp, nil
}

// held returns a RetryError while the forge's last rate limit lasts, met
// here or by another process sharing the turns.
func (l *limiter) held(ctx context.Context) error {
	l.mu.Lock()
	wait := l.holdUntil.Sub(l.now())
	l.mu.Unlock()
	if wait > 0 {
		return &RetryError{After: wait, Err: fmt.Errorf("%w: holding all calls with this token", ErrRateLimited)}
	}
	if p, ok := l.turns.(Pauser); ok && p.Paused(ctx) {
		return &RetryError{After: pausedRecheck, Err: fmt.Errorf("%w: another replica met a rate limit; holding all calls with this token", ErrRateLimited)}
	}
	return nil
}

// acquire waits for the token's mutating-call slot: the previous mutating
// call has finished and interval has passed since. It waits in-line up to
// maxWait; for a longer wait it reserves nothing and returns a RetryError,
// so a stage hands the message back to the server instead of blocking.
func (l *limiter) acquire(ctx context.Context) (release func(hold time.Duration), err error) {
	deadline := l.now().Add(l.maxWait)
	t := time.NewTimer(l.maxWait)
	defer t.Stop()
	select {
	case l.sem <- struct{}{}:
	case <-t.C:
		return nil, &RetryError{After: l.interval, Err: fmt.Errorf("%w: another mutating call is in flight", ErrPaced)}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	l.mu.Lock()
	slot := l.nextSlot
	l.mu.Unlock()
	done := func(time.Duration) {}
	if l.turns != nil {
		end, err := l.turns.Take(ctx, max(deadline.Sub(l.now()), 0))
		if err != nil {
			<-l.sem
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, &RetryError{After: l.interval, Err: fmt.Errorf("%w: %v", ErrPaced, err)}
		}
		done = end
	}
	giveUp := func() {
		done(0)
		<-l.sem
	}
	wait := slot.Sub(l.now())
	if slot.After(deadline) {
		giveUp()
		return nil, &RetryError{After: wait, Err: fmt.Errorf("%w: next slot in %s", ErrPaced, wait.Round(time.Millisecond))}
	}
	if wait > 0 {
		w := time.NewTimer(wait)
		select {
		case <-w.C:
		case <-ctx.Done():
			w.Stop()
			giveUp()
			return nil, ctx.Err()
		}
	}
	return func(hold time.Duration) {
		l.mu.Lock()
		// This process's own next call waits for the slot (a replica's
		// turn is re-entered by its own next call; the hold binds the
		// others).
		l.nextSlot = l.now().Add(max(l.interval, hold))
		l.mu.Unlock()
		done(hold)
		<-l.sem
	}, nil
}

// rateLimitWait says whether resp is a rate limit and how long to wait, by
// GitHub's documented rules: on 403 or 429, honour Retry-After; else, when
// X-RateLimit-Remaining is 0, wait until X-RateLimit-Reset; else (a
// secondary limit that names no time) back off, doubling on each repeat.
// A 403 with none of these signs and no rate-limit message is a permission
// error, not a rate limit.
func (l *limiter) rateLimitWait(resp *http.Response) (time.Duration, bool) {
	if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusTooManyRequests {
		return 0, false
	}
	now := l.now()
	if d, ok := retryAfter(resp.Header.Get("Retry-After"), now); ok {
		return d, true
	}
	if resp.Header.Get("X-RateLimit-Remaining") == "0" {
		if reset, err := strconv.ParseInt(resp.Header.Get("X-RateLimit-Reset"), 10, 64); err == nil {
			return max(time.Unix(reset, 0).Sub(now), time.Second), true
		}
	}
	if resp.StatusCode == http.StatusForbidden && !isRateLimited(resp) {
		return 0, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.backoff << min(l.strikes, maxBackoffDoubling)
	l.strikes++
	return d, true
}

// retryAfter parses a Retry-After header: seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return max(time.Duration(s)*time.Second, time.Second), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), time.Second), true
	}
	return 0, false
}

// isRateLimited reports whether a 403/429 answer says it is a rate limit
// (in its headers or its message) rather than a refusal. It peeks at the
// body and puts it back.
func isRateLimited(resp *http.Response) bool {
	if resp.StatusCode == http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "" ||
		resp.Header.Get("X-RateLimit-Remaining") == "0" {
		return true
	}
	if resp.Body == nil {
		return false
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(data)))
	var e struct {
		Message          string `json:"message"`
		DocumentationURL string `json:"documentation_url"`
	}
	_ = json.Unmarshal(data, &e)
	text := strings.ToLower(e.Message + " " + e.DocumentationURL)
	return strings.Contains(text, "rate limit") || strings.Contains(text, "rate-limit") || strings.Contains(text, "abuse")
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}
