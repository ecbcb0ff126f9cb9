package api

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/projector"
	"github.com/leviathan-dev/leviathan/services/projector/internal/projtest"
)

const testToken = "s3cret-test-token"

func setupStream(t *testing.T) *stage.Resources { return projtest.Stream(t) }

func publish(t *testing.T, res *stage.Resources, envs []events.Envelope) int {
	return projtest.Publish(t, res, envs)
}

// running is a projector running in the test, with the API over it.
type running struct {
	p   *projector.Projector
	srv *httptest.Server
}

// startProjector starts a projector on res and the API over it; both stop
// when the test ends.
func startProjector(t *testing.T, res *stage.Resources, cfg projector.Config) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Logger, cfg.Registerer = projtest.Quiet(), reg
	p := projector.New(res, cfg)
	cp := New(p, res, Config{Token: testToken, Logger: projtest.Quiet(), Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})})
	r := &running{p: p, srv: httptest.NewServer(cp.Handler())}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("projector: %v", err)
		}
		r.srv.Close()
	})
	return r
}

// waitCaughtUp waits until the projector is ready and has applied the
// stream's last message.
func (r *running) waitCaughtUp(t *testing.T, res *stage.Resources) {
	t.Helper()
	info, err := res.Stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for !r.p.Ready() {
		select {
		case <-ctx.Done():
			t.Fatal("projector never ready")
		case <-time.After(time.Millisecond):
		}
	}
	if err := r.p.WaitApplied(ctx, info.State.LastSeq); err != nil {
		t.Fatalf("applied %d of %d: %v", r.p.Applied(), info.State.LastSeq, err)
	}
}

func (r *running) get(t *testing.T, path, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// happy is the graph of one successful attempt.
const happy = "map[Attempt:1 Commit:1 PullRequest:1 Target:1 Task:1] map[DEPENDS_ON:2 PRODUCED:2]"
