package stack

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/egress/egresstest"
)

// TestHostileRepoURLsEndToEnd publishes a request for every URL of the
// hostile corpus, as `nats pub` and as `leviathan.api.submit` would: each
// is rejected naming target.repo_url, nothing reaches a listener on
// loopback, and the services still serve a valid request afterwards.
func TestHostileRepoURLsEndToEnd(t *testing.T) {
	var hits atomic.Int32
	bait := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "bait", http.StatusUnauthorized)
	}))
	defer bait.Close()
	_, baitPort, _ := net.SplitHostPort(strings.TrimPrefix(bait.URL, "http://"))
	s := startTestStack(t, nil)
	_, forgePort, _ := net.SplitHostPort(strings.TrimPrefix(s.ForgeURL, "http://"))
	urls := egresstest.HostileURLs(forgePort, baitPort)

	body := func(u string) []byte {
		b, _ := json.Marshal(map[string]any{
			"target": map[string]any{"name": "demo", "repo_url": u},
			"task":   map[string]any{"id": "T-h", "title": "hostile", "allowed_paths": []string{events.BacklogPath}},
		})
		return b
	}
	start := time.Now()
	for i, u := range urls {
		publishBare(t, s, "a-hostile-"+strconv.Itoa(i), body(u))
	}
	var slowest time.Duration
	for i, u := range urls {
		evs := attemptEvents(t, s, "a-hostile-"+strconv.Itoa(i))
		var p events.Rejected
		// The rejection is the attempt's only event: refused on its first
		// delivery, never retried.
		if len(evs) != 1 || evs[0].EventType != events.AttemptRejected || evs[0].DecodePayload(&p) != nil || p.Field != "target.repo_url" {
			t.Errorf("%s: %v (%+v), want only attempt.rejected naming target.repo_url", u, types(evs), p)
			continue
		}
		slowest = max(slowest, evs[0].Timestamp.Sub(start))
	}
	t.Logf("%d hostile URLs rejected, the last %v after the first was published", len(urls), slowest.Round(time.Millisecond))

	for _, u := range urls {
		msg, err := s.NATS().Request("leviathan.api.submit", []byte(`{"attempt_id":"a-sub",`+string(body(u))[1:]), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var out events.SubmitResponse
		if err := json.Unmarshal(msg.Data, &out); err != nil || out.Field != "target.repo_url" || out.Error == "" || out.Status != "" {
			t.Errorf("submit %s answered %s", u, msg.Data)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("%d requests reached the loopback listener", n)
	}
	publishBare(t, s, "a-after-hostile", bareRequest(s, "T-after"))
	if evs := attemptEvents(t, s, "a-after-hostile"); evs[len(evs)-1].EventType != events.AttemptSucceeded {
		t.Fatalf("after the hostile requests: %v", types(evs))
	}
}
