package stack

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/localforge"
	"github.com/leviathan-dev/leviathan/services/projector"
)

// The demo repository localforge serves on the laptop stack.
const (
	demoOwner  = "leviathan"
	demoRepo   = "demo"
	demoBranch = "main"
)

// demoBacklog is the demo repository's backlog, with a comment and an
// existing task, so the edit visibly keeps what was there.
const demoBacklog = `# Backlog of the Leviathan demo repository.
# Leviathan appends proposed tasks below; everything else stays as written.
metadata:
  project: demo
tasks:
  - id: DEMO-0
    title: Keep the README current
    priority: low
    allowed_paths:
      - README.md
`

// StackConfig configures the embedded stack of `leviathan dev` and `demo`.
type StackConfig struct {
	DataDir   string
	NATSAddr  string // host:port; port 0 picks a free one
	ForgeAddr string
	HTTPAddr  string
	// ControlToken and ForgeToken default to random tokens written to
	// files in DataDir.
	ControlToken string
	ForgeToken   string
	// GitToken is what the services send to localforge's git endpoint;
	// empty means ForgeToken (tests set a wrong one).
	GitToken string
	Logger   *slog.Logger
	Tune     func(*stage.Config)
	// Forge selects GitHub App authentication (localforge is told the
	// app's public key) and the forge pacing.
	Forge ForgeConfig
	// AllowedHosts and PrivateHosts add to where repository URLs and
	// connections may go besides localforge (egress.Config).
	AllowedHosts, PrivateHosts []string
	// Without names stages this process does not run (tests run them as
	// processes of their own); their consumers are set up all the same.
	Without []string
	// Dial, when set, makes every outbound connection of the services
	// (egress.Config.Dial): tests confine it to loopback.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DemoRepos is how many demo repositories localforge holds: the
	// demo repository and demo-2 … demo-N beside it (default 1).
	DemoRepos int
}

// Stack is NATS with JetStream, localforge with the demo repository, the
// four stage services and the projector, all in one process.
type Stack struct {
	cfg        StackConfig
	ns         *server.Server
	forge      *localforge.Forge
	forgeSrv   *http.Server
	deps       *deps
	proj       *projector.Projector
	NATSURL    string
	ForgeURL   string
	ControlURL string
	cancel     context.CancelFunc
	done       chan error
	unlockDir  func()
}

// StartStack starts everything and returns once it accepts attempts.
func StartStack(ctx context.Context, cfg StackConfig) (_ *Stack, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	unlockDir, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			unlockDir()
		}
	}()
	if cfg.ControlToken, err = tokenFile(filepath.Join(cfg.DataDir, "control-plane.token"), cfg.ControlToken); err != nil {
		return nil, err
	}
	if cfg.ForgeToken, err = tokenFile(filepath.Join(cfg.DataDir, "forge.token"), cfg.ForgeToken); err != nil {
		return nil, err
	}
	s := &Stack{cfg: cfg, done: make(chan error, 1), unlockDir: unlockDir}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if err := s.startNATS(); err != nil {
		return nil, err
	}
	if err := s.startForge(ctx); err != nil {
		return nil, err
	}
	nc, res, err := Connect(ctx, s.NATSURL, "dev", 1, true, cfg.Logger)
	if err != nil {
		return nil, err
	}
	git := gitx.Remote{Username: "x-access-token", Password: firstNonEmpty(cfg.GitToken, cfg.ForgeToken)}
	if cfg.Forge.IsApp() {
		// Git uses the App's installation tokens unless a test sets one.
		git.Password = cfg.GitToken
	}
	turns := func(identity string) forge.Turns { return res.Turns(identity, "dev") }
	pol, err := egress.New(egress.Config{ForgeAPIURL: s.ForgeURL + "/api/v3/", Allowed: cfg.AllowedHosts, Private: cfg.PrivateHosts, Dial: cfg.Dial})
	if err != nil {
		nc.Close()
		return nil, err
	}
	driver, git, err := cfg.Forge.clients(cfg.ForgeToken, s.ForgeURL+"/api/v3/", git, true, turns, pol)
	if err == nil {
		err = cfg.Forge.registerApp(s.forge)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	s.deps = &deps{
		nc: nc, res: res, logger: cfg.Logger, instance: "dev", tune: cfg.Tune, forge: driver, git: git, egress: pol,
	}
	if s.deps.reg, s.deps.metrics, err = newRegistry(); err != nil {
		nc.Close()
		return nil, err
	}
	var comps []*component
	for _, name := range StageNames {
		if slices.Contains(cfg.Without, name) {
			continue // its consumer is set up below; its process binds to it
		}
		c, err := stageComponent(ctx, name, s.deps)
		if err != nil {
			return nil, err
		}
		comps = append(comps, c)
	}
	for _, sc := range stageConfigs() {
		if !slices.Contains(cfg.Without, sc.Name) {
			continue
		}
		if cfg.Tune != nil {
			cfg.Tune(&sc)
		}
		if _, err := stage.SetupConsumer(ctx, res.JS, sc, 1); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	s.ControlURL = "http://" + ln.Addr().String()
	tokenFile, _ := filepath.Abs(filepath.Join(cfg.DataDir, "control-plane.token"))
	pc, proj := projectorComponent(s.deps, ln, cfg.ControlToken, tokenFile)
	s.proj = proj
	comps = append(comps, pc)

	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	wait, err := startComponents(rctx, s.deps, comps)
	if err != nil {
		cancel()
		return nil, err
	}
	go func() { s.done <- wait() }()
	return s, nil
}

func (s *Stack) startNATS() error {
	host, port, err := splitAddr(s.cfg.NATSAddr)
	if err != nil {
		return fmt.Errorf("nats address: %w", err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	} else {
		// The server would only log that it cannot listen, and we would
		// wait for it in vain: try the address first, to fail at once.
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("nats: cannot listen on %s (is another leviathan dev or nats-server running? --nats-addr picks another): %w", s.cfg.NATSAddr, err)
		}
		ln.Close()
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "leviathan-dev", Host: host, Port: port,
		JetStream: true, StoreDir: filepath.Join(s.cfg.DataDir, "nats"),
		NoSigs: true, NoLog: true,
	})
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return fmt.Errorf("nats: not ready on %s (is the port in use?)", s.cfg.NATSAddr)
	}
	s.ns = ns
	s.NATSURL = ns.ClientURL()
	return nil
}

func (s *Stack) startForge(ctx context.Context) error {
	f, err := localforge.New(localforge.Config{
		Dir: filepath.Join(s.cfg.DataDir, "forge"), Token: s.cfg.ForgeToken,
		Logger: s.cfg.Logger.With("service", "localforge"),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.ForgeAddr)
	if err != nil {
		return fmt.Errorf("localforge: %w", err)
	}
	s.ForgeURL = "http://" + ln.Addr().String()
	f.SetBaseURL(s.ForgeURL)
	s.forge = f
	s.forgeSrv = &http.Server{Handler: f.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.forgeSrv.Serve(ln) }()
	for _, name := range s.demoNames() {
		err = f.CreateRepo(ctx, demoOwner, name, demoBranch, map[string][]byte{
			"README.md":               []byte("# Demo\n\nA repository Leviathan proposes tasks to.\n"),
			"src/main.go":             []byte("package main\n\nfunc main() {}\n"),
			".leviathan/backlog.yaml": []byte(demoBacklog),
		})
		if err != nil && !errors.Is(err, localforge.ErrRepoExists) {
			return err
		}
	}
	return nil
}

func (s *Stack) demoNames() []string {
	names := []string{demoRepo}
	for i := 2; i <= s.cfg.DemoRepos; i++ {
		names = append(names, fmt.Sprintf("%s-%d", demoRepo, i))
	}
	return names
}

// DemoRepoURL is the clone URL of the demo repository.
func (s *Stack) DemoRepoURL() string { return s.forge.CloneURL(demoOwner, demoRepo) }

// DemoRepoURLs are the clone URLs of every demo repository, by target
// name (the repository's name).
func (s *Stack) DemoRepoURLs() [][2]string {
	var out [][2]string
	for _, name := range s.demoNames() {
		out = append(out, [2]string{name, s.forge.CloneURL(demoOwner, name)})
	}
	return out
}

// Close stops everything, services first.
func (s *Stack) Close() error {
	var err error
	if s.cancel != nil {
		s.cancel()
		err = <-s.done
	}
	if s.deps != nil {
		s.deps.nc.Close()
	}
	if s.forgeSrv != nil {
		_ = s.forgeSrv.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	if s.unlockDir != nil {
		s.unlockDir()
		s.unlockDir = nil
	}
	return err
}

// tokenFile returns token, or the token stored in path, or a new random
// token stored there (mode 0600), so a restarted dev stack keeps its
// tokens and users read them from a file instead of the terminal.
func tokenFile(path, token string) (string, error) {
	if token != "" {
		return token, nil
	}
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
		return string(b), nil
	}
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	token = hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return token, nil
}

func splitAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return host, port, nil
}

// NATS is the stack's client connection.
func (s *Stack) NATS() *nats.Conn { return s.deps.nc }

// ControlToken is the control plane's bearer token.
func (s *Stack) ControlToken() string { return s.cfg.ControlToken }

// DataDir is where the stack keeps its state.
func (s *Stack) DataDir() string { return s.cfg.DataDir }

// Forge is the embedded localforge.
func (s *Stack) Forge() *localforge.Forge { return s.forge }

// Applied is the stream sequence of the last event the projector applied.
func (s *Stack) Applied() uint64 { return s.proj.Applied() }

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
