package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// buildNATSServer builds nats-server from the module's dependency.
func buildNATSServer(t *testing.T) string {
	return goBuild(t, "github.com/nats-io/nats-server/v2", "nats-server")
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// proc is one process of the chaos run, restartable after a kill.
type proc struct {
	name string
	args []string
	env  []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	out  lockedBuffer
}

func (p *proc) start(t *testing.T, bin string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	// Its own process group, so a kill takes its children too, as the end
	// of a container would: localforge's git http-backend children would
	// otherwise live on, holding the output pipe and with it cmd.Wait.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd = cmd
}

// kill sends SIGKILL to the process and its children, and reaps it.
func (p *proc) kill() {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}
}

// stop sends SIGTERM and waits.
func (p *proc) stop() {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // and what it left
		<-done
	}
}

// runGit runs git in dir with no user or system configuration.
func runGit(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// seedRepo creates the bare repository owner/name in a localforge data
// directory, with a backlog, as the deployment's seed script does.
func seedRepo(t *testing.T, forgeDir, owner, name string) {
	t.Helper()
	bare := filepath.Join(forgeDir, "repos", owner, name+".git")
	work := t.TempDir()
	if err := os.MkdirAll(filepath.Join(work, ".leviathan"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, events.BacklogPath), []byte("tasks: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runGit(t, work, "init", "--quiet", "--bare", "--initial-branch=main", bare)
	for _, kv := range [][2]string{{"http.receivepack", "true"}, {"uploadpack.allowFilter", "true"}, {"uploadpack.allowAnySHA1InWant", "true"}} {
		runGit(t, work, "--git-dir", bare, "config", kv[0], kv[1])
	}
	seed := []string{"--git-dir", bare, "--work-tree", work}
	runGit(t, work, append(seed, "add", "--all", ".")...)
	runGit(t, work, append(seed, "-c", "user.name=Seed", "-c", "user.email=seed@example.com", "-c", "commit.gpgsign=false",
		"commit", "--quiet", "--no-verify", "-m", "Seed")...)
}

// chaosResult is what one run measured.
type chaosResult struct {
	took                 time.Duration
	succeeded, failed    int
	prs, branches        int
	dupEvents, events    int
	faults               []string
	planned              int // faults planned; all must have happened
	notOneCommitBranches int
}

// TestChaos runs every service as its own process against nats-server and
// localforge processes, and submits 100 attempts across 5 targets twice:
// once calmly, once while every stage is SIGKILLed two or three times at
// random moments (restarted after 0.5-1.5 s), nats-server and localforge
// once, and the projector once. Both runs must end 100/100 succeeded,
// with exactly one pull request per attempt, no duplicate event, and every
// pull request's branch one commit on its base; the times of both are
// printed. LEVIATHAN_CHAOS_SEED replays a run; LEVIATHAN_CHAOS_ATTEMPTS
// changes the count.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos run takes minutes")
	}
	n := 100
	if v, err := strconv.Atoi(os.Getenv("LEVIATHAN_CHAOS_ATTEMPTS")); err == nil && v > 0 {
		n = v
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("LEVIATHAN_CHAOS_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("chaos seed %d (LEVIATHAN_CHAOS_SEED=%d replays it)", seed, seed)
	bin, natsBin := buildLeviathan(t), buildNATSServer(t)

	calm := runChaos(t, bin, natsBin, n, nil)
	stormy := runChaos(t, bin, natsBin, n, rand.New(rand.NewPCG(seed, seed>>1)))
	for _, r := range []struct {
		name string
		res  chaosResult
	}{{"without faults", calm}, {"with faults", stormy}} {
		t.Logf("%-15s %d/%d succeeded in %v; %d pull requests on %d branches; %d events, %d duplicates",
			r.name, r.res.succeeded, n, r.res.took.Round(100*time.Millisecond), r.res.prs, r.res.branches, r.res.events, r.res.dupEvents)
		if r.res.succeeded != n || r.res.failed != 0 || r.res.prs != n || r.res.branches != n || r.res.dupEvents != 0 || r.res.notOneCommitBranches != 0 {
			t.Errorf("%s: %+v", r.name, r.res)
		}
	}
	t.Logf("faults: %s", strings.Join(stormy.faults, ", "))
	if len(stormy.faults) != stormy.planned {
		t.Errorf("%d of the %d planned faults happened before the attempts ended", len(stormy.faults), stormy.planned)
	}
	t.Logf("time with faults / without: %.2f", stormy.took.Seconds()/calm.took.Seconds())
}

func runChaos(t *testing.T, bin, natsBin string, n int, rng *rand.Rand) chaosResult {
	t.Helper()
	dir := t.TempDir()
	natsPort, forgePort, controlPort := freePort(t), freePort(t), freePort(t)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	forgeURL := fmt.Sprintf("http://127.0.0.1:%d", forgePort)
	const forgeToken, controlToken = "chaos-forge-token", "chaos-control-token"
	forgeDir := filepath.Join(dir, "forge")
	const targets = 5
	for i := range targets {
		seedRepo(t, forgeDir, "chaos", fmt.Sprint("t", i))
	}
	common := []string{"NATS_URL=" + natsURL, "LEVIATHAN_FORGE_TOKEN=" + forgeToken, "LEVIATHAN_GIT_TOKEN=" + forgeToken,
		"LEVIATHAN_FORGE_API_URL=" + forgeURL + "/api/v3/", "LEVIATHAN_CONTROL_PLANE_TOKEN=" + controlToken, "LEVIATHAN_LOG_LEVEL=warn"}
	natsProc := &proc{name: "nats-server", args: []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort),
		"-sd", filepath.Join(dir, "nats"), "--server_name", "chaos"}}
	forge := &proc{name: "localforge", args: []string{"run", "localforge", "--http-addr", "127.0.0.1:" + strconv.Itoa(forgePort),
		"--data-dir", forgeDir}, env: common}
	services := map[string]*proc{}
	for _, name := range append(append([]string{}, StageNames...), "projector") {
		addr := "127.0.0.1:0"
		if name == "projector" {
			addr = "127.0.0.1:" + strconv.Itoa(controlPort)
		}
		services[name] = &proc{name: name, args: []string{"run", name, "--http-addr", addr}, env: common}
	}
	all := []*proc{natsProc, forge}
	natsProc.start(t, natsBin)
	forge.start(t, bin)
	defer func() {
		for _, p := range all {
			p.stop()
		}
	}()
	waitTCP(t, natsPort)
	waitTCP(t, forgePort)
	setup := exec.Command(bin, "setup")
	setup.Env = append(os.Environ(), common...)
	if out, err := setup.CombinedOutput(); err != nil {
		t.Fatalf("leviathan setup: %v\n%s", err, out)
	}
	for _, name := range append(append([]string{}, StageNames...), "projector") {
		services[name].start(t, bin)
		all = append(all, services[name])
	}

	nc, err := nats.Connect(natsURL, nats.Timeout(10*time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// Room for every attempt's pull request: the default guardrail caps
	// open pull requests per target at 10.
	kv, err := js.KeyValue(context.Background(), stage.ConfigBucket)
	if err != nil {
		t.Fatal(err)
	}
	room := n
	for i := range targets {
		if err := (policy.Store{KV: kv}).Put(context.Background(), fmt.Sprint("t", i), policy.Policy{MaxOpenPRs: &room}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	for i := range n {
		body, _ := json.Marshal(map[string]any{
			"target": map[string]any{"name": fmt.Sprint("t", i%targets), "repo_url": fmt.Sprintf("%s/git/chaos/t%d.git", forgeURL, i%targets)},
			"task":   map[string]any{"id": fmt.Sprint("T-", i), "title": fmt.Sprint("Chaos task ", i), "allowed_paths": []string{events.BacklogPath}},
		})
		if _, err := js.Publish(context.Background(), events.Subject(fmt.Sprint("c-", i), events.AttemptRequested), body); err != nil {
			t.Fatal(err)
		}
	}

	var res chaosResult
	done := make(chan struct{})
	var faults sync.WaitGroup
	if rng != nil {
		var plan []*proc
		for _, name := range StageNames {
			for range 2 + rng.IntN(2) {
				plan = append(plan, services[name])
			}
		}
		plan = append(plan, natsProc, forge, services["projector"])
		rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
		res.planned = len(plan)
		faults.Add(1)
		go func() {
			defer faults.Done()
			for _, p := range plan {
				select {
				case <-done:
					return
				case <-time.After(time.Duration(300+rng.IntN(1200)) * time.Millisecond):
				}
				p.kill()
				res.faults = append(res.faults, p.name)
				time.Sleep(time.Duration(500+rng.IntN(1000)) * time.Millisecond)
				b := bin
				if p == natsProc {
					b = natsBin
				}
				p.start(t, b)
			}
		}()
	}

	// Wait until every attempt has ended, counting terminal events.
	terminal := func(typ events.Type) int {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, stage.StreamName)
		if err != nil {
			return -1
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.SubjectFilter(typ)))
		if err != nil {
			return -1
		}
		return len(info.State.Subjects)
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		s, f := terminal(events.AttemptSucceeded), terminal(events.AttemptFailed)
		if s >= 0 && f >= 0 && s+f >= n {
			res.succeeded, res.failed = s, f
			break
		}
		if time.Now().After(deadline) {
			close(done)
			faults.Wait()
			var logs strings.Builder
			for _, p := range all {
				fmt.Fprintf(&logs, "--- %s\n%s\n", p.name, lastLines(p.out.String(), 15))
			}
			t.Fatalf("after 10 min: %d succeeded, %d failed of %d\n%s", s, f, n, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	res.took = time.Since(start)
	close(done)
	faults.Wait()

	// Exactly one pull request per attempt, each branch one commit on main.
	client := &http.Client{Timeout: 10 * time.Second}
	heads := map[string]bool{}
	for i := range targets {
		for deadlineF := time.Now().Add(time.Minute); ; {
			req, _ := http.NewRequest("GET", fmt.Sprintf("%s/api/v3/repos/chaos/t%d/pulls?state=all&per_page=100", forgeURL, i), nil)
			req.Header.Set("Authorization", "Bearer "+forgeToken)
			resp, err := client.Do(req)
			if err == nil && resp.StatusCode == 200 {
				var prs []struct {
					Head struct {
						Ref string `json:"ref"`
					} `json:"head"`
				}
				err = json.NewDecoder(resp.Body).Decode(&prs)
				resp.Body.Close()
				if err == nil {
					for _, pr := range prs {
						res.prs++
						heads[pr.Head.Ref] = true
						bare := filepath.Join(forgeDir, "repos", "chaos", fmt.Sprintf("t%d.git", i))
						if c := runGit(t, forgeDir, "--git-dir", bare, "rev-list", "--count", "main.."+pr.Head.Ref); c != "1" {
							res.notOneCommitBranches++
						}
					}
					break
				}
			}
			if time.Now().After(deadlineF) {
				t.Fatalf("listing pull requests of t%d: %v", i, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	res.branches = len(heads)

	// No event twice for one attempt.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, stage.StreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(ctx, stage.StreamName)
	info, _ := st.Info(ctx)
	seen := map[string]bool{}
	for range info.State.Msgs {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		res.events++
		if seen[msg.Subject()] {
			res.dupEvents++
		}
		seen[msg.Subject()] = true
	}
	return res
}

func waitTCP(t *testing.T, port int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %d", port)
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
