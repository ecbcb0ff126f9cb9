package deploy

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	dc "github.com/ory/dockertest/v3/docker"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/policy"
	"github.com/leviathan-dev/leviathan/internal/stage"
)

// The cluster end-to-end test: the prod overlay's pods as containers (a
// three-node JetStream cluster with R3 stream and buckets, each node on a
// volume of its own, the prod NATS users and permissions), localforge as
// the forge (testdata/prod-localforge: prod plus the localforge
// component), two replicas of every stage and one projector. Attempts are
// submitted from the host the way users do, with the real natscli, while
// faults hit every part: each stage container SIGKILLed at random moments
// and restarted, the stream leader's node stopped and started, a node cut
// off from the others, the projector killed, localforge restarted. The
// verdict is asserted and printed as a table.
//
// LEVIATHAN_E2E_ATTEMPTS (default 20; `make e2e`: 100) sets the attempts,
// LEVIATHAN_E2E_SEED replays a run's fault schedule, LEVIATHAN_E2E_CALM=1
// also runs the same attempts without faults first, for comparison.

// clusterTargets are the repositories attempts go to.
const clusterTargets = 5

// cluster is one running cluster of the test.
type cluster struct {
	t        *testing.T
	k        *kubelet
	r        *rendered
	nats     []*pod
	forge    *pod
	stages   []*pod // two of each stage
	proj     *pod
	client   *nats.Conn // the client user, as users connect
	setup    *nats.Conn // the setup user (policies)
	natsURLs []string   // host addresses of the three servers
	secrets  map[string]map[string]string
}

func TestClusterEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("the cluster end-to-end test takes minutes")
	}
	n := 20
	if v, err := strconv.Atoi(os.Getenv("LEVIATHAN_E2E_ATTEMPTS")); err == nil && v > 0 {
		n = v
	}
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("LEVIATHAN_E2E_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("cluster seed %d (LEVIATHAN_E2E_SEED=%d replays its faults)", seed, seed)
	natscli := natsCLI(t)
	c := startCluster(t)
	var rows []verdict
	if os.Getenv("LEVIATHAN_E2E_CALM") == "1" {
		rows = append(rows, c.run(natscli, "calm", n, nil))
	}
	rows = append(rows, c.run(natscli, "faults", n, rand.New(rand.NewPCG(seed, seed>>1))))

	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "run\tattempts\tsucceeded\tPRs\tdup PRs per branch\tbad branches\tdup events\tsummary = stream\tafter restart\ttime\tfaults")
	for _, v := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%v\t%v\t%v\t%d\n", v.name, v.attempts, v.succeeded, v.prs, v.dupPRs, v.badBranches,
			v.dupEvents, v.summaryOK, v.restartOK, v.took.Round(100*time.Millisecond), len(v.faults))
	}
	tw.Flush()
	t.Logf("verdict:\n%s", b.String())
	for _, v := range rows {
		t.Logf("%s faults: %s", v.name, strings.Join(v.faults, ", "))
		if v.succeeded != v.attempts || v.prs != v.attempts || v.dupPRs != 0 || v.badBranches != 0 || v.dupEvents != 0 || !v.summaryOK || !v.restartOK {
			t.Errorf("%s: %+v", v.name, v)
		}
	}
}

// natsCLI installs the nats CLI v0.5.0 (once, cached) and returns its path.
func natsCLI(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "leviathan-tests", "natscli-v0.5.0")
	bin := filepath.Join(dir, "nats")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command("go", "install", "github.com/nats-io/natscli/nats@v0.5.0")
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install natscli v0.5.0: %v\n%s", err, out)
	}
	return bin
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	p := dockerPool(t)
	r := render(t, "tests/deploy/testdata/prod-localforge")
	k := newKubelet(t, p, r, buildImages(t, p))
	k.createProdSecrets()
	// One token for localforge, the git pushes and the PR API, as one
	// GitHub token would serve all three.
	k.run.Secrets["leviathan-forge"]["token"] = k.run.Secrets["leviathan-git"]["token"]
	c := &cluster{t: t, k: k, r: r, secrets: k.run.Secrets}

	ns, ok := r.workload("StatefulSet", "nats")
	if !ok || ns.replicas != 3 {
		t.Fatalf("want a NATS StatefulSet of 3, got %d", ns.replicas)
	}
	for i := range 3 {
		c.nats = append(c.nats, k.start(ns, fmt.Sprintf("nats-%d", i)))
	}
	for _, s := range c.nats {
		k.waitReady(s, 2*time.Minute)
		c.natsURLs = append(c.natsURLs, "nats://"+s.ports[4222])
	}
	k.runSetup(r)

	lf, ok := r.workload("Deployment", "localforge")
	if !ok {
		t.Fatal("no localforge Deployment")
	}
	c.forge = k.start(lf, "localforge-0")
	k.waitReady(c.forge, 2*time.Minute)
	for i := range clusterTargets {
		c.createRepo(fmt.Sprintf("t%d", i))
	}

	for _, svc := range leviathanServices {
		w, ok := r.workload("Deployment", svc)
		if !ok {
			t.Fatalf("no Deployment %s", svc)
		}
		replicas := 2
		if svc == "projector" {
			replicas = 1 // one projector: the shape
		}
		for i := range replicas {
			pd := k.start(w, fmt.Sprintf("%s-%d", svc, i))
			k.waitReady(pd, 2*time.Minute)
			if svc == "projector" {
				c.proj = pd
			} else {
				c.stages = append(c.stages, pd)
			}
		}
	}
	c.client = c.connect("client")
	c.setup = c.connect("setup")
	// Room for every attempt's pull request (the default caps at 10).
	js, _ := jetstream.New(c.setup)
	kv, err := js.KeyValue(context.Background(), stage.ConfigBucket)
	if err != nil {
		t.Fatal(err)
	}
	room := 100000
	for i := range clusterTargets {
		if err := (policy.Store{KV: kv}).Put(context.Background(), fmt.Sprintf("t%d", i), policy.Policy{MaxOpenPRs: &room}); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// connect connects to the cluster from the host as user (all three
// servers, reconnecting forever).
func (c *cluster) connect(user string) *nats.Conn {
	c.t.Helper()
	nc, err := nats.Connect(strings.Join(c.natsURLs, ","), nats.UserInfo(user, c.secrets["nats-user-"+user]["password"]),
		nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond), nats.Timeout(10*time.Second), nats.RetryOnFailedConnect(true))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	return nc
}

func (c *cluster) forgeURL() string { return "http://" + c.forge.ports[3000] }

// createRepo makes chaos/<name> in localforge over its API, with a backlog.
func (c *cluster) createRepo(name string) {
	c.t.Helper()
	body, _ := json.Marshal(map[string]any{"name": name, "files": map[string]string{
		events.BacklogPath: base64.StdEncoding.EncodeToString([]byte("tasks: []\n")),
	}})
	req, _ := http.NewRequest(http.MethodPost, c.forgeURL()+"/api/v3/orgs/chaos/repos", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.secrets["leviathan-forge"]["token"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusUnprocessableEntity {
		b, _ := io.ReadAll(resp.Body)
		c.t.Fatalf("create chaos/%s: %d %s", name, resp.StatusCode, b)
	}
}

// verdict is what one run measured.
type verdict struct {
	name                     string
	attempts, succeeded, prs int
	dupPRs, badBranches      int
	dupEvents                int
	summaryOK, restartOK     bool
	took                     time.Duration
	faults                   []string
	failures                 []string
}

// run submits n attempts across the targets (with faults from rng, none
// when nil) and judges the outcome.
func (c *cluster) run(natscli, name string, n int, rng *rand.Rand) verdict {
	t := c.t
	t.Helper()
	prefix := name + "-" + randomHex(2)
	v := verdict{name: name, attempts: n}
	began := time.Now()
	var firstSeq uint64
	js, _ := jetstream.New(c.client)
	if st, err := js.Stream(context.Background(), stage.StreamName); err == nil {
		if info, err := st.Info(context.Background()); err == nil {
			firstSeq = info.State.LastSeq + 1
		}
	}

	// nats micro ls lists every replica: two of each stage, the projector.
	var services []struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	}
	out := c.natsCLI(natscli, "micro", "ls", "--json")
	if err := json.Unmarshal([]byte(out), &services); err != nil {
		t.Fatalf("nats micro ls --json: %v\n%s", err, out)
	}
	instances := map[string]int{}
	for _, s := range services {
		instances[s.Name]++
	}
	want := map[string]int{"leviathan-clone": 2, "leviathan-backlog-edit": 2, "leviathan-push": 2, "leviathan-pr": 2, "leviathan-projector": 1}
	if fmt.Sprint(instances) != fmt.Sprint(want) {
		t.Errorf("nats micro ls lists %v, want %v", instances, want)
	}

	// The faults run beside the attempts, all of them: the submissions
	// are spread over the plan's time, so that every fault hits work in
	// progress.
	var plan []fault
	var interval time.Duration
	var faultsDone sync.WaitGroup
	var faultsMu sync.Mutex
	startFaults := func() {}
	if rng != nil {
		plan = c.faultPlan(rng)
		interval = time.Duration(len(plan)) * (faultGap + 2*time.Second) / time.Duration(n)
		startFaults = func() {
			faultsDone.Add(1)
			go c.runFaults(plan, rng, &faultsDone, &faultsMu, &v.faults)
		}
	}

	// Submission as users do it: the first through nats req with the
	// real CLI, the second with nats pub of a bare body, the rest through
	// the same endpoint from a client connection.
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%03d", prefix, i)
		target := fmt.Sprintf("t%d", i%clusterTargets)
		body, _ := json.Marshal(map[string]any{
			"attempt_id": ids[i],
			"target":     map[string]any{"name": target, "repo_url": "http://localforge:3000/git/chaos/" + target + ".git", "branch": "main"},
			"task": map[string]any{"id": "T-" + ids[i], "title": "Task " + ids[i], "allowed_paths": []string{events.BacklogPath},
				"acceptance_criteria": []string{"a pull request proposes it"}},
		})
		if i == 2 {
			// The two submissions with the nats CLI are made on a calm
			// cluster: nats pub is fire-and-forget, and a request published
			// while the stream has no leader is lost, as it would be for a
			// user. The faults begin now.
			c.waitStored(events.SubjectPrefix + "." + ids[1] + "." + string(events.AttemptRequested))
			startFaults()
		}
		if i > 1 {
			time.Sleep(interval)
		}
		switch i {
		case 0:
			c.natsCLI(natscli, "req", "--timeout", "30s", "leviathan.api.submit", string(body))
		case 1:
			bare, _ := json.Marshal(map[string]any{
				"target": map[string]any{"name": target, "repo_url": "http://localforge:3000/git/chaos/" + target + ".git"},
				"task":   map[string]any{"id": "T-" + ids[i], "title": "Task " + ids[i], "allowed_paths": []string{events.BacklogPath}},
			})
			c.natsCLI(natscli, "pub", events.SubjectPrefix+"."+ids[i]+"."+string(events.AttemptRequested), string(bare))
		default:
			c.submit(body)
		}
	}

	if n <= 2 {
		startFaults()
	}

	// Wait for every attempt to end, bounded by progress: a minute
	// without a new terminal attempt fails the run.
	terminal := map[string]events.Type{}
	seen := map[string]int{}
	lastProgress := time.Now()
	// The faults may have the cluster electing a stream leader just now:
	// making the consumer is tried again until it regains quorum, as
	// submitting is.
	var cons jetstream.Consumer
	for deadline := time.Now().Add(2 * time.Minute); ; {
		var err error
		cons, err = js.OrderedConsumer(context.Background(), stage.StreamName, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{events.StreamSubjects}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: max(firstSeq, 1),
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no consumer on the stream for 2 minutes: %v", name, err)
		}
		time.Sleep(time.Second)
	}
	for len(terminal) < n {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			if time.Since(lastProgress) > 3*time.Minute {
				t.Errorf("%s: no attempt ended for 3 minutes; %d of %d ended", name, len(terminal), n)
				break
			}
			continue
		}
		env, err := events.Decode(msg.Data())
		if err != nil || !strings.HasPrefix(env.AttemptID, prefix) {
			continue // a bare request, or another run's
		}
		seen[env.EventID]++
		if env.EventType.Terminal() {
			if _, ok := terminal[env.AttemptID]; !ok {
				terminal[env.AttemptID] = env.EventType
				lastProgress = time.Now()
			}
			if env.EventType == events.AttemptFailed {
				v.failures = append(v.failures, env.AttemptID+": "+string(env.Payload))
			}
		}
	}
	faultsDone.Wait()
	v.took = time.Since(began)
	if len(v.faults) != len(plan) {
		t.Errorf("%s: %d of %d faults ran", name, len(v.faults), len(plan))
	}
	for _, typ := range terminal {
		if typ == events.AttemptSucceeded {
			v.succeeded++
		}
	}
	for _, k := range seen {
		if k > 1 {
			v.dupEvents++
		}
	}
	if len(v.failures) > 0 {
		t.Logf("%s: failed attempts:\n%s", name, strings.Join(v.failures, "\n"))
	}
	for _, id := range ids {
		if _, ok := terminal[id]; !ok {
			t.Logf("%s: attempt %s did not end; its events: %s", name, id, c.eventsOf(id))
		}
	}
	// The plan may have restarted localforge last, after every attempt
	// ended: judge it once it is ready again, as a Service would route.
	c.k.waitReady(c.forge, 2*time.Minute)
	c.judgeForge(&v, prefix)
	c.judgeSummary(&v, prefix, n)
	return v
}

func (c *cluster) natsCLI(bin string, args ...string) string {
	c.t.Helper()
	full := append([]string{"--server", strings.Join(c.natsURLs, ","), "--user", "client", "--password", c.secrets["nats-user-client"]["password"]}, args...)
	var out bytes.Buffer
	cmd := exec.Command(bin, full...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "HOME="+c.t.TempDir()) // no contexts of the developer's
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("nats %s: %v\n%s", args[0], err, out.String())
	}
	return out.String()
}

// submit sends a request to leviathan.api.submit, retrying while the
// cluster is not answering (a fault may be under way): no answer, or an
// answer that names no field (the stream did not answer clone in time),
// as a user would. A refusal of a field fails the test.
func (c *cluster) submit(body []byte) {
	c.t.Helper()
	// While a fault costs JetStream its quorum (a node stopped, another
	// cut off), nothing can be stored and clone, restarted meanwhile,
	// waits for NATS before it answers: the cluster's own recovery bounds
	// the wait.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		msg, err := c.client.Request("leviathan.api.submit", body, 10*time.Second)
		if err == nil {
			var resp events.SubmitResponse
			err = json.Unmarshal(msg.Data, &resp)
			switch {
			case err != nil:
			case resp.Error != "" && resp.Field == "":
				err = errors.New(resp.Error)
			case resp.Error != "" && resp.Field != "attempt_id":
				c.t.Fatalf("submit refused: %s: %s", resp.Field, resp.Error)
			default:
				return
			}
		}
		if time.Now().After(deadline) {
			for _, p := range c.stages {
				if strings.HasPrefix(p.name, "clone") {
					c.t.Logf("%s logs:\n%s", p.name, lastLines(c.k.logs(p.container.ID), 20))
				}
			}
			c.t.Fatalf("submit: %v", err)
		}
		time.Sleep(time.Second)
	}
}

// runFaults runs plan, each fault after a random pause.
func (c *cluster) runFaults(plan []fault, rng *rand.Rand, done *sync.WaitGroup, mu *sync.Mutex, names *[]string) {
	defer done.Done()
	for _, f := range plan {
		time.Sleep(time.Duration(500+rng.IntN(int(2*faultGap/time.Millisecond)-1000)) * time.Millisecond)
		f.do()
		mu.Lock()
		*names = append(*names, f.name)
		mu.Unlock()
	}
}

// waitStored waits until the stream holds a message on subject.
func (c *cluster) waitStored(subject string) {
	c.t.Helper()
	js, _ := jetstream.New(c.client)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if st, err := js.Stream(context.Background(), stage.StreamName); err == nil {
			if _, err := st.GetLastMsgForSubject(context.Background(), subject); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the stream has no message on %s 30 s after nats pub", subject)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// eventsOf lists the event types of an attempt in the stream.
func (c *cluster) eventsOf(id string) string {
	js, _ := jetstream.New(c.client)
	cons, err := js.OrderedConsumer(context.Background(), stage.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectPrefix + "." + id + ".>"}})
	if err != nil {
		return err.Error()
	}
	var types []string
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			return strings.Join(types, ",")
		}
		if _, t, err := events.ParseSubject(msg.Subject()); err == nil {
			types = append(types, string(t))
		}
	}
}

// fault is one fault of a run's plan.
type fault struct {
	name string
	do   func()
}

// faultPlan is a run's faults in a random order: every stage container
// SIGKILLed twice (restarted after 1-3 s), the stream leader's node
// stopped and started, a node cut off from the others for 10 s, the
// projector killed, localforge restarted.
func (c *cluster) faultPlan(rng *rand.Rand) []fault {
	var plan []fault
	kill := func(p *pod) func() {
		return func() {
			_ = c.k.pool.Client.KillContainer(dc.KillContainerOptions{ID: p.container.ID, Signal: dc.SIGKILL})
			time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
			c.startAgain(p)
		}
	}
	for _, p := range c.stages {
		for range 2 {
			plan = append(plan, fault{"kill " + p.name, kill(p)})
		}
	}
	plan = append(plan, fault{"kill projector", kill(c.proj)},
		fault{"restart localforge", func() {
			_ = c.k.pool.Client.StopContainer(c.forge.container.ID, 10)
			c.startAgain(c.forge)
		}},
		fault{"stop the stream leader's node", func() {
			p := c.leader()
			_ = c.k.pool.Client.StopContainer(p.container.ID, 10)
			time.Sleep(2 * time.Second)
			c.startAgain(p)
		}},
		fault{"partition a node for 10 s", func() {
			p := c.nats[rng.IntN(len(c.nats))]
			net := c.k.network.Network
			_ = c.k.pool.Client.DisconnectNetwork(net.ID, dc.NetworkConnectionOptions{Container: p.container.ID, Force: true})
			time.Sleep(10 * time.Second)
			_ = c.k.pool.Client.ConnectNetwork(net.ID, dc.NetworkConnectionOptions{Container: p.container.ID,
				EndpointConfig: &dc.EndpointConfig{Aliases: c.k.aliases(p.name, p.w)}})
		}})
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	return plan
}

// faultGap is the mean pause between two faults of a plan.
const faultGap = 1750 * time.Millisecond

// startAgain starts a stopped container of the cluster again and reads
// its host ports anew (Docker may give a restarted container others).
func (c *cluster) startAgain(p *pod) {
	if err := c.k.pool.Client.StartContainer(p.container.ID, nil); err != nil {
		c.t.Logf("start %s again: %v", p.name, err)
	}
	info, err := c.k.pool.Client.InspectContainer(p.container.ID)
	if err != nil {
		return
	}
	ports := map[int32]string{}
	for port, bindings := range info.NetworkSettings.Ports {
		if n, err := strconv.Atoi(port.Port()); err == nil && len(bindings) > 0 {
			ports[int32(n)] = bindings[0].HostIP + ":" + bindings[0].HostPort
		}
	}
	p.ports = ports
}

// leader is the NATS node that leads the stream now (any node when no
// node answers).
func (c *cluster) leader() *pod {
	for _, p := range c.nats {
		resp, err := http.Get("http://" + p.ports[8222] + "/jsz?streams=true")
		if err != nil {
			continue
		}
		var jsz struct {
			Accounts []struct {
				Streams []struct {
					Name    string `json:"name"`
					Cluster struct {
						Leader string `json:"leader"`
					} `json:"cluster"`
				} `json:"stream_detail"`
			} `json:"account_details"`
		}
		err = json.NewDecoder(resp.Body).Decode(&jsz)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name == stage.StreamName {
					for _, q := range c.nats {
						if strings.HasPrefix(s.Cluster.Leader, q.name) {
							return q
						}
					}
				}
			}
		}
	}
	return c.nats[0]
}

// judgeForge counts the run's pull requests in localforge and checks their
// branches: one PR per attempt, none twice for a head branch, every branch
// one commit on its base changing only the backlog.
func (c *cluster) judgeForge(v *verdict, prefix string) {
	t := c.t
	work := t.TempDir()
	basic := base64.StdEncoding.EncodeToString([]byte("x:" + c.secrets["leviathan-git"]["token"]))
	auth := []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.extraHeader", "GIT_CONFIG_VALUE_0=Authorization: Basic " + basic,
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0"}
	heads := map[string]int{}
	for i := range clusterTargets {
		target := fmt.Sprintf("t%d", i)
		for page := 1; ; page++ {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/api/v3/repos/chaos/%s/pulls?state=all&per_page=100&page=%d", c.forgeURL(), target, page), nil)
			req.Header.Set("Authorization", "Bearer "+c.secrets["leviathan-forge"]["token"])
			var prs []struct {
				Head struct {
					Ref string `json:"ref"`
				} `json:"head"`
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			err = json.NewDecoder(resp.Body).Decode(&prs)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			for _, pr := range prs {
				if strings.Contains(pr.Head.Ref, prefix) {
					heads[pr.Head.Ref]++
				}
			}
			if len(prs) < 100 {
				break
			}
		}
		dir := filepath.Join(work, target)
		git := func(args ...string) (string, error) {
			cmd := exec.Command("git", args...)
			cmd.Env = append(os.Environ(), auth...)
			out, err := cmd.CombinedOutput()
			return strings.TrimSpace(string(out)), err
		}
		if out, err := git("clone", "--quiet", "--bare", c.forgeURL()+"/git/chaos/"+target+".git", dir); err != nil {
			t.Fatalf("clone chaos/%s: %v\n%s", target, err, out)
		}
		refs, _ := git("--git-dir", dir, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
		for _, b := range strings.Fields(refs) {
			if !strings.Contains(b, prefix) {
				continue
			}
			count, _ := git("--git-dir", dir, "rev-list", "--count", "main.."+b)
			files, _ := git("--git-dir", dir, "diff", "--name-only", "main..."+b)
			if count != "1" || files != events.BacklogPath {
				v.badBranches++
				t.Logf("branch %s of %s: %s commits, changes %q", b, target, count, files)
			}
		}
	}
	for _, k := range heads {
		v.prs++
		if k > 1 {
			v.dupPRs++
		}
	}
}

// judgeSummary compares the control plane's summary with what the run
// made, then restarts the projector and compares again.
func (c *cluster) judgeSummary(v *verdict, prefix string, n int) {
	t := c.t
	token := c.secrets["leviathan-control-plane"]["token"]
	get := func(path string, out any) error {
		req, _ := http.NewRequest(http.MethodGet, "http://"+c.proj.ports[8000]+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", path, resp.Status)
		}
		return json.NewDecoder(resp.Body).Decode(out)
	}
	// The run's attempts as the API lists them, once the projector has
	// applied the last of them.
	count := func() (succeeded int, summary string, err error) {
		var list struct {
			Attempts []struct {
				AttemptID string  `json:"attempt_id"`
				Status    string  `json:"status"`
				PRURL     *string `json:"pr_url"`
			} `json:"attempts"`
		}
		if err := get("/v1/attempts?limit=100000", &list); err != nil {
			return 0, "", err
		}
		for _, a := range list.Attempts {
			if strings.HasPrefix(a.AttemptID, prefix) && a.Status == "succeeded" && a.PRURL != nil {
				succeeded++ // succeeded with a pull request: the graph has it
			}
		}
		var sum struct {
			Nodes map[string]int `json:"nodes_by_type"`
			Edges map[string]int `json:"edges_by_type"`
		}
		if err := get("/v1/graph/summary", &sum); err != nil {
			return 0, "", err
		}
		keys := func(m map[string]int) string {
			var out []string
			for k, v := range m {
				out = append(out, fmt.Sprintf("%s=%d", k, v))
			}
			sort.Strings(out)
			return strings.Join(out, ",")
		}
		return succeeded, keys(sum.Nodes) + " " + keys(sum.Edges), nil
	}
	wait := func() (int, string) {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			s, summary, err := count()
			if err == nil && s == v.succeeded {
				return s, summary
			}
			if time.Now().After(deadline) {
				t.Logf("projector logs:\n%s", lastLines(c.k.logs(c.proj.container.ID), 20))
				t.Logf("control plane: %d succeeded of %d, %v", s, v.succeeded, err)
				return s, summary
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	s, before := wait()
	v.summaryOK = s == v.succeeded && v.succeeded == n
	// A projector restart (from its snapshot, then the stream) answers the same.
	_ = c.k.pool.Client.StopContainer(c.proj.container.ID, 20)
	c.startAgain(c.proj)
	c.k.waitReady(c.proj, 2*time.Minute)
	s2, after := wait()
	v.restartOK = s2 == s && after == before
	if !v.restartOK {
		t.Logf("summary before the restart %s, after %s", before, after)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
