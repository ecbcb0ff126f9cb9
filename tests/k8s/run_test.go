package k8s

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/leviathan-dev/leviathan/tests/internal/podrun"
)

// TestDevOverlayRunsOnTheNode applies the dev overlay as skaffold dev
// would (kubectl apply, server-side) to a control plane whose one node
// runs its pods as containers: every Deployment's rollout completes, the
// NATS StatefulSet is ready, the set-up and proof Jobs complete, and the
// proof's pull request is in localforge. A deleted pod is replaced and
// run again, and the node stays Ready (its Lease renewed) throughout.
func TestDevOverlayRunsOnTheNode(t *testing.T) {
	c := startControlPlane(t)
	n := registerNode(t, c, "node-1")
	a := startAgent(t, n, nil)
	began := time.Now()
	if out, err := c.applyOverlay(t, "dev"); err != nil {
		t.Fatalf("apply dev: %v\n%s", err, out)
	}
	renewed := c.kubectl("get", "lease", "node-1", "-n", "kube-node-lease", "-o", "jsonpath={.spec.renewTime}")

	rollout := func(what string) {
		t.Helper()
		out, err := c.kubectlErr("rollout", "status", what, "-n", "leviathan", "--timeout=5m")
		if err != nil {
			t.Fatalf("rollout status %s: %v\n%s\n%s", what, err, c.kubectl("get", "pods", "-n", "leviathan", "-o", "wide"), c.podProblems("leviathan"))
		}
		t.Logf("%s (%v after apply)", lastLines(strings.TrimSpace(out), 1), time.Since(began).Round(time.Second))
	}
	rollout("statefulset/nats")
	for _, d := range strings.Fields(c.kubectl("get", "deployments", "-n", "leviathan", "-o", "jsonpath={.items[*].metadata.name}")) {
		rollout("deployment/" + d)
	}
	for _, job := range []string{"leviathan-setup", "leviathan-proof"} {
		if _, err := c.kubectlErr("wait", "--for=condition=complete", "job/"+job, "-n", "leviathan", "--timeout=10m"); err != nil {
			t.Fatalf("job %s: %v\n%s\n%s", job, err, c.kubectl("get", "jobs,pods", "-n", "leviathan", "-o", "wide"), c.podProblems("leviathan"))
		}
		t.Logf("job/%s complete (%v after apply)", job, time.Since(began).Round(time.Second))
	}

	// The proof's pull request: the Job's pod printed it, and localforge,
	// asked through its API with the forge token, has it open from the
	// attempt's branch (the attempt id is the pod's name).
	proofPod := c.kubectl("get", "pods", "-n", "leviathan", "-l", "job-name=leviathan-proof",
		"--field-selector", "status.phase=Succeeded", "-o", "jsonpath={.items[0].metadata.name}")
	logs := a.logs("leviathan", proofPod)
	m := regexp.MustCompile(`succeeded: (http://localforge:3000/([^/\s]+)/([^/\s]+)/pull/(\d+))`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("the proof Job's pod %s printed no pull request:\n%s", proofPod, logs)
	}
	t.Logf("proof Job %s: pull request %s", proofPod, m[1])
	forgePod := c.kubectl("get", "pods", "-n", "leviathan", "-l", "app.kubernetes.io/name=localforge", "-o", "jsonpath={.items[0].metadata.name}")
	token := c.secretValue("leviathan", "leviathan-forge", "token")
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/api/v3/repos/%s/%s/pulls/%s", a.port("leviathan", forgePod, 3000), m[2], m[3], m[4]), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var pr struct {
		State string `json:"state"`
		Head  struct {
			Ref string `json:"ref"`
		} `json:"head"`
	}
	err = json.NewDecoder(resp.Body).Decode(&pr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil || pr.State != "open" || !strings.Contains(pr.Head.Ref, proofPod) {
		t.Fatalf("localforge's pull request %s: %s %+v %v", m[1], resp.Status, pr, err)
	}

	// A deleted pod: the agent stops it and confirms the deletion, the
	// ReplicaSet makes another, the agent runs it, the rollout is whole
	// again.
	old := c.kubectl("get", "pods", "-n", "leviathan", "-l", "app.kubernetes.io/name=projector", "-o", "jsonpath={.items[0].metadata.name}")
	c.kubectl("delete", "pod", old, "-n", "leviathan", "--wait=false")
	c.waitFor("the deleted projector pod gone and another ready", 3*time.Minute, func() error {
		out := c.kubectl("get", "pods", "-n", "leviathan", "-l", "app.kubernetes.io/name=projector", "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		f := strings.Fields(out)
		if len(f) != 2 || f[0] == old || f[1] != "True" {
			return &notYet{"projector pods: " + out}
		}
		return nil
	})
	rollout("deployment/projector")

	c.waitFor("the node's Lease renewed", time.Minute, func() error {
		if now := c.kubectl("get", "lease", "node-1", "-n", "kube-node-lease", "-o", "jsonpath={.spec.renewTime}"); now == renewed {
			return &notYet{"renewTime still " + now}
		}
		return nil
	})
	ready := c.kubectl("get", "node", "node-1", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints}")
	if !strings.HasPrefix(ready, "True") || strings.Contains(ready, "unreachable") || strings.Contains(ready, "not-ready") {
		t.Fatalf("node-1: %s", ready)
	}
}

// TestProdNATSOnTheNode applies the prod overlay with the Secrets an
// operator creates (random values here) and runs its NATS StatefulSet's
// pods: three servers, routed through the headless Service's per-pod
// names with authenticated routes, all ready. The other prod pods stay
// bound and not run: two replicas of every service would not tell more
// than the dev test and tests/deploy's cluster test do. Its
// PodDisruptionBudgets and NetworkPolicies are accepted.
func TestProdNATSOnTheNode(t *testing.T) {
	c := startControlPlane(t)
	n := registerNode(t, c, "node-1")
	a := startAgent(t, n, func(p *corev1.Pod) bool { return p.Labels["app.kubernetes.io/name"] == "nats" })
	manifests := render(t, "prod")
	if out, err := c.applyOverlay(t, "prod"); err != nil {
		t.Fatalf("apply prod: %v\n%s", err, out)
	}
	// The Secrets the prod overlay refers to and does not define
	// (deploy/SECRETS.md): every key any pod template asks for.
	refs := regexp.MustCompile(`secretKeyRef:\s*\n\s*key: (\S+)\s*\n\s*name: (\S+)`).FindAllStringSubmatch(string(manifests), -1)
	keys := map[string]map[string]bool{}
	for _, r := range refs {
		if keys[r[2]] == nil {
			keys[r[2]] = map[string]bool{}
		}
		keys[r[2]][r[1]] = true
	}
	for name, ks := range keys {
		if _, err := c.kubectlErr("get", "secret", name, "-n", "leviathan"); err == nil {
			continue // the overlay defines it
		}
		args := []string{"create", "secret", "generic", name, "-n", "leviathan"}
		for k := range ks {
			args = append(args, "--from-literal="+k+"="+k+"-"+podrun.RandomHex(8))
		}
		c.kubectl(args...)
	}
	out, err := c.kubectlErr("rollout", "status", "statefulset/nats", "-n", "leviathan", "--timeout=5m")
	if err != nil {
		t.Fatalf("rollout status statefulset/nats: %v\n%s\n%s", err, c.kubectl("get", "pods", "-n", "leviathan", "-o", "wide"), c.podProblems("leviathan"))
	}
	t.Log(lastLines(strings.TrimSpace(out), 1))
	if got := c.kubectl("get", "statefulset", "nats", "-n", "leviathan", "-o", "jsonpath={.status.readyReplicas}/{.spec.replicas}"); got != "3/3" {
		t.Fatalf("nats ready replicas %s, want 3/3", got)
	}
	// One cluster: every server routed to the two others (the routes
	// authenticate with the Secret's credentials).
	for _, pod := range []string{"nats-0", "nats-1", "nats-2"} {
		var routez struct {
			Routes []struct {
				RemoteName string `json:"remote_name"`
			} `json:"routes"`
		}
		c.waitFor(pod+" routed to the two others", time.Minute, func() error {
			resp, err := http.Get("http://" + a.port("leviathan", pod, 8222) + "/routez")
			if err != nil {
				return err
			}
			err = json.NewDecoder(resp.Body).Decode(&routez)
			resp.Body.Close()
			peers := map[string]bool{}
			for _, r := range routez.Routes {
				peers[r.RemoteName] = true
			}
			if err != nil || len(peers) != 2 {
				return &notYet{fmt.Sprintf("%s routes: %+v %v", pod, routez.Routes, err)}
			}
			return nil
		})
	}
	pdbs := strings.Fields(c.kubectl("get", "poddisruptionbudgets", "-n", "leviathan", "-o", "name"))
	nps := strings.Fields(c.kubectl("get", "networkpolicies", "-n", "leviathan", "-o", "name"))
	if len(pdbs) == 0 || len(nps) == 0 {
		t.Fatalf("prod: %d PodDisruptionBudgets, %d NetworkPolicies", len(pdbs), len(nps))
	}
	t.Logf("prod: NATS 3/3 ready and routed to each other; %d PodDisruptionBudgets and %d NetworkPolicies accepted", len(pdbs), len(nps))
}

// applyOverlay applies an overlay as skaffold dev does through kubectl:
// `kubectl apply -k`, server-side.
func (c *controlPlane) applyOverlay(t *testing.T, overlay string) (string, error) {
	return c.kubectlErr("apply", "--server-side", "--field-manager", "leviathan-test", "-k", filepath.Join(repoRoot(t), "deploy", "overlays", overlay))
}

// secretValue reads a key of a Secret.
func (c *controlPlane) secretValue(namespace, name, key string) string {
	c.t.Helper()
	var s corev1.Secret
	if err := json.Unmarshal([]byte(c.kubectl("get", "secret", name, "-n", namespace, "-o", "json")), &s); err != nil {
		c.t.Fatal(err)
	}
	return string(s.Data[key])
}

// podProblems says why a namespace's pods are not ready: their waiting or
// terminated containers' reasons and messages.
func (c *controlPlane) podProblems(namespace string) string {
	out, _ := c.kubectlErr("get", "pods", "-n", namespace, "-o",
		`jsonpath={range .items[*]}{.metadata.name}: {.status.containerStatuses[0].state}{"\n"}{end}`)
	return out
}
