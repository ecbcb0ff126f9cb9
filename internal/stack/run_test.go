package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/leviathan-dev/leviathan/internal/natstest"
)

// TestEveryServiceServesHealthAndMetrics runs every service as
// `leviathan run` does (RunService, one per process on Kubernetes) against
// one NATS server and checks what the probes and Prometheus read:
// /healthz and /readyz answer JSON, /metrics the service's own metrics;
// when NATS goes away, the services that need it stop being ready while
// staying alive.
func TestEveryServiceServesHealthAndMetrics(t *testing.T) {
	ns := natstest.Run(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The set-up step first, as a deployment's Job does.
	_, js := natstest.Connect(t, ns)
	if err := Setup(ctx, js, 1, logger); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{}
	done := map[string]chan error{}
	for _, name := range ServiceNames {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg := ServiceConfig{Name: name, NATSURL: ns.ClientURL(), Listener: ln, Replicas: 1, Logger: logger,
			ControlToken: "control-token", ForgeToken: "forge-token", DataDir: t.TempDir()}
		base[name] = "http://" + ln.Addr().String()
		ch := make(chan error, 1)
		done[name] = ch
		go func() { ch <- RunService(ctx, cfg) }()
	}
	defer func() {
		cancel()
		for name, ch := range done {
			select {
			case err := <-ch:
				if err != nil {
					t.Errorf("%s: %v", name, err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("%s did not stop", name)
			}
		}
	}()

	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Each service's own metric families (a stage's deliveries appear
	// only once it has handled one; its handling-time family is described
	// by then too, so the Go runtime's metrics are what is always there).
	own := map[string]string{
		"projector":  "leviathan_projector_ready 1",
		"localforge": "go_goroutines",
	}
	for _, name := range ServiceNames {
		url := base[name]
		deadline := time.Now().Add(20 * time.Second)
		for {
			status, body := get(url + "/readyz")
			if status == 200 {
				var v map[string]any
				if err := json.Unmarshal([]byte(body), &v); err != nil || v["status"] != "ready" {
					t.Errorf("%s /readyz: %q", name, body)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never ready: %d %s", name, status, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if status, body := get(url + "/healthz"); status != 200 || !strings.Contains(body, `"ok"`) {
			t.Errorf("%s /healthz: %d %q", name, status, body)
		}
		want := own[name]
		if want == "" {
			want = "go_goroutines"
		}
		if status, body := get(url + "/metrics"); status != 200 || !strings.Contains(body, want) || !strings.Contains(body, "process_cpu_seconds_total") {
			t.Errorf("%s /metrics: %d, without %q or process metrics", name, status, want)
		}
	}

	// NATS goes away: the stages lose readiness, not liveness (a restart
	// would not bring NATS back); localforge does not use NATS.
	ns.Shutdown()
	ns.WaitForShutdown()
	for _, name := range StageNames {
		deadline := time.Now().Add(10 * time.Second)
		for {
			status, _ := get(base[name] + "/readyz")
			if status == http.StatusServiceUnavailable {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s /readyz = %d with NATS down", name, status)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if status, _ := get(base[name] + "/healthz"); status != 200 {
			t.Errorf("%s /healthz = %d with NATS down", name, status)
		}
	}
	if status, _ := get(base["localforge"] + "/readyz"); status != 200 {
		t.Errorf("localforge /readyz = %d", status)
	}
}

// TestServiceStartsBeforeNATS: a service started while NATS is not there
// is alive and not ready, keeps trying, and becomes ready once NATS is up
// and set up: start order does not matter.
func TestServiceStartsBeforeNATS(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	natsAddr := free.Addr().(*net.TCPAddr)
	free.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunService(ctx, ServiceConfig{Name: "backlog-edit", NATSURL: fmt.Sprintf("nats://127.0.0.1:%d", natsAddr.Port),
			Listener: ln, Replicas: 1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("service: %v", err)
		}
	}()
	status := func(path string) int {
		resp, err := http.Get(base + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for status("/healthz") != 200 {
		time.Sleep(10 * time.Millisecond)
	}
	if s := status("/readyz"); s != http.StatusServiceUnavailable {
		t.Fatalf("/readyz without NATS: %d, want 503", s)
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: natsAddr.Port, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	_, js := natstest.Connect(t, ns)
	if err := Setup(ctx, js, 1, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(60 * time.Second); status("/readyz") != 200; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the service never became ready after NATS came up")
		}
	}
}

// TestDataDirLock: a second stack on the same data directory fails at
// once, naming the pid that holds it; once the first is closed, it starts.
func TestDataDirLock(t *testing.T) {
	dir := t.TempDir()
	start := func() (*Stack, error) {
		return StartStack(context.Background(), StackConfig{DataDir: dir, NATSAddr: "127.0.0.1:0", ForgeAddr: "127.0.0.1:0",
			HTTPAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}
	first, err := start()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := start(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("in use by pid %d", os.Getpid())) {
		t.Fatalf("a second stack on one data dir: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := start()
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	_ = again.Close()
}

func TestNormalizeForgeAPIURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                                 "",
		"http://localforge:3000":           "http://localforge:3000/api/v3/",
		"http://localforge:3000/":          "http://localforge:3000/api/v3/",
		"http://localforge:3000/api/v3":    "http://localforge:3000/api/v3/",
		"https://ghe.example.com/api/v3/":  "https://ghe.example.com/api/v3/",
		"https://api.github.com":           "https://api.github.com/",
		" https://ghe.example.com/custom ": "https://ghe.example.com/custom/",
	} {
		if got := NormalizeForgeAPIURL(in); got != want {
			t.Errorf("NormalizeForgeAPIURL(%q) = %q, want %q", in, got, want)
		}
	}
}
