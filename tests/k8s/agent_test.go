package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sync"
	"testing"
	"time"

	dc "github.com/ory/dockertest/v3/docker"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leviathan-dev/leviathan/tests/internal/podrun"
)

// agent is the node agent's second part: it runs the pods the scheduler
// binds to its node as Docker containers (tests/internal/podrun, the
// Docker "kubelet" tests/deploy uses too) and reports them to the API as
// a kubelet does: phase, pod IP, container states and restarts, readiness
// from the readiness probe (after the startup probe), and a Job's pod
// ending Succeeded or Failed with its exit code. Containers of pods that
// restart (restartPolicy Always) are started again when they exit, with a
// growing pause; a pod deleted through the API has its containers
// removed and is then deleted for good (grace period 0), as a kubelet
// confirms a deletion.
//
// What it does not do: liveness restarts, exec or TCP probes, logs and
// exec through the API (the test reads a container's output from Docker),
// and anything a pod of these manifests does not use (podrun refuses it).
type agent struct {
	t    *testing.T
	n    *node
	run  *podrun.Kubelet
	runs func(*corev1.Pod) bool

	mu       sync.Mutex
	pods     map[string]*podRun // by UID
	cleanups []func()           // the containers' and directories' removal
	wg       sync.WaitGroup
	ctx      context.Context
	stop     context.CancelFunc
}

// podRun is a pod the agent runs.
type podRun struct {
	pod     *corev1.Pod
	deleted chan struct{} // closed when the API deletes the pod
	mu      sync.Mutex
	r       *podrun.Running // the main container now
}

// startAgent runs the pods bound to n for which runs says so (nil: all).
func startAgent(t *testing.T, n *node, runs func(*corev1.Pod) bool) *agent {
	t.Helper()
	pool := podrun.DockerPool(t)
	img := podrun.BuildImages(t, pool, repoRoot(t))
	network, err := pool.CreateNetwork("leviathan-k8s-" + podrun.RandomHex(3))
	if err != nil {
		t.Fatalf("create network: %v", err)
	}
	t.Cleanup(func() { _ = pool.RemoveNetwork(network) })
	a := &agent{t: t, n: n, runs: runs, pods: map[string]*podRun{}}
	if a.runs == nil {
		a.runs = func(*corev1.Pod) bool { return true }
	}
	images := map[string]string{"leviathan": img.Leviathan}
	for _, m := range regexp.MustCompile(`image: (nats:\S+)`).FindAllStringSubmatch(string(render(t, "dev"))+string(render(t, "prod")), -1) {
		images[m[1]] = img.NATS
	}
	claims := map[string]string{}
	var claimsMu sync.Mutex
	a.run = &podrun.Kubelet{Pool: pool, Network: network, Image: images, GitImage: img.LeviathanGit,
		Cleanup: a.cleanup,
		// A claim is a directory of the node's (what provision's
		// hostPath volume stands for), kept across the pod's restarts.
		ClaimDir: func(p podrun.Pod, claim string) (string, error) {
			claimsMu.Lock()
			defer claimsMu.Unlock()
			key := p.Namespace + "/" + claim
			if dir, ok := claims[key]; ok {
				return dir, nil
			}
			dir, err := os.MkdirTemp("", "leviathan-k8s-claim-")
			if err != nil {
				return "", err
			}
			a.cleanup(func() { _ = os.RemoveAll(dir) })
			if err := os.Chmod(dir, 0o777); err != nil { // the pod's fsGroup would own it
				return "", err
			}
			claims[key] = dir
			return dir, nil
		},
	}
	a.ctx, a.stop = context.WithCancel(context.Background())
	a.wg.Add(1)
	go a.loop()
	// The pods stop being run, then their containers go.
	t.Cleanup(func() {
		a.stop()
		a.wg.Wait()
		a.mu.Lock()
		defer a.mu.Unlock()
		for i := len(a.cleanups) - 1; i >= 0; i-- {
			a.cleanups[i]()
		}
	})
	return a
}

// cleanup registers f to run once the agent has stopped.
func (a *agent) cleanup(f func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cleanups = append(a.cleanups, f)
}

// loop looks at the node's pods every second: new ones are started,
// deleted ones stopped.
func (a *agent) loop() {
	defer a.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		a.sync()
		select {
		case <-a.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (a *agent) sync() {
	out, err := a.n.c.kubectlErr("get", "pods", "--all-namespaces", "--field-selector", "spec.nodeName="+a.n.name, "-o", "json")
	if err != nil {
		return
	}
	var list corev1.PodList
	if json.Unmarshal([]byte(out), &list) != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[string]bool{}
	for i := range list.Items {
		p := &list.Items[i]
		uid := string(p.UID)
		seen[uid] = true
		pr, known := a.pods[uid]
		switch {
		case !known && p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && a.runs(p):
			pr = &podRun{pod: p, deleted: make(chan struct{})}
			a.pods[uid] = pr
			a.wg.Add(1)
			go a.runPod(pr)
		case known && p.DeletionTimestamp != nil:
			pr.delete()
		}
	}
	for uid, pr := range a.pods {
		if !seen[uid] {
			pr.delete() // gone from the API (deleted for good)
			delete(a.pods, uid)
		}
	}
}

func (pr *podRun) delete() {
	select {
	case <-pr.deleted:
	default:
		close(pr.deleted)
	}
}

// logs returns the output of the main container of the pod named name.
func (a *agent) logs(namespace, name string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, pr := range a.pods {
		if pr.pod.Namespace == namespace && pr.pod.Name == name {
			pr.mu.Lock()
			r := pr.r
			pr.mu.Unlock()
			if r != nil {
				return a.run.Logs(r.Container.ID)
			}
		}
	}
	return ""
}

// port is the host address of a container port of the running pod name.
func (a *agent) port(namespace, name string, port int32) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, pr := range a.pods {
		if pr.pod.Namespace == namespace && pr.pod.Name == name {
			pr.mu.Lock()
			defer pr.mu.Unlock()
			if pr.r != nil {
				return pr.r.Ports[port]
			}
		}
	}
	return ""
}

// objects are what a pod's namespace holds, read from the API when the
// pod (or its container, again) starts.
type objects struct {
	secrets    map[string]*corev1.Secret
	configMaps map[string]*corev1.ConfigMap
	services   []*corev1.Service
}

func (o *objects) Secret(name string) *corev1.Secret       { return o.secrets[name] }
func (o *objects) ConfigMap(name string) *corev1.ConfigMap { return o.configMaps[name] }
func (o *objects) Services() []*corev1.Service             { return o.services }

func (a *agent) objects(namespace string) (*objects, error) {
	o := &objects{secrets: map[string]*corev1.Secret{}, configMaps: map[string]*corev1.ConfigMap{}}
	var secrets corev1.SecretList
	var cms corev1.ConfigMapList
	var svcs corev1.ServiceList
	for kind, into := range map[string]any{"secrets": &secrets, "configmaps": &cms, "services": &svcs} {
		out, err := a.n.c.kubectlErr("get", kind, "-n", namespace, "-o", "json")
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(out), into); err != nil {
			return nil, err
		}
	}
	for i := range secrets.Items {
		o.secrets[secrets.Items[i].Name] = &secrets.Items[i]
	}
	for i := range cms.Items {
		o.configMaps[cms.Items[i].Name] = &cms.Items[i]
	}
	for i := range svcs.Items {
		o.services = append(o.services, &svcs.Items[i])
	}
	return o, nil
}

// runPod runs one pod until it ends (a Job's) or is deleted.
func (a *agent) runPod(pr *podRun) {
	defer a.wg.Done()
	p := pr.pod
	spec := podrun.Pod{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, Spec: &p.Spec, Subdomain: p.Spec.Subdomain,
		Owner: ownerOf(p)}
	st := &statusWriter{a: a, pod: p, started: metav1.Now()}
	c := p.Spec.Containers[0]
	st.waiting(c, "ContainerCreating", "")
	var restarts int32
	pause := time.Second
	initDone := false
	for {
		if a.done(pr) {
			return
		}
		// Resolve the pod's objects anew each time, as a kubelet resolves
		// a container's environment when it creates it.
		run := *a.run
		objs, err := a.objects(p.Namespace)
		if err == nil {
			run.Objects = objs
			if !initDone {
				if err = run.RunInit(spec, 2*time.Minute); err == nil {
					initDone = true
				}
			}
		}
		var r *podrun.Running
		if err == nil {
			r, err = run.StartMain(spec)
		}
		if err != nil {
			if p.Spec.RestartPolicy == corev1.RestartPolicyNever && initDone {
				st.terminated(c, 1, "StartError", err.Error(), restarts)
				return
			}
			st.waiting(c, "CreateContainerConfigError", err.Error())
			if !a.sleep(pr, pause) {
				return
			}
			pause = min(2*pause, 10*time.Second)
			continue
		}
		pr.mu.Lock()
		pr.r = r
		pr.mu.Unlock()
		code, ended := a.watch(pr, r, st, restarts)
		if !ended {
			return // deleted, or the agent stopped
		}
		switch p.Spec.RestartPolicy {
		case corev1.RestartPolicyNever:
			reason := "Completed"
			if code != 0 {
				reason = "Error"
			}
			st.terminated(c, code, reason, "", restarts)
			return
		case corev1.RestartPolicyOnFailure:
			if code == 0 {
				st.terminated(c, 0, "Completed", "", restarts)
				return
			}
		}
		restarts++
		st.waiting(c, "CrashLoopBackOff", fmt.Sprintf("exited %d", code))
		if !a.sleep(pr, pause) {
			return
		}
		pause = min(2*pause, 10*time.Second)
	}
}

// watch reports the running container's readiness from its probes until
// it exits (its exit code, true) or the pod is deleted (false).
func (a *agent) watch(pr *podRun, r *podrun.Running, st *statusWriter, restarts int32) (int, bool) {
	c := pr.pod.Spec.Containers[0]
	exited := make(chan int, 1)
	go func() {
		code, err := a.run.Pool.Client.WaitContainerWithContext(r.Container.ID, a.ctx)
		if err == nil {
			exited <- code
		}
	}()
	started := c.StartupProbe == nil
	ready := false
	st.running(r, c, ready, restarts)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case code := <-exited:
			return code, true
		case <-pr.deleted:
			_ = a.run.Pool.Client.KillContainer(dc.KillContainerOptions{ID: r.Container.ID, Signal: dc.SIGKILL})
			a.confirmDeletion(pr.pod)
			return 0, false
		case <-a.ctx.Done():
			return 0, false
		case <-tick.C:
		}
		if !started {
			started = podrun.Probe(r, c.StartupProbe) == nil
			continue
		}
		now := c.ReadinessProbe == nil || podrun.Probe(r, c.ReadinessProbe) == nil
		if now != ready {
			ready = now
			st.running(r, c, ready, restarts)
		}
	}
}

// done reports whether the pod was deleted (confirming it) or the agent
// stopped.
func (a *agent) done(pr *podRun) bool {
	select {
	case <-pr.deleted:
		a.confirmDeletion(pr.pod)
		return true
	case <-a.ctx.Done():
		return true
	default:
		return false
	}
}

// sleep pauses for d; false when the pod was deleted or the agent stopped.
func (a *agent) sleep(pr *podRun, d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-pr.deleted:
		a.confirmDeletion(pr.pod)
		return false
	case <-a.ctx.Done():
		return false
	}
}

// confirmDeletion deletes a pod whose containers are gone, for good, as a
// kubelet does once it has stopped them.
func (a *agent) confirmDeletion(p *corev1.Pod) {
	_, _ = a.n.c.kubectlErr("delete", "pod", p.Name, "-n", p.Namespace, "--grace-period=0", "--force", "--wait=false")
}

func ownerOf(p *corev1.Pod) string {
	for _, o := range p.OwnerReferences {
		return o.Kind + "/" + o.Name + " pod " + p.Name
	}
	return "pod " + p.Name
}

// statusWriter writes a pod's status to the API.
type statusWriter struct {
	a       *agent
	pod     *corev1.Pod
	started metav1.Time
}

func (s *statusWriter) write(phase corev1.PodPhase, ready bool, cs corev1.ContainerStatus, podIP string) {
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		st := corev1.ConditionFalse
		if ok {
			st = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: st, LastTransitionTime: now}
	}
	status := corev1.PodStatus{
		Phase:  phase,
		HostIP: advertiseAddress, HostIPs: []corev1.HostIP{{IP: advertiseAddress}},
		StartTime: &s.started,
		Conditions: []corev1.PodCondition{
			cond(corev1.PodScheduled, true),
			cond(corev1.PodInitialized, phase != corev1.PodPending || cs.State.Running != nil),
			cond(corev1.ContainersReady, ready),
			cond(corev1.PodReady, ready),
		},
		ContainerStatuses: []corev1.ContainerStatus{cs},
	}
	if podIP != "" {
		status.PodIP, status.PodIPs = podIP, []corev1.PodIP{{IP: podIP}}
	}
	body, _ := json.Marshal(map[string]any{"status": status})
	_, _ = s.a.n.c.kubectlErr("patch", "pod", s.pod.Name, "-n", s.pod.Namespace, "--subresource=status", "--type=merge", "-p", string(body))
}

func (s *statusWriter) waiting(c corev1.Container, reason, message string) {
	s.write(corev1.PodPending, false, corev1.ContainerStatus{Name: c.Name, Image: c.Image,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: lastLines(message, 5)}}}, "")
}

func (s *statusWriter) running(r *podrun.Running, c corev1.Container, ready bool, restarts int32) {
	started := true
	ip := ""
	if n, ok := r.Container.NetworkSettings.Networks[s.a.run.Network.Network.Name]; ok {
		ip = n.IPAddress
	}
	s.write(corev1.PodRunning, ready, corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: r.Container.Image,
		ContainerID: "docker://" + r.Container.ID, Ready: ready, Started: &started, RestartCount: restarts,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(r.Container.State.StartedAt)}}}, ip)
}

func (s *statusWriter) terminated(c corev1.Container, code int, reason, message string, restarts int32) {
	phase := corev1.PodSucceeded
	if code != 0 {
		phase = corev1.PodFailed
	}
	now := metav1.Now()
	s.write(phase, false, corev1.ContainerStatus{Name: c.Name, Image: c.Image, RestartCount: restarts,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: int32(code), Reason: reason,
			Message: lastLines(message, 5), StartedAt: s.started, FinishedAt: now}}}, "")
}
