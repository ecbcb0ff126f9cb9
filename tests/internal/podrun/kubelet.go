// Package podrun runs Kubernetes pods as Docker containers, the way a
// kubelet would run them: the container's command and args with $(VAR)
// expanded, its environment resolved from Secrets and ConfigMaps and the
// downward API, its volumes (ConfigMaps as files, emptyDirs as tmpfs,
// volume claims as host directories), its security context (user,
// read-only root filesystem, no capabilities, no new privileges), its
// memory limit, and Service names as DNS aliases on a private network. It
// supports what Leviathan's manifests use and refuses anything else, so a
// manifest it cannot run is noticed.
//
// tests/deploy feeds it the pods of a rendered overlay; tests/k8s feeds it
// the pods a real control plane binds to its node.
package podrun

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
	"time"

	"github.com/ory/dockertest/v3"
	dc "github.com/ory/dockertest/v3/docker"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Objects finds what a pod refers to: Secrets, ConfigMaps, and the
// Services that may select it.
type Objects interface {
	Secret(name string) *corev1.Secret
	ConfigMap(name string) *corev1.ConfigMap
	Services() []*corev1.Service
}

// Pod is a pod to run.
type Pod struct {
	Name      string
	Namespace string
	Owner     string // what made it, for messages: "Deployment/clone"
	Labels    map[string]string
	Spec      *corev1.PodSpec
	// Subdomain is the StatefulSet's Service: the pod is also
	// <name>.<subdomain>.
	Subdomain string
	// Claims are volume names that are claims without a volume in Spec
	// (a rendered StatefulSet's volumeClaimTemplates).
	Claims map[string]bool
}

func (p Pod) String() string { return p.Owner }

// Kubelet runs pods on one Docker network.
type Kubelet struct {
	Pool    *dockertest.Pool
	Network *dockertest.Network
	Objects Objects
	// Secrets supplies the values of Secrets Objects does not hold
	// (an overlay that documents them without defining them): name → key →
	// value.
	Secrets map[string]map[string]string
	// Image maps a manifest image to the test image that stands in for
	// it; GitImage is used instead for the containers that need git.
	Image    map[string]string
	GitImage string
	// ClaimDir is the host directory of a pod's volume claim, shared by
	// its containers (and, when it returns the same one, its restarts).
	ClaimDir func(pod Pod, claim string) (string, error)
	// Cleanup registers the removal of a container (t.Cleanup).
	Cleanup func(func())
}

// Running is a pod's main container, started.
type Running struct {
	Pod       Pod
	Container *dc.Container
	// Ports maps a container port to its address on the host.
	Ports map[int32]string
}

// NeedsGit reports whether a container runs git: localforge, or a shell
// script (its seed init container).
func NeedsGit(c corev1.Container) bool {
	return LeviathanService(c) == "localforge" || (len(c.Command) > 0 && strings.HasSuffix(c.Command[0], "/sh"))
}

// LeviathanService returns the service a container runs (`run <service>`),
// or "" for another command.
func LeviathanService(c corev1.Container) string {
	if len(c.Args) >= 2 && c.Args[0] == "run" {
		return c.Args[1]
	}
	return ""
}

var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// Expand replaces $(NAME) with the variable's value, as Kubernetes does in
// command, args and env values ($$(NAME) escapes; unknown names stay).
func Expand(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := vars[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

// Selects reports whether a Service-style selector (labels that must all
// be present) picks a pod. An empty selector picks nothing here: a Service
// without one would need hand-made Endpoints.
func Selects(selector, podLabels map[string]string) bool {
	return len(selector) > 0 && labels.SelectorFromSet(selector).Matches(labels.Set(podLabels))
}

// ContainerPort finds a port of the pod by name or number.
func ContainerPort(spec *corev1.PodSpec, port intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
				return p, true
			}
		}
	}
	return corev1.ContainerPort{}, false
}

// SecretValue is a key of a Secret, from Objects or k.Secrets.
func (k *Kubelet) SecretValue(name, key string) (string, bool) {
	if s := k.Objects.Secret(name); s != nil {
		if v, ok := s.Data[key]; ok {
			return string(v), true
		}
		v, ok := s.StringData[key]
		return v, ok
	}
	v, ok := k.Secrets[name][key]
	return v, ok
}

// Env resolves a container's environment in the order Kubernetes does:
// envFrom first, then env, each value expanded with what came before.
func (k *Kubelet) Env(p Pod, c corev1.Container) (map[string]string, error) {
	vars := map[string]string{}
	for _, f := range c.EnvFrom {
		switch {
		case f.ConfigMapRef != nil:
			cm := k.Objects.ConfigMap(f.ConfigMapRef.Name)
			if cm == nil {
				return nil, fmt.Errorf("%s: envFrom ConfigMap %s not found", p, f.ConfigMapRef.Name)
			}
			for key, v := range cm.Data {
				vars[f.Prefix+key] = v
			}
		default:
			return nil, fmt.Errorf("%s: unsupported envFrom %+v", p, f)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			vars[e.Name] = Expand(e.Value, vars)
			continue
		}
		src := e.ValueFrom
		switch {
		case src.SecretKeyRef != nil:
			v, ok := k.SecretValue(src.SecretKeyRef.Name, src.SecretKeyRef.Key)
			if !ok {
				return nil, fmt.Errorf("%s: %s: Secret %s has no key %s", p, e.Name, src.SecretKeyRef.Name, src.SecretKeyRef.Key)
			}
			vars[e.Name] = v
		case src.ConfigMapKeyRef != nil:
			cm := k.Objects.ConfigMap(src.ConfigMapKeyRef.Name)
			v, ok := "", false
			if cm != nil {
				v, ok = cm.Data[src.ConfigMapKeyRef.Key]
			}
			if !ok {
				return nil, fmt.Errorf("%s: %s: ConfigMap %s has no key %s", p, e.Name, src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key)
			}
			vars[e.Name] = v
		case src.FieldRef != nil:
			switch f := src.FieldRef.FieldPath; {
			case f == "metadata.name":
				vars[e.Name] = p.Name
			case f == "metadata.namespace":
				vars[e.Name] = p.Namespace
			case strings.HasPrefix(f, "metadata.labels['"):
				vars[e.Name] = p.Labels[strings.TrimSuffix(strings.TrimPrefix(f, "metadata.labels['"), "']")]
			default:
				return nil, fmt.Errorf("%s: unsupported fieldRef %s", p, f)
			}
		case src.ResourceFieldRef != nil && src.ResourceFieldRef.Resource == "limits.memory":
			vars[e.Name] = strconv.FormatInt(c.Resources.Limits.Memory().Value(), 10)
		default:
			return nil, fmt.Errorf("%s: unsupported env source for %s", p, e.Name)
		}
	}
	return vars, nil
}

// volumes turns the pod's volumes into binds and tmpfs mounts for one
// container.
func (k *Kubelet) volumes(p Pod, c corev1.Container) (binds []string, tmpfs map[string]string, err error) {
	tmpfs = map[string]string{}
	byName := map[string]corev1.Volume{}
	for _, v := range p.Spec.Volumes {
		byName[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v, ok := byName[m.Name]
		switch {
		case !ok && p.Claims[m.Name], ok && v.PersistentVolumeClaim != nil:
			claim := m.Name
			if ok {
				claim = v.PersistentVolumeClaim.ClaimName
			}
			dir, err := k.ClaimDir(p, claim)
			if err != nil {
				return nil, nil, err
			}
			binds = append(binds, dir+":"+m.MountPath)
		case ok && v.EmptyDir != nil:
			tmpfs[m.MountPath] = "rw,mode=1777"
		case ok && v.ConfigMap != nil:
			cm := k.Objects.ConfigMap(v.ConfigMap.Name)
			if cm == nil {
				return nil, nil, fmt.Errorf("%s: volume %s: ConfigMap %s not found", p, v.Name, v.ConfigMap.Name)
			}
			dir, err := os.MkdirTemp("", "podrun-configmap-")
			if err != nil {
				return nil, nil, err
			}
			k.Cleanup(func() { _ = os.RemoveAll(dir) })
			for key, data := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, key), []byte(data), 0o644); err != nil {
					return nil, nil, err
				}
			}
			if err := os.Chmod(dir, 0o755); err != nil {
				return nil, nil, err
			}
			binds = append(binds, dir+":"+m.MountPath+":ro")
		default:
			return nil, nil, fmt.Errorf("%s: container %s: unsupported volume %s", p, c.Name, m.Name)
		}
	}
	return binds, tmpfs, nil
}

// Aliases are the DNS names of a pod: its name, its per-pod name under a
// StatefulSet's headless Service, and every Service that selects it.
func (k *Kubelet) Aliases(p Pod) []string {
	names := []string{p.Name}
	if p.Subdomain != "" {
		names = append(names, p.Name+"."+p.Subdomain)
	}
	for _, s := range k.Objects.Services() {
		if Selects(s.Spec.Selector, p.Labels) {
			names = append(names, s.Name)
		}
	}
	return names
}

// Create creates (but does not start) one container of a pod; main says
// it is the pod's main container, which answers to its DNS names.
func (k *Kubelet) Create(p Pod, c corev1.Container, main bool) (*dc.Container, error) {
	image := k.Image[c.Image]
	if NeedsGit(c) {
		image = k.GitImage
	}
	if image == "" {
		return nil, fmt.Errorf("%s: no test image stands in for %s", p, c.Image)
	}
	vars, err := k.Env(p, c)
	if err != nil {
		return nil, err
	}
	var env []string
	for name, v := range vars {
		env = append(env, name+"="+v)
	}
	sort.Strings(env)
	cfg := &dc.Config{Image: image, Env: env, Hostname: p.Name, ExposedPorts: map[dc.Port]struct{}{}}
	for _, s := range c.Command {
		cfg.Entrypoint = append(cfg.Entrypoint, Expand(s, vars))
	}
	for _, s := range c.Args {
		cfg.Cmd = append(cfg.Cmd, Expand(s, vars))
	}
	psc, sc := p.Spec.SecurityContext, c.SecurityContext
	var uid, gid *int64
	if psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	if sc != nil && sc.RunAsUser != nil {
		uid = sc.RunAsUser
	}
	if sc != nil && sc.RunAsGroup != nil {
		gid = sc.RunAsGroup
	}
	if uid == nil || gid == nil {
		return nil, fmt.Errorf("%s: container %s has no runAsUser/runAsGroup", p, c.Name)
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
	if hc.Binds, hc.Tmpfs, err = k.volumes(p, c); err != nil {
		return nil, err
	}
	for _, port := range c.Ports {
		dp := dc.Port(fmt.Sprintf("%d/tcp", port.ContainerPort))
		cfg.ExposedPorts[dp] = struct{}{}
		hc.PortBindings[dp] = []dc.PortBinding{{HostIP: "127.0.0.1"}}
	}
	endpoint := &dc.EndpointConfig{}
	if main {
		endpoint.Aliases = k.Aliases(p)
	}
	name := fmt.Sprintf("%s-%s-%s-%s", k.Network.Network.Name, p.Name, c.Name, RandomHex(2))
	ctr, err := k.Pool.Client.CreateContainer(dc.CreateContainerOptions{
		Name: name, Config: cfg, HostConfig: hc,
		NetworkingConfig: &dc.NetworkingConfig{EndpointsConfig: map[string]*dc.EndpointConfig{k.Network.Network.Name: endpoint}},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: create container %s: %w", p, c.Name, err)
	}
	k.Cleanup(func() {
		_ = k.Pool.Client.RemoveContainer(dc.RemoveContainerOptions{ID: ctr.ID, Force: true, RemoveVolumes: true})
	})
	return ctr, nil
}

// Logs returns a container's output.
func (k *Kubelet) Logs(id string) string {
	var out bytes.Buffer
	_ = k.Pool.Client.Logs(dc.LogsOptions{Container: id, OutputStream: &out, ErrorStream: &out, Stdout: true, Stderr: true})
	return out.String()
}

// Wait waits for a container to exit and returns its exit code.
func (k *Kubelet) Wait(id string, timeout time.Duration) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return k.Pool.Client.WaitContainerWithContext(id, ctx)
}

// RunInit runs a pod's init containers one after the other, each to a
// zero exit, within timeout each.
func (k *Kubelet) RunInit(p Pod, timeout time.Duration) error {
	for _, c := range p.Spec.InitContainers {
		ctr, err := k.Create(p, c, false)
		if err != nil {
			return err
		}
		if err := k.Pool.Client.StartContainer(ctr.ID, nil); err != nil {
			return fmt.Errorf("%s: start init container %s: %w", p, c.Name, err)
		}
		code, err := k.Wait(ctr.ID, timeout)
		if err != nil || code != 0 {
			return fmt.Errorf("%s: init container %s: exit %d, %v\n%s", p, c.Name, code, err, k.Logs(ctr.ID))
		}
	}
	return nil
}

// StartMain creates and starts a pod's one main container.
func (k *Kubelet) StartMain(p Pod) (*Running, error) {
	if len(p.Spec.Containers) != 1 {
		return nil, fmt.Errorf("%s: the test kubelet runs pods of one container", p)
	}
	ctr, err := k.Create(p, p.Spec.Containers[0], true)
	if err != nil {
		return nil, err
	}
	if err := k.Pool.Client.StartContainer(ctr.ID, nil); err != nil {
		return nil, fmt.Errorf("%s: start: %w", p, err)
	}
	return k.Inspect(p, ctr.ID)
}

// Inspect reads a started container's state and host ports (Docker may
// give a restarted container others).
func (k *Kubelet) Inspect(p Pod, id string) (*Running, error) {
	info, err := k.Pool.Client.InspectContainer(id)
	if err != nil {
		return nil, err
	}
	r := &Running{Pod: p, Container: info, Ports: map[int32]string{}}
	for port, bindings := range info.NetworkSettings.Ports {
		n, err := strconv.Atoi(port.Port())
		if err == nil && len(bindings) > 0 {
			r.Ports[int32(n)] = bindings[0].HostIP + ":" + bindings[0].HostPort
		}
	}
	return r, nil
}

// ProbeURL is the host URL of an HTTP probe of the pod's container.
func ProbeURL(r *Running, probe *corev1.Probe) (string, error) {
	if probe.HTTPGet == nil {
		return "", fmt.Errorf("%s: only HTTP probes are supported", r.Pod)
	}
	port, ok := ContainerPort(r.Pod.Spec, probe.HTTPGet.Port)
	if !ok {
		return "", fmt.Errorf("%s: probe port %s", r.Pod, probe.HTTPGet.Port.String())
	}
	return "http://" + r.Ports[port.ContainerPort] + probe.HTTPGet.Path, nil
}

var probeClient = &http.Client{Timeout: 2 * time.Second}

// Probe sends an HTTP probe once: nil when it answers 200.
func Probe(r *Running, probe *corev1.Probe) error {
	url, err := ProbeURL(r, probe)
	if err != nil {
		return err
	}
	resp, err := probeClient.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answers %d", url, resp.StatusCode)
	}
	return nil
}

// WaitReady probes the pod as a kubelet does: the startup probe until it
// answers 200, then the readiness probe; once ready, the liveness probe
// must answer 200 too.
func (k *Kubelet) WaitReady(r *Running, timeout time.Duration) error {
	c := r.Pod.Spec.Containers[0]
	deadline := time.Now().Add(timeout)
	for _, probe := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe} {
		if probe == nil {
			continue
		}
		for {
			err := Probe(r, probe)
			if err == nil {
				break
			}
			info, ierr := k.Pool.Client.InspectContainer(r.Container.ID)
			if ierr == nil && !info.State.Running {
				return fmt.Errorf("%s (%s): the container exited with %d before %s answered\n%s", r.Pod, r.Pod.Name, info.State.ExitCode, probe.HTTPGet.Path, k.Logs(r.Container.ID))
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s (%s): %s not ready after %v: %v\n%s", r.Pod, r.Pod.Name, probe.HTTPGet.Path, timeout, err, k.Logs(r.Container.ID))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if c.LivenessProbe != nil {
		if err := Probe(r, c.LivenessProbe); err != nil {
			return fmt.Errorf("%s (%s): liveness probe: %v", r.Pod, r.Pod.Name, err)
		}
	}
	return nil
}
