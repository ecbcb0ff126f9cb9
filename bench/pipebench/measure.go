package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/bench/rttproxy"
	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stack"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

const (
	owner      = "bench"
	forgeToken = "pipebench-forge-token"
	// pacing is the forge's minimum interval between mutating calls for
	// the benchmark: effectively off (GitHub's 1 s would make the forge,
	// not the pipeline, the thing measured). Mutating calls are still
	// made one at a time, across replicas.
	pacing = "1ns"
	// rateLimit is localforge's primary rate limit for the benchmark,
	// requests per hour: a default run's 2,700 attempts make about 11,000
	// API calls, over GitHub's 5,000, and the pipeline would (rightly)
	// wait for the reset.
	rateLimit = "100000000"
)

// bench is the running stack.
type bench struct {
	cfg      config
	dir      string
	bin      string
	natsURL  string
	forgeURL string
	procs    map[string]*proc // by service name, nats-server and localforge included
	order    []string
	nc       *nats.Conn
	js       jetstream.JetStream
	ends     *terminals
	lastIDs  []string        // of the last level, in order
	used     map[string]bool // every attempt id of the run
	// chainCPU is localforge's CPU time during the in-process attempts
	// run between a level's attempts, which measure takes off its figure.
	chainCPU time.Duration
	// dead is closed when a process of the stack exits without being
	// asked to; deadMsg says which and how.
	dead     chan struct{}
	deadOnce sync.Once
	deadMsg  string
}

func measure(ctx context.Context, cfg config, root string) (*Results, error) {
	dir, err := os.MkdirTemp("", "pipebench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if cfg.binDir == "" {
		cfg.binDir = filepath.Join(dir, "bin")
	}
	fmt.Fprintln(cfg.progress, "pipebench: building leviathan and nats-server")
	bin, natsBin, err := build(ctx, root, cfg.binDir)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{cfg.profileDir, cfg.logDir} {
		if d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
		}
	}
	b := &bench{cfg: cfg, dir: dir, bin: bin, procs: map[string]*proc{}, dead: make(chan struct{})}
	defer b.stop()
	if err := b.start(ctx, natsBin); err != nil {
		return nil, err
	}
	res := &Results{Date: time.Now().UTC().Format(time.RFC3339), Commit: gitCommit(root), Levels: map[string]Result{},
		Pacing: "forge pacing off (LEVIATHAN_FORGE_MIN_INTERVAL=" + pacing + "; mutating calls still one at a time) and localforge's rate limit raised to " + rateLimit + " requests an hour",
		CPUms:  map[string]float64{}, CPUmsByLevel: map[string]map[string]float64{},
		Services: append([]string{"nats-server", "localforge"}, b.serviceNames()...)}
	total := map[string]time.Duration{}
	attempts := 0
	// Rounds: each runs every concurrency once, and the in-process chain
	// between the attempts of concurrency 1, so that a change in the
	// machine's speed during the run weighs on every concurrency alike and
	// on both sides of the overhead ratio; each level's figures are over
	// all its rounds.
	byLevel := map[string][]Result{}
	var inParts [][]float64
	for round := range cfg.runs {
		for i, c := range cfg.conc {
			name := fmt.Sprint("c", c)
			targets, err := b.targets(ctx, fmt.Sprintf("%s-r%d", name, round), cfg.targets, cfg.n)
			if err != nil {
				return nil, err
			}
			// The in-process chain runs between the attempts of
			// concurrency 1, one attempt of it after every n/inproc of
			// the pipeline's, so that both sides of the overhead ratio
			// meet the machine as it is at that moment (its speed changes
			// within seconds here); without concurrency 1, after the
			// round's last level.
			var (
				mix      *chains
				mixAfter bool
			)
			if cfg.inproc > 0 && (c == 1 || !slices.Contains(cfg.conc, 1) && i == len(cfg.conc)-1) {
				// As many attempts per target as the level's: the
				// repositories grow as many branches and open pull
				// requests (which every list of them returns, twice per
				// attempt) on both sides.
				itargets, err := b.targets(ctx, fmt.Sprintf("inproc-r%d", round), sameLoad(cfg.targets, cfg.n, cfg.inproc), cfg.inproc)
				if err != nil {
					return nil, err
				}
				if mix, err = newChains(b.forgeURL, cfg.inproc, itargets, fmt.Sprintf("ip-r%d", round)); err != nil {
					return nil, err
				}
				mixAfter = c != 1
			}
			before, err := b.cpu()
			if err != nil {
				return nil, err
			}
			between := mix
			if mixAfter {
				between = nil
			}
			if between != nil {
				fmt.Fprintf(cfg.progress, "pipebench: round %d of %d: %d attempts at concurrency %d, and %d of the in-process chain between them\n", round+1, cfg.runs, cfg.n, c, cfg.inproc)
			} else {
				fmt.Fprintf(cfg.progress, "pipebench: round %d of %d: %d attempts at concurrency %d\n", round+1, cfg.runs, cfg.n, c)
			}
			b.chainCPU = 0
			r, err := b.level(ctx, name, c, cfg.n, targets, b.forgeURL, between)
			if err != nil {
				return nil, err
			}
			after, err := b.cpu()
			if err != nil {
				return nil, err
			}
			after["localforge"] -= b.chainCPU
			byLevel[name] = append(byLevel[name], r)
			if c == 1 && round == 0 {
				if res.Steps, err = b.steps(ctx); err != nil {
					return nil, err
				}
			}
			if res.CPUmsByLevel[name] == nil {
				res.CPUmsByLevel[name] = map[string]float64{}
			}
			for s, t := range after {
				d := t - before[s]
				total[s] += d
				res.CPUmsByLevel[name][s] += float64(d) / float64(time.Millisecond) / float64(cfg.n*cfg.runs)
			}
			attempts += cfg.n
			fmt.Fprintf(cfg.progress, "pipebench:   %.1f attempts/s, p50 %.0f ms, p99 %.0f ms\n", r.AttemptsPerS, r.P50S*1e3, r.P99S*1e3)
			if mix == nil {
				continue
			}
			if mixAfter {
				fmt.Fprintf(cfg.progress, "pipebench: round %d of %d: %d attempts of the in-process chain\n", round+1, cfg.runs, cfg.inproc)
				for range cfg.inproc {
					if err := mix.one(ctx); err != nil {
						return nil, err
					}
				}
			}
			// Its attempts/s is over their own time: between the
			// pipeline's attempts, nothing else ran meanwhile.
			ir, parts := mix.result(mix.took)
			byLevel["inprocess_c1"] = append(byLevel["inprocess_c1"], ir)
			if c == 1 && ir.P50S > 0 {
				res.OverheadRounds = append(res.OverheadRounds, r.P50S/ir.P50S)
			}
			if inParts == nil {
				inParts = make([][]float64, len(parts))
			}
			for k := range parts {
				inParts[k] = append(inParts[k], parts[k]...)
			}
			fmt.Fprintf(cfg.progress, "pipebench:   in-process chain: %.1f attempts/s, p50 %.0f ms, p99 %.0f ms\n", ir.AttemptsPerS, ir.P50S*1e3, ir.P99S*1e3)
		}
	}
	for name, rs := range byLevel {
		res.Levels[name] = combine(rs)
	}
	for s, t := range total {
		res.CPUms[s] = float64(t) / float64(time.Millisecond) / float64(attempts)
	}
	if inParts != nil {
		res.InProcessSteps = inProcessSteps(inParts)
		if c1, ok := res.Levels["c1"]; ok && res.Levels["inprocess_c1"].P50S > 0 {
			res.Overhead = c1.P50S / res.Levels["inprocess_c1"].P50S
		}
	}
	if cfg.rtt > 0 {
		if res.RTT, err = b.wan(ctx); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// start runs nats-server, localforge, `leviathan setup` and every
// service, each a process of its own.
func (b *bench) start(ctx context.Context, natsBin string) error {
	natsPort, err := freePort()
	if err != nil {
		return err
	}
	forgePort, err := freePort()
	if err != nil {
		return err
	}
	b.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	b.forgeURL = fmt.Sprintf("http://127.0.0.1:%d", forgePort)
	natsProc := &proc{name: "nats-server", bin: natsBin, args: []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort),
		"-sd", filepath.Join(b.dir, "nats"), "--server_name", "pipebench"}}
	forge := &proc{name: "localforge", bin: b.bin, args: []string{"run", "localforge", "--http-addr", "127.0.0.1:" + strconv.Itoa(forgePort),
		"--data-dir", filepath.Join(b.dir, "forge")}, env: b.env(b.forgeURL)}
	if b.cfg.profileDir != "" {
		forge.args = append(forge.args, "--cpu-profile", filepath.Join(b.cfg.profileDir, "localforge.pprof"))
	}
	for _, p := range []*proc{natsProc, forge} {
		if err := b.add(p); err != nil {
			return err
		}
	}
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", natsPort), natsProc); err != nil {
		return err
	}
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", forgePort), forge); err != nil {
		return err
	}
	setup := exec.CommandContext(ctx, b.bin, "setup")
	setup.Env = append(os.Environ(), b.env(b.forgeURL)...)
	if out, err := setup.CombinedOutput(); err != nil {
		return fmt.Errorf("leviathan setup: %v\n%s", err, out)
	}
	for _, name := range b.serviceNames() {
		if err := b.add(b.service(name, b.forgeURL)); err != nil {
			return err
		}
	}
	if b.nc, err = nats.Connect(b.natsURL, nats.Timeout(10*time.Second)); err != nil {
		return err
	}
	if b.js, err = jetstream.New(b.nc); err != nil {
		return err
	}
	if b.ends, err = watchTerminals(b.nc); err != nil {
		return err
	}
	// One warm-up attempt: every service is up and its consumer bound.
	targets, err := b.targets(ctx, "warmup", 1, 1)
	if err != nil {
		return err
	}
	if _, err := b.level(ctx, "warmup", 1, 1, targets, b.forgeURL, nil); err != nil {
		return fmt.Errorf("warm-up attempt: %w", err)
	}
	return nil
}

func (b *bench) serviceNames() []string { return append(slices.Clone(stack.StageNames), "projector") }

func (b *bench) env(forgeURL string) []string {
	return append([]string{"NATS_URL=" + b.natsURL, "LEVIATHAN_FORGE_TOKEN=" + forgeToken, "LEVIATHAN_GIT_TOKEN=" + forgeToken,
		"LEVIATHAN_FORGE_API_URL=" + forgeURL + "/api/v3/", "LEVIATHAN_CONTROL_PLANE_TOKEN=pipebench-control-token",
		"LEVIATHAN_FORGE_MIN_INTERVAL=" + pacing, "LEVIATHAN_LOCALFORGE_RATE_LIMIT=" + rateLimit, "LEVIATHAN_LOG_LEVEL=" + cmp.Or(os.Getenv("LEVIATHAN_LOG_LEVEL"), "warn")}, b.cfg.extraEnv...)
}

func (b *bench) service(name, forgeURL string) *proc {
	args := []string{"run", name, "--http-addr", "127.0.0.1:0"}
	if b.cfg.profileDir != "" {
		file := name + ".pprof"
		if forgeURL != b.forgeURL {
			file = name + "-wan.pprof"
		}
		args = append(args, "--cpu-profile", filepath.Join(b.cfg.profileDir, file))
	}
	return &proc{name: name, bin: b.bin, args: args, env: b.env(forgeURL)}
}

func (b *bench) add(p *proc) error {
	p.logDir = b.cfg.logDir
	p.onExit = func(p *proc) {
		b.deadOnce.Do(func() {
			b.deadMsg = fmt.Sprintf("%s exited during the benchmark (%v)", p.name, p.waitErr)
			close(b.dead)
		})
	}
	if err := p.start(); err != nil {
		return err
	}
	if _, ok := b.procs[p.name]; !ok {
		b.order = append(b.order, p.name)
	}
	b.procs[p.name] = p
	return nil
}

func (b *bench) stop() {
	if b.nc != nil {
		b.nc.Close()
	}
	for i := len(b.order) - 1; i >= 0; i-- {
		b.procs[b.order[i]].stop()
	}
}

func (b *bench) cpu() (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	for name, p := range b.procs {
		t, err := p.cpu()
		if err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, nil
}

// targets creates k repositories for a run of n attempts, with room for
// all their pull requests (the default guardrail allows 10 open per
// target).
func (b *bench) targets(ctx context.Context, prefix string, k, n int) ([]string, error) {
	kv, err := b.js.KeyValue(ctx, stage.ConfigBucket)
	if err != nil {
		return nil, err
	}
	room := n + 1
	var names []string
	for i := range min(k, n) {
		name := fmt.Sprintf("%s-t%d", prefix, i)
		if err := createRepo(ctx, b.forgeURL, forgeToken, owner, name); err != nil {
			return nil, err
		}
		if err := (policy.Store{KV: kv}).Put(ctx, name, policy.Policy{MaxOpenPRs: &room}); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// request is the bare attempt.requested body a user publishes.
func request(forgeURL, target, taskID string) []byte {
	body, _ := json.Marshal(map[string]any{
		"target": map[string]any{"name": target, "repo_url": forgeURL + "/git/" + owner + "/" + target + ".git"},
		"task": map[string]any{"id": taskID, "title": "Benchmark task " + taskID, "priority": "medium",
			"acceptance_criteria": []string{"the pipeline proposes it"}, "allowed_paths": []string{events.BacklogPath}},
	})
	return body
}

// attemptID is shaped as `leviathan submit` makes them.
func attemptID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "a-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// newAttemptID is an attempt id not used before in this run: a second
// request with an id already used is a duplicate that never ends.
func (b *bench) newAttemptID() string {
	if b.used == nil {
		b.used = map[string]bool{}
	}
	for {
		if id := attemptID(); !b.used[id] {
			b.used[id] = true
			return id
		}
	}
}

// level submits n attempts keeping c in flight, and waits for each to end.
// Latency is from just before the request is published to the arrival of
// the attempt's terminal event, as a user watching the subjects sees it.
func (b *bench) level(ctx context.Context, name string, c, n int, targets []string, forgeURL string, between *chains) (Result, error) {
	if between != nil && c != 1 {
		return Result{}, fmt.Errorf("%s: the in-process chain runs between attempts only at concurrency 1", name)
	}
	sem := make(chan struct{}, c)
	lat := make([]float64, n)
	b.lastIDs = b.lastIDs[:0]
	failed := make([]bool, n)
	var why string
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	// chainsUpTo runs the in-process attempts due before the pipeline's
	// attempt i (evenly spread, the last after the last), while no attempt
	// of the pipeline runs; their time is not the level's.
	var betweenTook time.Duration
	forge := b.procs["localforge"]
	chainsUpTo := func(i int) error {
		for between != nil && between.done() < i*between.n/n {
			t := time.Now()
			cpu0, err := forge.cpu()
			if err != nil {
				return err
			}
			if err := between.one(ctx); err != nil {
				return err
			}
			cpu1, err := forge.cpu()
			if err != nil {
				return err
			}
			betweenTook += time.Since(t)
			// localforge's work for the chain is not the pipeline's (the
			// other processes take no part in the chain: what they do
			// meanwhile is the pipeline's own).
			b.chainCPU += cpu1 - cpu0
		}
		return nil
	}
	deadline := time.Now().Add(b.cfg.timeout)
	start := time.Now()
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
		if err := chainsUpTo(i); err != nil {
			return Result{}, err
		}
		id := b.newAttemptID()
		b.lastIDs = append(b.lastIDs, id)
		ended := b.ends.expect(id)
		body := request(forgeURL, targets[i%len(targets)], fmt.Sprintf("%s-%d", name, i))
		t0 := time.Now()
		if _, err := b.js.Publish(ctx, events.Subject(id, events.AttemptRequested), body); err != nil {
			return Result{}, fmt.Errorf("publish %s: %w", id, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			select {
			case end := <-ended:
				lat[i] = end.at.Sub(t0).Seconds()
				if failed[i] = end.typ != events.AttemptSucceeded; failed[i] {
					mu.Lock()
					why = fmt.Sprintf("%s %s: %s", id, end.typ, end.data)
					mu.Unlock()
				}
			case <-b.dead:
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("%s, attempt %s of %s had not ended\n%s", b.deadMsg, id, name, b.logs())
				}
				mu.Unlock()
			case <-time.After(time.Until(deadline)):
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("%w: attempt %s of %s (%v); its events: %s\n%s", errTimeout, id, name, b.cfg.timeout, b.eventsOf(ctx, id), b.logs())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		if err := chainsUpTo(n); err != nil {
			return Result{}, err
		}
	}
	took := time.Since(start) - betweenTook
	if firstErr != nil {
		return Result{}, firstErr
	}
	r := Result{Attempts: n, AttemptsPerS: float64(n) / took.Seconds()}
	for _, f := range failed {
		if f {
			r.Failed++
		}
	}
	if r.Failed > 0 {
		return r, fmt.Errorf("%s: %d of %d attempts did not succeed; the last: %s\n%s", name, r.Failed, n, why, b.logs())
	}
	r.P50S, r.P95S, r.P99S = quantile(lat, 0.50), quantile(lat, 0.95), quantile(lat, 0.99)
	r.lat = lat
	return r, nil
}

// logs is the tail of every process's output.
func (b *bench) logs() string {
	var s strings.Builder
	for _, name := range b.order {
		out := b.procs[name].out.String()
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) > 8 {
			out = strings.Join(lines[len(lines)-8:], "\n")
		}
		fmt.Fprintf(&s, "--- %s\n%s\n", name, out)
	}
	return s.String()
}

// quantile by the nearest rank.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// terminals delivers each attempt's terminal event to whoever expects it.
type terminals struct {
	mu      sync.Mutex
	waiting map[string]chan end
	subs    []*nats.Subscription
}

type end struct {
	typ  events.Type
	at   time.Time
	data []byte
}

func watchTerminals(nc *nats.Conn) (*terminals, error) {
	t := &terminals{waiting: map[string]chan end{}}
	for _, typ := range []events.Type{events.AttemptSucceeded, events.AttemptFailed, events.AttemptRejected} {
		sub, err := nc.Subscribe(events.SubjectFilter(typ), func(m *nats.Msg) {
			at := time.Now()
			parts := strings.Split(m.Subject, ".")
			if len(parts) < 3 {
				return
			}
			t.deliver(parts[2], end{typ: typ, at: at, data: m.Data})
		})
		if err != nil {
			return nil, err
		}
		_ = sub.SetPendingLimits(-1, -1)
		t.subs = append(t.subs, sub)
	}
	return t, nc.Flush()
}

func (t *terminals) expect(id string) <-chan end {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan end, 1)
	t.waiting[id] = ch
	return ch
}

func (t *terminals) deliver(id string, e end) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if ch, ok := t.waiting[id]; ok {
		delete(t.waiting, id)
		ch <- e
	}
}

// wan runs attempts one at a time with the forge behind a proxy a round
// trip away: the services that talk to the forge are restarted with the
// proxy as their forge. It counts each attempt's round trips.
func (b *bench) wan(ctx context.Context) (*RTTResult, error) {
	p, err := rttproxy.Start(rttproxy.Config{Target: b.forgeURL, RTT: b.cfg.rtt, Classify: rttproxy.GitOrAPI})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	for _, name := range []string{"clone", "push", "pr"} {
		b.procs[name].stop()
		if err := b.add(b.service(name, p.URL())); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(b.cfg.progress, "pipebench: %d attempts at %v round-trip time\n", b.cfg.rttN, b.cfg.rtt)
	targets, err := b.targets(ctx, "wan", b.cfg.targets, b.cfg.rttN+1)
	if err != nil {
		return nil, err
	}
	// A first attempt to let the restarted services bind and connect.
	if _, err := b.level(ctx, "wan-warmup", 1, 1, targets, p.URL(), nil); err != nil {
		return nil, err
	}
	out := &RTTResult{RTTMs: float64(b.cfg.rtt) / float64(time.Millisecond), Attempts: b.cfg.rttN}
	var lat []float64
	sum := map[string]rttproxy.Count{}
	for i := range b.cfg.rttN {
		p.Reset()
		r, err := b.level(ctx, fmt.Sprint("wan-", i), 1, 1, targets[i%len(targets):], p.URL(), nil)
		if err != nil {
			return nil, err
		}
		lat = append(lat, r.P50S)
		for class, c := range p.Counts() {
			s := sum[class]
			s.Requests, s.Conns, s.RoundTrips = s.Requests+c.Requests, s.Conns+c.Conns, s.RoundTrips+c.RoundTrips
			sum[class] = s
		}
	}
	n := float64(b.cfg.rttN)
	out.P50S = quantile(lat, 0.5)
	out.GitRequests, out.GitConns, out.GitRoundTrips = float64(sum["git"].Requests)/n, float64(sum["git"].Conns)/n, float64(sum["git"].RoundTrips)/n
	out.APIRequests, out.APIConns, out.APIRoundTrips = float64(sum["api"].Requests)/n, float64(sum["api"].Conns)/n, float64(sum["api"].RoundTrips)/n
	fmt.Fprintf(b.cfg.progress, "pipebench: %d attempts of the in-process chain at %v round-trip time\n", b.cfg.rttN, b.cfg.rtt)
	itargets, err := b.targets(ctx, "wan-inproc", b.cfg.targets, b.cfg.rttN)
	if err != nil {
		return nil, err
	}
	ir, _, err := inProcess(ctx, p.URL(), b.cfg.rttN, itargets, "wan-ip")
	if err != nil {
		return nil, err
	}
	out.InProcessP50S = ir.P50S
	if ir.P50S > 0 {
		out.InProcessRatio = out.P50S / ir.P50S
	}
	return out, nil
}

func gitCommit(root string) string {
	cmd := exec.Command("git", "rev-parse", "--short", "HEAD")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// stepOrder is an attempt's events in the order the stages publish them.
var stepOrder = []events.Type{events.AttemptRequested, events.AttemptCreated, events.AttemptStarted, events.RepoFetched,
	events.BacklogEdited, events.BranchPushed, events.PRCreated, events.AttemptSucceeded}

// steps is where the time of the last level's attempts went: the median
// time from each event to the next, by the times the server stored them.
func (b *bench) steps(ctx context.Context) ([]Step, error) {
	st, err := b.js.Stream(ctx, stage.StreamName)
	if err != nil {
		return nil, err
	}
	gaps := make([][]float64, len(stepOrder)-1)
	for _, id := range b.lastIDs {
		var prev time.Time
		for i, typ := range stepOrder {
			m, err := st.GetLastMsgForSubject(ctx, events.Subject(id, typ))
			if err != nil {
				return nil, fmt.Errorf("attempt %s, %s: %w", id, typ, err)
			}
			if i > 0 {
				gaps[i-1] = append(gaps[i-1], m.Time.Sub(prev).Seconds())
			}
			prev = m.Time
		}
	}
	out := make([]Step, len(gaps))
	for i, g := range gaps {
		out[i] = Step{From: string(stepOrder[i]), To: string(stepOrder[i+1]), P50Ms: quantile(g, 0.5) * 1e3}
	}
	return out, nil
}

// eventsOf lists an attempt's events in the stream, in order, with the
// time each was stored: where an attempt that did not end stopped.
func (b *bench) eventsOf(ctx context.Context, id string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := b.js.Stream(ctx, stage.StreamName)
	if err != nil {
		return err.Error()
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.AttemptSubjects(id)}})
	if err != nil {
		return err.Error()
	}
	var out []string
	for {
		batch, err := cons.FetchNoWait(100)
		if err != nil {
			return err.Error()
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, _ := m.Metadata()
			at := ""
			if md != nil {
				at = md.Timestamp.UTC().Format("15:04:05.000")
			}
			_, typ, _ := events.ParseSubject(m.Subject())
			out = append(out, at+" "+string(typ))
		}
		if n == 0 {
			break
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// combine is one level's figures over its rounds: the median throughput
// with the slowest and fastest round, and the latency percentiles of all
// the rounds' attempts together.
func combine(rs []Result) Result {
	var rates, lat []float64
	out := Result{Runs: len(rs)}
	for _, r := range rs {
		rates = append(rates, r.AttemptsPerS)
		lat = append(lat, r.lat...)
		out.Attempts += r.Attempts
		out.Failed += r.Failed
	}
	out.AttemptsPerS = quantile(rates, 0.5)
	out.AttemptsPerSMin, out.AttemptsPerSMax = slices.Min(rates), slices.Max(rates)
	out.P50S, out.P95S, out.P99S = quantile(lat, 0.50), quantile(lat, 0.95), quantile(lat, 0.99)
	return out
}

// sameLoad is how many targets give m attempts as many attempts per
// target as n attempts on k targets (at least one).
func sameLoad(k, n, m int) int {
	return max(1, (k*m+n/2)/n)
}
