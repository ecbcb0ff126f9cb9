package stack

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/natsperm"
	"github.com/leviathan-dev/leviathan/internal/stage"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

func password(user string) string { return "pw-" + user + "-7c1e" }

// permServer is a JetStream server whose users are natsperm's.
func permServer(t *testing.T) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, Users: natsperm.ServerUsers(password),
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// violations connects as user and collects the permission violations the
// server reports to it.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	v.errs = append(v.errs, err.Error())
	v.mu.Unlock()
}

// has waits until a violation naming subject is reported.
func (v *violations) has(t *testing.T, subject string) bool {
	t.Helper()
	for range 200 {
		v.mu.Lock()
		for _, e := range v.errs {
			if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, subject) {
				v.mu.Unlock()
				return true
			}
		}
		v.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func connectAs(t *testing.T, ns *server.Server, user string) (*nats.Conn, *violations) {
	t.Helper()
	v := &violations{}
	opts := []nats.Option{nats.UserInfo(user, password(user)), nats.ErrorHandler(v.handler)}
	if user != natsperm.ClientUser { // the client uses _INBOX, as the nats CLI does
		opts = append(opts, nats.CustomInboxPrefix(natsperm.InboxPrefix(user)))
	}
	nc, err := nats.Connect(ns.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, v
}

// TestLeastPrivilegeOnNATS runs every service as its own NATS user with
// natsperm's permissions, after the set-up step ran as the setup user: an
// attempt submitted by the client user goes end to end, so the
// permissions are enough. Then each service user is refused another
// service's event subjects, another stage's consumer, the stream's
// deletion and consumer creation.
func TestLeastPrivilegeOnNATS(t *testing.T) {
	ns := permServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	setupNC, _ := connectAs(t, ns, natsperm.SetupUser)
	setupJS, _ := jetstream.New(setupNC)
	if err := Setup(ctx, setupJS, 1, logger); err != nil {
		t.Fatal(err)
	}

	const forgeToken = "forge-token-perm"
	f, err := localforge.New(localforge.Config{Dir: t.TempDir(), Token: forgeToken, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	f.SetBaseURL(srv.URL)
	if err := f.CreateRepo(ctx, demoOwner, demoRepo, "main", map[string][]byte{events.BacklogPath: []byte("tasks: []\n")}); err != nil {
		t.Fatal(err)
	}

	done := map[string]chan error{}
	var controlURL string
	for _, name := range natsperm.Services {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if name == "projector" {
			controlURL = "http://" + ln.Addr().String()
		}
		cfg := ServiceConfig{Name: name, NATSURL: ns.ClientURL(), Listener: ln, Replicas: 1, Logger: logger,
			NATSOptions:  []nats.Option{nats.UserInfo(name, password(name))},
			ControlToken: "control-token", ForgeToken: forgeToken, GitToken: forgeToken, GitUsername: "x-access-token",
			ForgeAPIURL: srv.URL + "/api/v3/", Forge: testForge}
		ch := make(chan error, 1)
		done[name] = ch
		go func() { ch <- RunService(ctx, cfg) }()
	}
	defer func() {
		cancel()
		for name, ch := range done {
			if err := <-ch; err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	}()

	client, _ := connectAs(t, ns, natsperm.ClientUser)
	req, _ := json.Marshal(map[string]any{
		"attempt_id": "a-perm",
		"target":     map[string]any{"name": "demo", "repo_url": f.CloneURL(demoOwner, demoRepo)},
		"task":       map[string]any{"id": "T-perm", "title": "least privilege", "allowed_paths": []string{events.BacklogPath}},
	})
	var answer events.SubmitResponse
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		msg, err := client.Request("leviathan.api.submit", req, 2*time.Second)
		if err == nil {
			if err := json.Unmarshal(msg.Data, &answer); err != nil {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("clone never answered the client: %v", err)
		}
	}
	if answer.Status != "accepted" {
		t.Fatalf("submit as the client user: %+v", answer)
	}
	clientJS, _ := jetstream.New(client)
	cons, err := clientJS.OrderedConsumer(ctx, stage.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"leviathan.attempts.a-perm.>"}})
	if err != nil {
		t.Fatalf("the client user cannot follow an attempt: %v", err)
	}
	var seen []string
	for last := ""; last != string(events.AttemptSucceeded) && last != string(events.AttemptFailed); {
		msg, err := cons.Next(jetstream.FetchMaxWait(30 * time.Second))
		if err != nil {
			t.Fatalf("after %v: %v", seen, err)
		}
		_, typ, _ := events.ParseSubject(msg.Subject())
		last = string(typ)
		seen = append(seen, last)
	}
	if seen[len(seen)-1] != string(events.AttemptSucceeded) {
		t.Fatalf("attempt as least-privileged users: %v", seen)
	}
	if prs, _ := f.Pulls(demoOwner, demoRepo); len(prs) != 1 {
		t.Fatalf("%d pull requests, want 1", len(prs))
	}

	// The projector records what ingest brings, and stores its snapshot
	// when it stops (checked below, after the services stopped).
	bundle := `{"target":"demo","bundle_id":"b-perm","events":[{"event_id":"e-perm","event_type":"attempt.started","timestamp":"2026-01-28T12:00:00Z","payload":{"attempt_id":"a-ingest"}}]}`
	hreq, _ := http.NewRequest("POST", controlURL+"/v1/events/ingest", strings.NewReader(bundle))
	hreq.Header.Set("Authorization", "Bearer control-token")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	var ingested map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&ingested)
	resp.Body.Close()
	if resp.StatusCode != 200 || ingested["ingested"] != 1.0 {
		t.Fatalf("ingest as the projector user: %d %v", resp.StatusCode, ingested)
	}
	// push may ask pr for a task's open pull request, and pr answers.
	pushNC, _ := connectAs(t, ns, "push")
	q, _ := json.Marshal(events.OpenForTaskRequest{RepoURL: f.CloneURL(demoOwner, demoRepo), TaskID: "T-none"})
	if msg, err := pushNC.Request(events.OpenForTaskSubject, q, 10*time.Second); err != nil || !strings.Contains(string(msg.Data), `"open":false`) {
		t.Fatalf("push asking pr: %v %v", err, msg)
	}
	// It reads the targets' policies for the autonomy status.
	for _, q := range []string{"", "?target=demo"} {
		hreq, _ = http.NewRequest("GET", controlURL+"/v1/autonomy/status"+q, nil)
		hreq.Header.Set("Authorization", "Bearer control-token")
		resp, err = http.DefaultClient.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		var st map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if resp.StatusCode != 200 || st["autonomy_enabled"] != true {
			t.Fatalf("autonomy status%s as the projector user: %d %v", q, resp.StatusCode, st)
		}
	}

	// What each service user may not do.
	other := map[string]events.Type{
		"clone": events.BranchPushed, "backlog-edit": events.PRCreated, "push": events.AttemptRequested,
		"pr": events.RepoFetched, "projector": events.BranchPushed,
	}
	for _, name := range natsperm.Services {
		nc, v := connectAs(t, ns, name)
		refused := []string{
			events.Subject("x", other[name]),
			// the unnamed create, whose body could name a stage's consumer
			"$JS.API.CONSUMER.CREATE." + stage.StreamName,
			"$JS.API.STREAM.DELETE." + stage.StreamName,
			"$JS.API.STREAM.UPDATE." + stage.StreamName,
			"$JS.API.CONSUMER.DURABLE.CREATE." + stage.StreamName + ".evil",
			"$KV." + stage.ConfigBucket + ".demo",
		}
		for _, stg := range StageNames {
			if stg != name {
				refused = append(refused, "$JS.API.CONSUMER.MSG.NEXT."+stage.StreamName+"."+stg)
			}
		}
		for _, subj := range refused {
			if err := nc.Publish(subj, []byte("{}")); err != nil {
				t.Fatal(err)
			}
			_ = nc.Flush()
			if !v.has(t, subj) {
				t.Errorf("%s may publish to %s", name, subj)
			}
		}
		// Nor read another user's replies or the submit endpoint's requests.
		for _, subj := range []string{natsperm.InboxPrefix("pr") + ".>", "_INBOX.>", "leviathan.api.submit"} {
			if name == "pr" && strings.HasPrefix(subj, natsperm.InboxPrefix("pr")) || name == "clone" && subj == "leviathan.api.submit" {
				continue
			}
			if _, err := nc.SubscribeSync(subj); err != nil {
				t.Fatal(err)
			}
			_ = nc.Flush()
			if !v.has(t, subj) {
				t.Errorf("%s may subscribe to %s", name, subj)
			}
		}
	}
	// Nor may the client user, which makes ordered consumers, take a
	// stage's consumer by naming it in a create's body.
	cnc, cv := connectAs(t, ns, natsperm.ClientUser)
	body := `{"stream_name":"LEVIATHAN_EVENTS","config":{"name":"clone","ack_policy":"explicit","deliver_policy":"all","filter_subject":"leviathan.attempts.*.nothing"}}`
	_ = cnc.Publish("$JS.API.CONSUMER.CREATE."+stage.StreamName, []byte(body))
	_ = cnc.Flush()
	if !cv.has(t, "$JS.API.CONSUMER.CREATE."+stage.StreamName) {
		t.Error("the client user may create a consumer named in the body")
	}
	if ci, err := setupJS.Consumer(ctx, stage.StreamName, "clone"); err != nil || ci.CachedInfo().Config.FilterSubject != events.SubjectFilter(events.AttemptRequested) {
		t.Fatalf("clone's consumer changed: %v", err)
	}
	if _, err := setupJS.Stream(ctx, stage.StreamName); err != nil {
		t.Fatalf("the stream is gone: %v", err)
	}
	cancel()
	for name, ch := range done {
		if err := <-ch; err != nil {
			t.Errorf("%s: %v", name, err)
		}
		delete(done, name)
	}
	obs, err := setupJS.ObjectStore(context.Background(), stage.ProjectorBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.GetInfo(context.Background(), "graph"); err != nil {
		t.Fatalf("the projector stored no snapshot as its own user: %v", err)
	}
}
