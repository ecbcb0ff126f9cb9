package deploy

import (
	"os"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
	corev1 "k8s.io/api/core/v1"

	"github.com/leviathan-dev/leviathan/tests/internal/podrun"
)

// kubelet runs the pods of a rendered overlay as Docker containers with
// podrun, the way a kubelet would run them (see podrun). Its helpers fail
// the test on anything it cannot run.
type kubelet struct {
	t       *testing.T
	pool    *dockertest.Pool
	r       *rendered
	network *dockertest.Network
	// run runs the pods; run.Secrets supplies the values of Secrets an
	// overlay documents but does not define (prod).
	run *podrun.Kubelet
}

// pod is one running pod: its main container.
type pod struct {
	name      string
	w         workload
	container *dc.Container
	// ports maps a container port to its address on the host.
	ports map[int32]string
}

func newKubelet(t *testing.T, pool *dockertest.Pool, r *rendered, img podrun.Images) *kubelet {
	t.Helper()
	network, err := pool.CreateNetwork("leviathan-" + r.overlay + "-" + randomHex(3))
	if err != nil {
		t.Fatalf("create network: %v", err)
	}
	t.Cleanup(func() { _ = pool.RemoveNetwork(network) })
	natsImage := ""
	if w, ok := r.workload("StatefulSet", "nats"); ok {
		natsImage = w.spec.Containers[0].Image
	}
	k := &kubelet{t: t, pool: pool, r: r, network: network}
	k.run = &podrun.Kubelet{Pool: pool, Network: network, Objects: r, GitImage: img.LeviathanGit,
		Image:   map[string]string{skaffoldArtifact(t): img.Leviathan, natsImage: img.NATS},
		Cleanup: t.Cleanup,
	}
	// A pod's claims: a directory of the test's each, which any uid may
	// write (the pod's fsGroup would own it).
	claims := map[string]string{}
	k.run.ClaimDir = func(p podrun.Pod, claim string) (string, error) {
		key := p.Name + "/" + claim
		if dir, ok := claims[key]; ok {
			return dir, nil
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777); err != nil {
			return "", err
		}
		claims[key] = dir
		return dir, nil
	}
	return k
}

// podOf is the pod podName of workload w.
func (k *kubelet) podOf(w workload, podName string) podrun.Pod {
	return podrun.Pod{Name: podName, Namespace: "leviathan", Owner: w.String(), Labels: w.labels, Spec: w.spec,
		Subdomain: w.serviceName, Claims: w.claims}
}

func (k *kubelet) secretValue(name, key string) (string, bool) { return k.run.SecretValue(name, key) }

// aliases are the DNS names of the pod podName of w.
func (k *kubelet) aliases(podName string, w workload) []string {
	return k.run.Aliases(k.podOf(w, podName))
}

// logs returns a container's output.
func (k *kubelet) logs(id string) string { return k.run.Logs(id) }

// wait waits for a container to exit and returns its exit code.
func (k *kubelet) wait(id string, timeout time.Duration) (int, error) { return k.run.Wait(id, timeout) }

// start runs a pod: its init containers one after the other, each to a
// zero exit, then its one main container.
func (k *kubelet) start(w workload, podName string) *pod {
	t := k.t
	t.Helper()
	p := k.podOf(w, podName)
	if err := k.run.RunInit(p, time.Minute); err != nil {
		t.Fatal(err)
	}
	r, err := k.run.StartMain(p)
	if err != nil {
		t.Fatal(err)
	}
	return &pod{name: podName, w: w, container: r.Container, ports: r.Ports}
}

// waitReady probes the pod as a kubelet does: the startup probe until it
// answers 200, then the readiness probe; once ready, the liveness probe
// must answer 200 too.
func (k *kubelet) waitReady(p *pod, timeout time.Duration) {
	k.t.Helper()
	r := &podrun.Running{Pod: k.podOf(p.w, p.name), Container: p.container, Ports: p.ports}
	if err := k.run.WaitReady(r, timeout); err != nil {
		k.t.Fatal(err)
	}
}

// podrun.Objects: what the pods of the overlay refer to.
func (r *rendered) Secret(name string) *corev1.Secret       { return r.secret(name) }
func (r *rendered) ConfigMap(name string) *corev1.ConfigMap { return r.configMap(name) }
func (r *rendered) Services() []*corev1.Service             { return r.services() }

// Shared with podrun.
var (
	selects          = podrun.Selects
	containerPort    = podrun.ContainerPort
	leviathanService = podrun.LeviathanService
	randomHex        = podrun.RandomHex
)

func dockerPool(t *testing.T) *dockertest.Pool { return podrun.DockerPool(t) }

func buildImages(t *testing.T, pool *dockertest.Pool) podrun.Images {
	return podrun.BuildImages(t, pool, root)
}

// TestMain removes the built images after all tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if podrun.Built() {
		if pool, err := dockertest.NewPool(""); err == nil {
			podrun.RemoveImages(pool)
		}
	}
	os.Exit(code)
}
