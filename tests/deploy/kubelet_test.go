package deploy

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
	corev1 "k8s.io/api/core/v1"
)

// kubelet runs the pods of a rendered overlay as Docker containers, the way
// a kubelet would run them: the container's command and args with $(VAR)
// expanded, its environment resolved from the overlay's Secrets and
// ConfigMaps and the downward API, its volumes (ConfigMaps as files,
// emptyDirs as tmpfs, volume claims as host directories), its security
// context (user, read-only root filesystem, no capabilities, no new
// privileges), its memory limit, and Service names as DNS aliases on a
// private network. It supports what these manifests use and fails on
// anything else, so a manifest it cannot run is noticed.
type kubelet struct {
	t       *testing.T
	pool    *dockertest.Pool
	r       *rendered
	network *dockertest.Network
	// image maps a manifest image to the test image that stands in for it;
	// gitImage is used instead for the containers that need git.
	image    map[string]string
	gitImage string
	// secrets supplies the values of Secrets an overlay documents but does
	// not define (prod): name → key → value.
	secrets map[string]map[string]string
}

// pod is one running pod: its main container.
type pod struct {
	name      string
	w         workload
	container *dc.Container
	// ports maps a container port to its address on the host.
	ports map[int32]string
}

func newKubelet(t *testing.T, pool *dockertest.Pool, r *rendered, img testImages) *kubelet {
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
	return &kubelet{t: t, pool: pool, r: r, network: network, gitImage: img.leviathanGit,
		image: map[string]string{skaffoldArtifact(t): img.leviathan, natsImage: img.nats}}
}

// needsGit reports whether a container runs git: localforge, or a shell
// script (its seed init container).
func needsGit(c corev1.Container) bool {
	return leviathanService(c) == "localforge" || (len(c.Command) > 0 && strings.HasSuffix(c.Command[0], "/sh"))
}

// expand replaces $(NAME) with the variable's value, as Kubernetes does in
// command, args and env values ($$(NAME) escapes; unknown names stay).
func expand(s string, vars map[string]string) string {
	re := regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	return re.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := vars[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

func (k *kubelet) secretValue(name, key string) (string, bool) {
	if s := k.r.secret(name); s != nil {
		if v, ok := s.Data[key]; ok {
			return string(v), true
		}
		v, ok := s.StringData[key]
		return v, ok
	}
	v, ok := k.secrets[name][key]
	return v, ok
}

// env resolves a container's environment in the order Kubernetes does:
// envFrom first, then env, each value expanded with what came before.
func (k *kubelet) env(podName string, w workload, c corev1.Container) map[string]string {
	t := k.t
	vars := map[string]string{}
	for _, f := range c.EnvFrom {
		switch {
		case f.ConfigMapRef != nil:
			cm := k.r.configMap(f.ConfigMapRef.Name)
			if cm == nil {
				t.Fatalf("%s: envFrom ConfigMap %s not found", w, f.ConfigMapRef.Name)
			}
			for key, v := range cm.Data {
				vars[f.Prefix+key] = v
			}
		default:
			t.Fatalf("%s: unsupported envFrom %+v", w, f)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			vars[e.Name] = expand(e.Value, vars)
			continue
		}
		src := e.ValueFrom
		switch {
		case src.SecretKeyRef != nil:
			v, ok := k.secretValue(src.SecretKeyRef.Name, src.SecretKeyRef.Key)
			if !ok {
				t.Fatalf("%s: %s: Secret %s has no key %s", w, e.Name, src.SecretKeyRef.Name, src.SecretKeyRef.Key)
			}
			vars[e.Name] = v
		case src.ConfigMapKeyRef != nil:
			cm := k.r.configMap(src.ConfigMapKeyRef.Name)
			v, ok := "", false
			if cm != nil {
				v, ok = cm.Data[src.ConfigMapKeyRef.Key]
			}
			if !ok {
				t.Fatalf("%s: %s: ConfigMap %s has no key %s", w, e.Name, src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key)
			}
			vars[e.Name] = v
		case src.FieldRef != nil:
			switch p := src.FieldRef.FieldPath; {
			case p == "metadata.name":
				vars[e.Name] = podName
			case p == "metadata.namespace":
				vars[e.Name] = "leviathan"
			case strings.HasPrefix(p, "metadata.labels['"):
				vars[e.Name] = w.labels[strings.TrimSuffix(strings.TrimPrefix(p, "metadata.labels['"), "']")]
			default:
				t.Fatalf("%s: unsupported fieldRef %s", w, p)
			}
		case src.ResourceFieldRef != nil && src.ResourceFieldRef.Resource == "limits.memory":
			vars[e.Name] = strconv.FormatInt(c.Resources.Limits.Memory().Value(), 10)
		default:
			t.Fatalf("%s: unsupported env source for %s", w, e.Name)
		}
	}
	return vars
}

// volumes turns the pod's volumes into binds and tmpfs mounts for one
// container; claims holds the host directory of each volume claim, shared
// by the containers of the pod.
func (k *kubelet) volumes(w workload, c corev1.Container, claims map[string]string) (binds []string, tmpfs map[string]string) {
	t := k.t
	tmpfs = map[string]string{}
	byName := map[string]corev1.Volume{}
	for _, v := range w.spec.Volumes {
		byName[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := byName[m.Name]
		switch {
		case !ok && w.claims[m.Name], ok && v.PersistentVolumeClaim != nil:
			dir, ok := claims[m.Name]
			if !ok {
				dir = t.TempDir()
				// The pod's fsGroup would own it; any uid may write here.
				if err := os.Chmod(dir, 0o777); err != nil {
					t.Fatal(err)
				}
				claims[m.Name] = dir
			}
			binds = append(binds, dir+":"+m.MountPath)
		case ok && v.EmptyDir != nil:
			tmpfs[m.MountPath] = "rw,mode=1777"
		case ok && v.ConfigMap != nil:
			cm := k.r.configMap(v.ConfigMap.Name)
			if cm == nil {
				t.Fatalf("%s: volume %s: ConfigMap %s not found", w, v.Name, v.ConfigMap.Name)
			}
			dir := t.TempDir()
			for key, data := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, key), []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			binds = append(binds, dir+":"+m.MountPath+":ro")
		default:
			t.Fatalf("%s: container %s: unsupported volume %s", w, c.Name, m.Name)
		}
	}
	return binds, tmpfs
}

// aliases are the DNS names of a pod: its name, its per-pod name under a
// StatefulSet's headless Service, and every Service that selects it.
func (k *kubelet) aliases(podName string, w workload) []string {
	names := []string{podName}
	if w.serviceName != "" {
		names = append(names, podName+"."+w.serviceName)
	}
	for _, s := range k.r.services() {
		if selects(s.Spec.Selector, w.labels) {
			names = append(names, s.Name)
		}
	}
	return names
}

// create creates (but does not start) one container of a pod.
func (k *kubelet) create(podName string, w workload, c corev1.Container, claims map[string]string, main bool) *dc.Container {
	t := k.t
	image := k.image[c.Image]
	if needsGit(c) {
		image = k.gitImage
	}
	if image == "" {
		t.Fatalf("%s: no test image stands in for %s", w, c.Image)
	}
	vars := k.env(podName, w, c)
	var env []string
	for name, v := range vars {
		env = append(env, name+"="+v)
	}
	sort.Strings(env)
	cfg := &dc.Config{Image: image, Env: env, Hostname: podName, ExposedPorts: map[dc.Port]struct{}{}}
	for _, s := range c.Command {
		cfg.Entrypoint = append(cfg.Entrypoint, expand(s, vars))
	}
	for _, s := range c.Args {
		cfg.Cmd = append(cfg.Cmd, expand(s, vars))
	}
	pod, sc := w.spec.SecurityContext, c.SecurityContext
	uid, gid := pod.RunAsUser, pod.RunAsGroup
	if sc != nil && sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc != nil && sc.RunAsGroup != nil {
		gid = sc.RunAsGroup
	}
	if uid == nil || gid == nil {
		t.Fatalf("%s: container %s has no runAsUser/runAsGroup", w, c.Name)
	}
	cfg.User = fmt.Sprintf("%d:%d", *uid, *gid)
	hc := &dc.HostConfig{PortBindings: map[dc.Port][]dc.PortBinding{}, Memory: c.Resources.Limits.Memory().Value()}
	if sc != nil {
		hc.ReadonlyRootfs = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
		if sc.Capabilities != nil {
			for _, c := range sc.Capabilities.Drop {
				hc.CapDrop = append(hc.CapDrop, string(c))
			}
		}
		if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
			hc.SecurityOpt = append(hc.SecurityOpt, "no-new-privileges")
		}
	}
	hc.Binds, hc.Tmpfs = k.volumes(w, c, claims)
	for _, p := range c.Ports {
		port := dc.Port(fmt.Sprintf("%d/tcp", p.ContainerPort))
		cfg.ExposedPorts[port] = struct{}{}
		hc.PortBindings[port] = []dc.PortBinding{{HostIP: "127.0.0.1"}}
	}
	endpoint := &dc.EndpointConfig{}
	if main {
		endpoint.Aliases = k.aliases(podName, w)
	}
	name := fmt.Sprintf("%s-%s-%s", k.network.Network.Name, podName, c.Name)
	ctr, err := k.pool.Client.CreateContainer(dc.CreateContainerOptions{
		Name: name, Config: cfg, HostConfig: hc,
		NetworkingConfig: &dc.NetworkingConfig{EndpointsConfig: map[string]*dc.EndpointConfig{k.network.Network.Name: endpoint}},
	})
	if err != nil {
		t.Fatalf("%s: create container %s: %v", w, c.Name, err)
	}
	t.Cleanup(func() {
		_ = k.pool.Client.RemoveContainer(dc.RemoveContainerOptions{ID: ctr.ID, Force: true, RemoveVolumes: true})
	})
	return ctr
}

// logs returns a container's output.
func (k *kubelet) logs(id string) string {
	var out bytes.Buffer
	_ = k.pool.Client.Logs(dc.LogsOptions{Container: id, OutputStream: &out, ErrorStream: &out, Stdout: true, Stderr: true})
	return out.String()
}

// wait waits for a container to exit and returns its exit code.
func (k *kubelet) wait(id string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return k.pool.Client.WaitContainerWithContext(id, ctx)
}

// start runs a pod: its init containers one after the other, each to a
// zero exit, then its one main container.
func (k *kubelet) start(w workload, podName string) *pod {
	t := k.t
	t.Helper()
	if len(w.spec.Containers) != 1 {
		t.Fatalf("%s: the test kubelet runs pods of one container", w)
	}
	claims := map[string]string{}
	for _, c := range w.spec.InitContainers {
		ctr := k.create(podName, w, c, claims, false)
		if err := k.pool.Client.StartContainer(ctr.ID, nil); err != nil {
			t.Fatalf("%s: start init container %s: %v", w, c.Name, err)
		}
		code, err := k.wait(ctr.ID, time.Minute)
		if err != nil || code != 0 {
			t.Fatalf("%s: init container %s: exit %d, %v\n%s", w, c.Name, code, err, k.logs(ctr.ID))
		}
	}
	ctr := k.create(podName, w, w.spec.Containers[0], claims, true)
	if err := k.pool.Client.StartContainer(ctr.ID, nil); err != nil {
		t.Fatalf("%s: start: %v", w, err)
	}
	info, err := k.pool.Client.InspectContainer(ctr.ID)
	if err != nil {
		t.Fatal(err)
	}
	p := &pod{name: podName, w: w, container: info, ports: map[int32]string{}}
	for port, bindings := range info.NetworkSettings.Ports {
		n, err := strconv.Atoi(port.Port())
		if err == nil && len(bindings) > 0 {
			p.ports[int32(n)] = bindings[0].HostIP + ":" + bindings[0].HostPort
		}
	}
	return p
}

// probeURL is the host URL of a probe of the pod's container.
func (k *kubelet) probeURL(p *pod, probe *corev1.Probe) string {
	k.t.Helper()
	port, ok := containerPort(p.w.spec, probe.HTTPGet.Port)
	if !ok {
		k.t.Fatalf("%s: probe port %s", p.w, probe.HTTPGet.Port.String())
	}
	return "http://" + p.ports[port.ContainerPort] + probe.HTTPGet.Path
}

// waitReady probes the pod as a kubelet does: the startup probe until it
// answers 200, then the readiness probe; once ready, the liveness probe
// must answer 200 too.
func (k *kubelet) waitReady(p *pod, timeout time.Duration) {
	t := k.t
	t.Helper()
	c := p.w.spec.Containers[0]
	client := &http.Client{Timeout: 2 * time.Second}
	get := func(url string) (int, error) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	deadline := time.Now().Add(timeout)
	for _, probe := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe} {
		if probe == nil {
			continue
		}
		url := k.probeURL(p, probe)
		for {
			code, err := get(url)
			if err == nil && code == http.StatusOK {
				break
			}
			info, ierr := k.pool.Client.InspectContainer(p.container.ID)
			if ierr == nil && !info.State.Running {
				t.Fatalf("%s (%s) exited with %d before %s answered\n%s", p.w, p.name, info.State.ExitCode, probe.HTTPGet.Path, k.logs(p.container.ID))
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s (%s): %s does not answer 200 after %v (%d, %v)\n%s", p.w, p.name, url, timeout, code, err, k.logs(p.container.ID))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if code, err := get(k.probeURL(p, c.LivenessProbe)); err != nil || code != http.StatusOK {
		t.Errorf("%s (%s): liveness probe %s answers %d, %v", p.w, p.name, c.LivenessProbe.HTTPGet.Path, code, err)
	}
}
