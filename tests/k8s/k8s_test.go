// Package k8s runs the deployment against a real Kubernetes control plane
// (etcd, kube-apiserver with Pod Security admission, kube-controller-manager,
// kube-scheduler) built from the Go module proxy and run in a loopback-only
// network namespace: what an offline render cannot tell, a real API server
// and real controllers do. `make test-k8s` runs it (LEVIATHAN_TEST_K8S=1);
// the first run builds the binaries (minutes), later runs use the cache.
package k8s

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"

	"github.com/leviathan-dev/leviathan/tests/internal/podrun"
)

func TestMain(m *testing.M) {
	if os.Getenv("LEVIATHAN_TEST_K8S") != "1" {
		// Not part of `make test`: the control plane takes minutes to
		// build the first time. `make test-k8s` sets the variable.
		os.Exit(0)
	}
	code := m.Run()
	if podrun.Built() { // the node agent's test images
		if pool, err := dockertest.NewPool(""); err == nil {
			podrun.RemoveImages(pool)
		}
	}
	os.Exit(code)
}

// repoRoot is the repository's root (this file is tests/k8s/).
func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// render renders an overlay with kubectl kustomize, offline.
func render(t *testing.T, overlay string) []byte {
	t.Helper()
	cmd := exec.Command("kubectl", "kustomize", filepath.Join(repoRoot(t), "deploy", "overlays", overlay))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", overlay, err)
	}
	return out
}

// TestOverlaysOnAControlPlane applies each overlay server-side, as skaffold
// dev applies through kubectl, and checks what only a cluster checks: the
// API server's validation and defaulting, Pod Security admission
// (restricted, the namespace's label) of every pod the controllers make
// from the templates, and that the scheduler takes the pods up.
func TestOverlaysOnAControlPlane(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		t.Run(overlay, func(t *testing.T) {
			c := startControlPlane(t)
			manifests := render(t, overlay)
			out, err := c.kubectlIn(manifests, "apply", "--server-side", "--field-manager", "leviathan-test", "-f", "-")
			if err != nil {
				t.Fatalf("apply %s: %v", overlay, err)
			}
			if strings.Contains(strings.ToLower(out), "warning") {
				t.Errorf("apply %s warned:\n%s", overlay, out)
			}
			t.Logf("applied %s: %d objects", overlay, strings.Count(strings.TrimSpace(out), "\n")+1)

			// The Deployments', the StatefulSet's and the Jobs' pods: the
			// controllers create them from the templates, admission
			// lets them in (a refused pod leaves FailedCreate events
			// and no pod), and with no node they wait for one.
			workloads := strings.Fields(c.kubectl("get", "deployments,statefulsets,jobs", "-n", "leviathan", "-o", "name"))
			if len(workloads) == 0 {
				t.Fatal("no workloads")
			}
			c.waitFor("a pod for every workload", 2*time.Minute, func() error {
				pods := c.kubectl("get", "pods", "-n", "leviathan", "-o", "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}")
				for _, w := range workloads {
					name := w[strings.Index(w, "/")+1:]
					if !strings.Contains(pods, name+"-") {
						ev := c.failedCreates("leviathan")
						return &podsMissing{workload: w, events: ev}
					}
				}
				return nil
			})
			if ev := c.failedCreates("leviathan"); strings.TrimSpace(ev) != "" {
				t.Errorf("the controllers could not create some pods:\n%s", ev)
			}
			// The scheduler has looked at them: no node, so unschedulable.
			c.waitFor("the scheduler's verdict", time.Minute, func() error {
				cond := c.kubectl("get", "pods", "-n", "leviathan", "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"PodScheduled\")].reason}{\"\\n\"}{end}")
				if !strings.Contains(cond, "Unschedulable") {
					return &notYet{"PodScheduled reasons: " + cond}
				}
				return nil
			})
			if overlay == "prod" {
				pdbs := strings.Fields(c.kubectl("get", "poddisruptionbudgets", "-n", "leviathan", "-o", "name"))
				nps := strings.Fields(c.kubectl("get", "networkpolicies", "-n", "leviathan", "-o", "name"))
				if len(pdbs) == 0 || len(nps) == 0 {
					t.Errorf("prod: %d PodDisruptionBudgets, %d NetworkPolicies", len(pdbs), len(nps))
				}
			}
		})
	}
}

// TestClusterRefuses: what the API server refuses that an offline render
// lets through.
func TestClusterRefuses(t *testing.T) {
	c := startControlPlane(t)
	if _, err := c.kubectlIn([]byte(namespaceYAML), "apply", "--server-side", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the test namespace's service account", time.Minute, func() error {
		_, err := c.kubectlErr("get", "serviceaccount", "default", "-n", "psa")
		return err
	})
	t.Run("a template that breaks restricted", func(t *testing.T) {
		// The check TestOverlaysOnAControlPlane relies on: the
		// ReplicaSet controller cannot create such a pod, and says so.
		if out, err := c.kubectlIn([]byte(rootDeployment), "apply", "--server-side", "-f", "-"); err != nil {
			t.Fatalf("the Deployment itself is valid: %v\n%s", err, out)
		}
		c.waitFor("FailedCreate for the root pod", time.Minute, func() error {
			ev := c.failedCreates("psa")
			if !strings.Contains(ev, "violates PodSecurity") {
				return &notYet{"FailedCreate events: " + ev}
			}
			return nil
		})
	})
	for _, tc := range []struct {
		name, manifest, want string
	}{
		{"privileged pod under restricted", privilegedPod, "violates PodSecurity"},
		{"container port name over 15 characters", longPortName, "must be no more than 15 characters"},
		{"bad quantity", badQuantity, "quantities must match the regular expression"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := c.kubectlIn([]byte(tc.manifest), "apply", "--server-side", "-f", "-")
			if err == nil {
				t.Fatalf("accepted:\n%s", out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("refused, but not for %q:\n%s", tc.want, out)
			}
		})
	}
}

// failedCreates is the messages of namespace's FailedCreate events: pods
// a controller could not create (admission refused them).
func (c *controlPlane) failedCreates(namespace string) string {
	return c.kubectl("get", "events", "-n", namespace, "--field-selector", "reason=FailedCreate",
		"-o", `jsonpath={range .items[*]}{.message}{"\n"}{end}`)
}

type podsMissing struct{ workload, events string }

func (e *podsMissing) Error() string {
	return "no pod of " + e.workload + " yet; FailedCreate events: " + e.events
}

type notYet struct{ s string }

func (e *notYet) Error() string { return e.s }

const namespaceYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: psa
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
`

const privilegedPod = `apiVersion: v1
kind: Pod
metadata: {name: privileged, namespace: psa}
spec:
  containers:
  - name: c
    image: example.invalid/leviathan:test
    securityContext: {privileged: true}
`

const longPortName = `apiVersion: v1
kind: Pod
metadata: {name: long-port, namespace: psa}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: example.invalid/leviathan:test
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    ports:
    - name: a-port-name-far-too-long
      containerPort: 8080
`

const badQuantity = `apiVersion: v1
kind: Pod
metadata: {name: bad-quantity, namespace: psa}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: example.invalid/leviathan:test
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    resources:
      limits: {memory: 12Qi}
`

const rootDeployment = `apiVersion: apps/v1
kind: Deployment
metadata: {name: as-root, namespace: psa}
spec:
  selector: {matchLabels: {app: as-root}}
  template:
    metadata: {labels: {app: as-root}}
    spec:
      containers:
      - name: c
        image: example.invalid/leviathan:test
        securityContext: {runAsUser: 0}
`
