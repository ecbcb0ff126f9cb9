package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/leviathan-dev/leviathan/services/internal/forge"
	"github.com/leviathan-dev/leviathan/services/internal/gitx"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// ServiceConfig configures one service process.
type ServiceConfig struct {
	Name     string // one of ServiceNames
	NATSURL  string
	HTTPAddr string // /healthz and /readyz; the projector serves its API here
	Replicas int    // of the stream and buckets (1 dev, 3 prod)
	// Git credentials for target repositories (basic auth only).
	GitUsername, GitToken string
	// Forge credentials and API root for the pr service.
	ForgeToken, ForgeAPIURL string
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
	case c.Name == "pr" && c.ForgeToken == "":
		return errors.New("pr: LEVIATHAN_FORGE_TOKEN is required")
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
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	if cfg.Name == "localforge" {
		return runLocalforge(ctx, cfg, ln)
	}
	nc, res, err := Connect(ctx, cfg.NATSURL, cfg.Name, cfg.Replicas)
	if err != nil {
		ln.Close()
		return err
	}
	defer nc.Close()
	d := &deps{nc: nc, res: res, logger: cfg.Logger, instance: newInstanceID(),
		git: gitx.Remote{Username: cfg.GitUsername, Password: cfg.GitToken}}
	var comp *component
	if cfg.Name == "projector" {
		comp, _ = projectorComponent(d, ln, cfg.ControlToken)
	} else {
		if cfg.Name == "pr" {
			if d.forge, err = forge.NewGitHub(forge.GitHubConfig{Token: cfg.ForgeToken, BaseURL: cfg.ForgeAPIURL}); err != nil {
				return err
			}
		}
		if comp, err = stageComponent(ctx, cfg.Name, d); err != nil {
			return err
		}
		srv := &http.Server{Handler: healthHandler(nc.IsConnected), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
	}
	cfg.Logger.Info("running", "nats", cfg.NATSURL, "http", ln.Addr().String(), "version", Version)
	wait, err := startComponents(ctx, d, []*component{comp})
	if err != nil {
		return err
	}
	return wait()
}

// runLocalforge serves localforge on its own (a cluster without GitHub).
func runLocalforge(ctx context.Context, cfg ServiceConfig, ln net.Listener) error {
	f, err := localforge.New(localforge.Config{Dir: cfg.DataDir, Token: cfg.ForgeToken, Logger: cfg.Logger})
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: f.Handler(), ReadHeaderTimeout: 10 * time.Second}
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
