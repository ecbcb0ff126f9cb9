package deploy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDevOverlayRunsInDocker runs the dev overlay's pods as containers of
// the offline-built images, in dependency order: NATS, localforge (after its
// seed init container), the five services, each until its readiness probe
// answers; then the proof Job, which must exit 0 with a pull request, and
// the control plane must show it.
func TestDevOverlayRunsInDocker(t *testing.T) {
	pool := dockerPool(t)
	r := render(t, "dev")
	k := newKubelet(t, pool, r, buildImages(t, pool))
	start := time.Now()

	nats, ok := r.workload("StatefulSet", "nats")
	if !ok {
		t.Fatal("no NATS StatefulSet")
	}
	k.waitReady(k.start(nats, "nats-0"), time.Minute)
	k.runSetup(r)

	forge, ok := r.workload("Deployment", "localforge")
	if !ok {
		t.Fatal("no localforge Deployment")
	}
	k.waitReady(k.start(forge, "localforge-0"), time.Minute)

	var projector *pod
	for _, svc := range leviathanServices {
		w, ok := r.workload("Deployment", svc)
		if !ok {
			t.Fatalf("no Deployment %s", svc)
		}
		p := k.start(w, svc+"-0")
		k.waitReady(p, time.Minute)
		if svc == "projector" {
			projector = p
		}
	}
	t.Logf("NATS, localforge and %d services ready in %v", len(leviathanServices), time.Since(start).Round(time.Millisecond))

	job, ok := r.workload("Job", "leviathan-proof")
	if !ok {
		t.Fatal("no proof Job")
	}
	run := k.start(job, "leviathan-proof-abcde")
	code, err := k.wait(run.container.ID, 3*time.Minute)
	out := k.logs(run.container.ID)
	if err != nil || code != 0 {
		t.Fatalf("the proof Job exited %d (%v):\n%s", code, err, out)
	}
	if !strings.Contains(out, "succeeded: http://localforge:3000/leviathan/demo/pull/") {
		t.Fatalf("the proof Job did not print its pull request:\n%s", out)
	}

	// The control plane answers with the dev token, and counts the PR.
	token, _ := k.secretValue("leviathan-control-plane", "token")
	req, _ := http.NewRequest(http.MethodGet, "http://"+projector.ports[8000]+"/v1/graph/summary", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	var summary struct {
		Nodes map[string]int `json:"nodes_by_type"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for summary.Nodes["PullRequest"] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the control plane shows no pull request: %+v", summary)
		}
		time.Sleep(200 * time.Millisecond)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue
		}
		err = json.NewDecoder(resp.Body).Decode(&summary)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("GET /v1/graph/summary: %d %v", resp.StatusCode, err)
		}
	}
	t.Logf("proof Job succeeded; %v in all", time.Since(start).Round(time.Millisecond))
}

// createProdSecrets makes the Secrets SECRETS.md tells operators to
// create, with random values (the git user name as GitHub wants it).
func (k *kubelet) createProdSecrets() {
	k.t.Helper()
	k.run.Secrets = map[string]map[string]string{}
	for name, keys := range documentedSecrets(k.t) {
		k.run.Secrets[name] = map[string]string{}
		for _, key := range keys {
			k.run.Secrets[name][key] = key + "-" + randomHex(8)
		}
	}
	k.run.Secrets["leviathan-git"]["username"] = "x-access-token"
}

// runSetup runs the overlay's set-up Job to completion, as Kubernetes
// does while the services wait for what it creates.
func (k *kubelet) runSetup(r *rendered) {
	k.t.Helper()
	job, ok := r.workload("Job", "leviathan-setup")
	if !ok {
		k.t.Fatal("no set-up Job")
	}
	run := k.start(job, "leviathan-setup-fghij")
	if code, err := k.wait(run.container.ID, 3*time.Minute); err != nil || code != 0 {
		k.t.Fatalf("the set-up Job exited %d (%v):\n%s", code, err, k.logs(run.container.ID))
	}
}

// TestProdNATSClusterRunsInDocker runs the prod overlay's NATS StatefulSet
// (three servers routed through the headless Service's per-pod names, the
// routes authenticated), the set-up Job and the clone service with its prod
// environment against it: the cluster must form, the set-up Job must
// create the stream with three replicas, and clone, as its own NATS user,
// must come up on it.
func TestProdNATSClusterRunsInDocker(t *testing.T) {
	pool := dockerPool(t)
	r := render(t, "prod")
	k := newKubelet(t, pool, r, buildImages(t, pool))
	k.createProdSecrets()

	nats, ok := r.workload("StatefulSet", "nats")
	if !ok || nats.replicas != 3 {
		t.Fatalf("want a NATS StatefulSet of 3, got %v", nats.replicas)
	}
	var servers []*pod
	for i := range int(nats.replicas) {
		servers = append(servers, k.start(nats, fmt.Sprintf("nats-%d", i)))
	}
	for _, s := range servers {
		k.waitReady(s, 2*time.Minute)
	}
	k.runSetup(r)
	clone, ok := r.workload("Deployment", "clone")
	if !ok {
		t.Fatal("no clone Deployment")
	}
	k.waitReady(k.start(clone, "clone-0"), time.Minute)

	// JetStream's monitoring endpoint of the first server: the stream with
	// its replicas on the other two.
	monitor := servers[0].ports[8222]
	var jsz struct {
		Accounts []struct {
			Streams []struct {
				Name   string `json:"name"`
				Config struct {
					Replicas int `json:"num_replicas"`
				} `json:"config"`
				Cluster struct {
					Leader   string `json:"leader"`
					Replicas []struct {
						Name string `json:"name"`
					} `json:"replicas"`
				} `json:"cluster"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + monitor + "/jsz?accounts=true&streams=true&config=true")
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&jsz)
			resp.Body.Close()
		}
		if err != nil {
			t.Fatalf("/jsz: %v", err)
		}
		for _, a := range jsz.Accounts {
			for _, s := range a.Streams {
				if s.Name == "LEVIATHAN_EVENTS" {
					if s.Config.Replicas != 3 || s.Cluster.Leader == "" || len(s.Cluster.Replicas) != 2 {
						t.Fatalf("stream LEVIATHAN_EVENTS: %d replicas, leader %q, followers %v; want R3 on three servers", s.Config.Replicas, s.Cluster.Leader, s.Cluster.Replicas)
					}
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no LEVIATHAN_EVENTS stream in /jsz: %+v", jsz)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
