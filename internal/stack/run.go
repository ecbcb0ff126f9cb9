package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// ServiceConfig configures one service process.
type ServiceConfig struct {
	Name     string // one of ServiceNames
	NATSURL  string
	HTTPAddr string // /healthz and /readyz; the projector serves its API here
	// Listener, when set, is used instead of listening on HTTPAddr.
	Listener net.Listener
	Replicas int // of the stream and buckets (1 dev, 3 prod)
	// Deadline bounds one run of the stage's handler (default: 10 min for
	// clone, 2 min for the others); expiry is retried, and ends the attempt
	// with timeout on the last delivery.
	Deadline time.Duration
	// Workers is how many messages the stage handles at once (default
	// stage.DefaultWorkers; LEVIATHAN_STAGE_WORKERS).
	Workers int
	// ForgeRateLimit is localforge's primary rate limit, API requests per
	// hour (default 5000, GitHub's for a token;
	// LEVIATHAN_LOCALFORGE_RATE_LIMIT).
	ForgeRateLimit int
	// Setup makes the service create or update the NATS resources itself
	// (a one-user installation); otherwise it waits for the set-up step
	// (`leviathan setup`) and needs no right to manage JetStream.
	Setup bool
	// NATSOptions are extra connection options, such as credentials
	// (nats.UserInfo); main builds them from the environment.
	NATSOptions []nats.Option
	// Git credentials for target repositories (basic auth only).
	GitUsername, GitToken string
	// Forge credentials and API root for the pr service. The API root
	// also says which hosts clone, push and pr may send credentials to.
	ForgeToken, ForgeAPIURL string
	// AllowedHosts are repository hosts besides the forge's
	// (LEVIATHAN_ALLOWED_HOSTS); PrivateHosts may resolve to private
	// addresses (LEVIATHAN_PRIVATE_HOSTS). See egress.Config.
	AllowedHosts, PrivateHosts []string
	// Forge adds GitHub App authentication (also used for git by clone
	// and push) and the forge pacing.
	Forge ForgeConfig
	// ControlToken is the projector's bearer token.
	ControlToken string
	// DataDir is localforge's data directory.
	DataDir string
	Logger  *slog.Logger
}

func (c *ServiceConfig) validate() error {
	switch {
	case !slices.Contains(ServiceNames, c.Name):
		return fmt.Errorf("unknown service %q (one of %v)", c.Name, ServiceNames)
	case c.Name == "projector" && c.ControlToken == "":
		return errors.New("projector: LEVIATHAN_CONTROL_PLANE_TOKEN is required")
	case c.Name == "pr" && c.ForgeToken == "" && !c.Forge.IsApp():
		return errors.New("pr: LEVIATHAN_FORGE_TOKEN or a GitHub App (LEVIATHAN_GITHUB_APP_ID, ...) is required")
	case c.Name == "localforge" && c.ForgeToken == "":
		return errors.New("localforge: LEVIATHAN_FORGE_TOKEN is required")
	}
	return nil
}

// RunService runs one service until ctx is done: the process of one
// Kubernetes Deployment.
func RunService(ctx context.Context, cfg ServiceConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ln := cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return err
		}
	}
	if cfg.Name == "localforge" {
		return runLocalforge(ctx, cfg, ln)
	}
	// A stage serves its probes from the start: alive, and not ready until
	// it is connected and running (NATS may not be reachable yet; it keeps
	// trying). The projector serves them with its API.
	reg, metrics, err := newRegistry()
	if err != nil {
		ln.Close()
		return err
	}
	var running atomic.Bool
	var conn atomic.Pointer[nats.Conn]
	if cfg.Name != "projector" {
		ready := func() bool { c := conn.Load(); return running.Load() && c != nil && c.IsConnected() }
		srv := &http.Server{Handler: healthHandler(ready, metricsHandler(reg)), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	nc, res, err := Connect(ctx, cfg.NATSURL, cfg.Name, cfg.Replicas, cfg.Setup, cfg.Logger, cfg.NATSOptions...)
	if err != nil {
		if cfg.Name == "projector" {
			ln.Close()
		}
		return err
	}
	defer nc.Close()
	conn.Store(nc)
	cfg.ForgeAPIURL = NormalizeForgeAPIURL(cfg.ForgeAPIURL)
	pol, err := egress.New(egress.Config{ForgeAPIURL: cfg.ForgeAPIURL, Allowed: cfg.AllowedHosts, Private: cfg.PrivateHosts})
	if err != nil {
		return err
	}
	d := &deps{nc: nc, res: res, logger: cfg.Logger, instance: newInstanceID(), egress: pol, deadline: cfg.Deadline, workers: cfg.Workers,
		git: gitx.Remote{Username: cfg.GitUsername, Password: cfg.GitToken}, reg: reg, metrics: metrics}
	var comp *component
	if cfg.Name == "projector" {
		comp, _ = projectorComponent(d, ln, cfg.ControlToken, "")
	} else {
		if d.forge, d.git, err = cfg.Forge.clients(cfg.ForgeToken, cfg.ForgeAPIURL, d.git, cfg.Name == "pr", d.forgeTurns, pol); err != nil {
			return err
		}
		err = stage.RetryTransient(ctx, cfg.Logger, cfg.Name+" start", func() (err error) {
			comp, err = stageComponent(ctx, cfg.Name, d)
			return err
		})
		if err != nil {
			return err
		}
	}
	cfg.Logger.Info("running", "nats", cfg.NATSURL, "http", ln.Addr().String(), "version", Version)
	wait, err := startComponents(ctx, d, []*component{comp})
	if err != nil {
		return err
	}
	running.Store(true)
	return wait()
}

// runLocalforge serves localforge on its own (a cluster without GitHub).
func runLocalforge(ctx context.Context, cfg ServiceConfig, ln net.Listener) error {
	f, err := localforge.New(localforge.Config{Dir: cfg.DataDir, Token: cfg.ForgeToken, Logger: cfg.Logger, RateLimit: cfg.ForgeRateLimit})
	if err != nil {
		ln.Close()
		return err
	}
	reg, _, err := newRegistry()
	if err != nil {
		ln.Close()
		return err
	}
	// The probes and /metrics answer as every other service's do.
	mux := http.NewServeMux()
	health := healthHandler(func() bool { return true }, metricsHandler(reg))
	for _, path := range []string{"GET /healthz", "GET /readyz", "GET /metrics"} {
		mux.Handle(path, health)
	}
	mux.Handle("/", f.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	cfg.Logger.Info("running", "http", ln.Addr().String(), "version", Version)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// NormalizeForgeAPIURL completes LEVIATHAN_FORGE_API_URL as a GitHub
// Enterprise (or localforge) API root: a bare host (http://forge:3000)
// gets /api/v3/, and every root ends in '/', as go-github needs. Empty
// stays empty (api.github.com); api.github.com's root is kept as it is.
func NormalizeForgeAPIURL(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return s // egress.New says what is wrong with it
	}
	if u.Path == "" || u.Path == "/" {
		if !strings.EqualFold(u.Hostname(), "api.github.com") {
			u.Path = "/api/v3/"
		} else {
			u.Path = "/"
		}
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	return u.String()
}
