// Package app assembles Leviathan's services into processes: one service
// per process for a deployment (RunService), or everything in one process
// with embedded NATS and localforge for a laptop (StartStack).
package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/natsperm"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/backlogedit"
	"github.com/leviathan-dev/leviathan/services/clone"
	"github.com/leviathan-dev/leviathan/services/pr"
	"github.com/leviathan-dev/leviathan/services/projector"
	"github.com/leviathan-dev/leviathan/services/projector/api"
	"github.com/leviathan-dev/leviathan/services/push"
)

// Version is reported by nats micro and the logs; main sets it.
var Version = "0.1.0-dev"

// StageNames are the services that consume one stage each, in flow order.
var StageNames = []string{"clone", "backlog-edit", "push", "pr"}

// ServiceNames are every service `leviathan run` accepts.
var ServiceNames = append(append([]string{}, StageNames...), "projector", "localforge")

// deps is what the services of one process share.
type deps struct {
	nc       *nats.Conn
	res      *stage.Resources
	logger   *slog.Logger
	git      gitx.Remote // credentials only; URL comes from each request
	egress   *egress.Policy
	deadline time.Duration // of each handler run, when set (LEVIATHAN_STAGE_DEADLINE)
	workers  int           // messages handled at once, when set (LEVIATHAN_STAGE_WORKERS)
	forge    forge.Driver
	instance string
	// tune adjusts every stage's runner configuration (tests shorten
	// AckWait and inject crashes).
	tune func(*stage.Config)
	// reg is the process's metrics registry, served at /metrics; metrics
	// are the stage metrics registered in it.
	reg     *prometheus.Registry
	metrics *stage.Metrics
}

// forgeTurns shares the forge account's mutating calls with the other
// replicas (forge.GitHubConfig.Turns).
func (d *deps) forgeTurns(identity string) forge.Turns {
	return d.res.Turns(identity, d.instance)
}

// component is one running part of a process.
type component struct {
	name  string
	run   func(ctx context.Context) error
	stats func() stage.Stats
	micro func(svc micro.Service) error // extra endpoints
}

// newInstanceID names this process in actor ids: the host (the pod name
// on Kubernetes) plus a random suffix.
func newInstanceID() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h + "-" + randomHex(2)
	}
	return randomHex(4)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Dial connects to NATS as leviathan-<name>; opts add to that, e.g.
// credentials. It returns the JetStream context too.
func Dial(url, name string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name("leviathan-" + name)}, opts...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// Connect opens a service's NATS connection (reconnecting forever) and
// its resources. With manage, the process sets them up itself (Setup, as
// `leviathan dev` does); otherwise it binds to what the set-up step made,
// waiting until it has run. opts add to the defaults, e.g. credentials.
func Connect(ctx context.Context, url, name string, replicas int, manage bool, logger *slog.Logger, opts ...nats.Option) (*nats.Conn, *stage.Resources, error) {
	// Its own reply inbox, so that its NATS user may be the only one
	// allowed to read its replies (natsperm).
	// It keeps trying to connect when NATS is not there yet (start order
	// does not matter), and says when it loses and regains it.
	base := []nats.Option{
		nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.CustomInboxPrefix(natsperm.InboxPrefix(name)),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if err != nil && !c.IsClosed() { // not our own Close
				logger.Warn("NATS disconnected; reconnecting", "url", url, "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { logger.Info("NATS connected", "url", c.ConnectedUrlRedacted()) }),
	}
	nc, js, err := Dial(url, name, append(base, opts...)...)
	if err != nil {
		return nil, nil, err
	}
	var res *stage.Resources
	if manage {
		if err = Setup(ctx, js, replicas, logger); err == nil {
			res, err = stage.Ensure(ctx, js, stage.ResourceConfig{Replicas: replicas})
		}
	} else {
		stageName := ""
		if slices.Contains(StageNames, name) {
			stageName = name
		}
		res, err = openWhenSetUp(ctx, js, stageName, logger)
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("NATS resources: %w", err)
	}
	return nc, res, nil
}

// stageComponent builds the runner of one stage service.
func stageComponent(ctx context.Context, name string, d *deps) (*component, error) {
	pub := &stage.Publisher{JS: d.res.JS, Actor: name + "-" + d.instance}
	logger := d.logger.With("service", name)
	var cfg stage.Config
	var h stage.Handler
	var extra func(micro.Service) error
	switch name {
	case "clone":
		svc := clone.New(d.res, pub, clone.Config{Git: d.git, URLs: d.egress, Logger: logger, Metrics: d.metrics})
		cfg, h = clone.StageConfig(), svc
		extra = func(m micro.Service) error {
			return m.AddEndpoint("submit", stage.Endpoint(logger, "submit", func(r micro.Request) {
				// Each request gets its own deadline; the start-up ctx
				// may be long gone.
				rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = r.RespondJSON(svc.Submit(rctx, r.Data(), "user:api"))
			}), micro.WithEndpointSubject("leviathan.api.submit"))
		}
	case "backlog-edit":
		cfg, h = backlogedit.StageConfig(), backlogedit.New(d.res, logger)
	case "push":
		cfg, h = push.StageConfig(), push.New(d.res, push.Config{Git: d.git, Logger: logger})
	case "pr":
		if d.forge == nil {
			return nil, errors.New("pr: no forge configured (set LEVIATHAN_FORGE_TOKEN)")
		}
		svc := pr.New(d.res, d.forge)
		cfg, h = pr.StageConfig(), svc
		extra = func(m micro.Service) error {
			return m.AddEndpoint("open-for-task", stage.Endpoint(logger, "open-for-task", func(r micro.Request) {
				var q events.OpenForTaskRequest
				if err := json.Unmarshal(r.Data(), &q); err != nil {
					_ = r.RespondJSON(events.OpenForTaskReply{Error: "bad request: " + err.Error()})
					return
				}
				rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = r.RespondJSON(svc.OpenForTask(rctx, q))
			}), micro.WithEndpointSubject(events.OpenForTaskSubject))
		}
	default:
		return nil, fmt.Errorf("unknown service %q", name)
	}
	cfg.Logger = logger
	cfg.Metrics = d.metrics
	if d.deadline > 0 {
		cfg.Deadline = d.deadline
	}
	if d.workers > 0 {
		cfg.Workers = d.workers
	}
	if d.tune != nil {
		d.tune(&cfg)
	}
	r, err := stage.NewRunner(ctx, d.res, pub, cfg, h)
	if err != nil {
		return nil, err
	}
	return &component{name: name, run: r.Run, stats: r.Stats, micro: extra}, nil
}

// startComponents registers each component with nats micro and starts
// them all. It returns once every component is registered (so the submit
// endpoint answers); wait returns when ctx ends or a component fails, after
// all have stopped.
func startComponents(ctx context.Context, d *deps, comps []*component) (wait func() error, err error) {
	ctx, cancel := context.WithCancel(ctx)
	var svcs []micro.Service
	stopAll := func() {
		for _, svc := range svcs {
			_ = svc.Stop()
		}
	}
	for _, c := range comps {
		stats := c.stats
		if stats == nil {
			stats = func() stage.Stats { return stage.Stats{} }
		}
		svc, err := stage.Register(d.nc, c.name, Version, stats)
		if err != nil {
			cancel()
			stopAll()
			return nil, err
		}
		svcs = append(svcs, svc)
		if c.micro != nil {
			if err := c.micro(svc); err != nil {
				cancel()
				stopAll()
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	// The endpoints' subscriptions must reach the server before anyone is
	// told the process is up: a client on another connection asking at
	// once would otherwise get "no responders".
	if err := d.nc.FlushTimeout(10 * time.Second); err != nil {
		cancel()
		stopAll()
		return nil, fmt.Errorf("register services: %w", err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(comps))
	for _, c := range comps {
		wg.Add(1)
		go func(c *component) {
			defer wg.Done()
			if err := c.run(ctx); err != nil {
				errc <- fmt.Errorf("%s: %w", c.name, err)
				cancel()
			}
		}(c)
	}
	return func() error {
		wg.Wait()
		cancel()
		stopAll()
		close(errc)
		return <-errc
	}, nil
}

// projectorComponent runs the projector and its API on addr.
func projectorComponent(d *deps, ln net.Listener, token, tokenFile string) (*component, *projector.Projector) {
	logger := d.logger.With("service", "projector")
	p := projector.New(d.res, projector.Config{Logger: logger, Registerer: d.reg})
	cp := api.New(p, d.res, api.Config{Token: token, Metrics: metricsHandler(d.reg), Logger: logger, TokenFile: tokenFile})
	srv := &http.Server{Handler: cp.Handler(), ReadHeaderTimeout: 10 * time.Second}
	run := func(ctx context.Context) error {
		ctx, stop := context.WithCancel(ctx)
		defer stop()
		served := make(chan error, 1)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				served <- err
			}
		}()
		projected := make(chan error, 1)
		go func() { projected <- p.Run(ctx) }()
		var err error
		ended := false
		select {
		case <-ctx.Done():
		case err = <-served:
		case err = <-projected:
			ended = true
		}
		stop()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		// The projector stores its last snapshot on the way out: wait for
		// it while NATS is still there.
		if !ended {
			if perr := <-projected; err == nil {
				err = perr
			}
		}
		return err
	}
	// Its status counts the events it has applied (a projector has no
	// failures of its own and no message in flight).
	stats := func() stage.Stats { return stage.Stats{Processed: int64(p.Graph().Counts().Applied)} }
	return &component{name: "projector", run: run, stats: stats}, p
}

// healthHandler serves /healthz, /readyz and /metrics for a stage service.
func healthHandler(ready func() bool, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"status": "not ready"})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"status": "ready"})
	})
	return mux
}
