package deploy

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// leviathanServices are the services `leviathan run` accepts; each overlay
// runs every one except localforge (dev only) in its own Deployment.
var leviathanServices = []string{"clone", "backlog-edit", "push", "pr", "projector"}

// TestOverlaysRenderStrictly renders both overlays with `kubectl kustomize`
// and decodes every object strictly into the Kubernetes API types.
func TestOverlaysRenderStrictly(t *testing.T) {
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		t.Run(filepath.Base(o), func(t *testing.T) {
			r := render(t, o)
			kinds := map[string]int{}
			for _, obj := range r.objects {
				kind := fmt.Sprintf("%T", obj)
				kinds[kind]++
				m, ok := obj.(interface {
					GetNamespace() string
					GetName() string
				})
				if _, isNS := obj.(*corev1.Namespace); ok && !isNS && m.GetNamespace() != "leviathan" {
					t.Errorf("%s %s is in namespace %q, want leviathan", kind, m.GetName(), m.GetNamespace())
				}
			}
			for _, want := range []string{"*v1.Namespace", "*v1.StatefulSet", "*v1.Deployment", "*v1.Service", "*v1.ConfigMap", "*v1.ServiceAccount"} {
				if kinds[want] == 0 {
					t.Errorf("no %s rendered (kinds: %v)", want, kinds)
				}
			}
		})
	}
}

// TestStrictDecodingRejectsMistakes shows that the decoder of the tests
// above would fail on the mistakes it is there to catch.
func TestStrictDecodingRejectsMistakes(t *testing.T) {
	const good = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports:\n    - port: 80\n"
	if _, err := decodeStrict([]byte(good)); err != nil {
		t.Fatalf("a valid Service does not decode: %v", err)
	}
	for name, doc := range map[string]string{
		"unknown field":  "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  prots:\n    - port: 80\n",
		"duplicate key":  "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  name: y\n",
		"wrong type":     "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports: 80\n",
		"unknown kind":   "apiVersion: apps/v1\nkind: Deploymnet\nmetadata:\n  name: x\n",
		"nested unknown": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      containers:\n        - name: c\n          imagePullPolicy: IfNotPresent\n          securityContext:\n            readOnlyRootFS: true\n",
	} {
		if _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// TestSourceYAMLHasNoDuplicateKeys checks the files themselves: kustomize
// parses them before the strict decoder sees anything, and a duplicate key
// there would be dropped silently.
func TestSourceYAMLHasNoDuplicateKeys(t *testing.T) {
	files := []string{filepath.Join(root, "skaffold.yaml")}
	err := filepath.WalkDir(filepath.Join(root, "deploy"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found only %d YAML files under deploy/", len(files))
	}
	for _, f := range files {
		data := readFile(t, strings.TrimPrefix(f, root+"/"))
		docs, err := splitYAML(data)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, doc := range docs {
			if _, err := yaml.YAMLToJSONStrict(doc); err != nil {
				t.Errorf("%s: %v", f, err)
				continue
			}
			// Inline patches of a kustomization are YAML inside YAML.
			var k struct {
				Patches []struct {
					Patch string `json:"patch"`
				} `json:"patches"`
			}
			if yaml.Unmarshal(doc, &k) == nil {
				for _, p := range k.Patches {
					if _, err := yaml.YAMLToJSONStrict([]byte(p.Patch)); err != nil {
						t.Errorf("%s: inline patch: %v", f, err)
					}
				}
			}
		}
	}
}

// TestWorkloadSelectors checks that every controller selects its own pod
// template, and that PodDisruptionBudgets and topology spread constraints
// select the pods they are written for.
func TestWorkloadSelectors(t *testing.T) {
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			r := render(t, o)
			ws := r.workloads()
			for _, w := range ws {
				if w.kind != "Job" && !labelSelects(t, w.selector, w.labels) {
					t.Errorf("%s: selector %v does not match its pod labels %v", w, w.selector, w.labels)
				}
				// Two controllers selecting the same pods fight over them.
				for _, other := range ws {
					if other.String() != w.String() && other.kind != "Job" && labelSelects(t, other.selector, w.labels) {
						t.Errorf("%s also selects the pods of %s", other, w)
					}
				}
				for _, c := range w.spec.TopologySpreadConstraints {
					if !labelSelects(t, c.LabelSelector, w.labels) {
						t.Errorf("%s: topology spread selector %v does not match its own pods", w, c.LabelSelector)
					}
					for _, k := range c.MatchLabelKeys {
						if _, ok := w.labels[k]; !ok && !(k == "pod-template-hash" && w.kind == "Deployment") {
							t.Errorf("%s: matchLabelKeys %q is not a label of its pods", w, k)
						}
					}
				}
			}
			for _, obj := range r.objects {
				pdb, ok := obj.(*policyv1.PodDisruptionBudget)
				if !ok {
					continue
				}
				var matched []string
				for _, w := range ws {
					if labelSelects(t, pdb.Spec.Selector, w.labels) {
						matched = append(matched, w.String())
					}
				}
				if len(matched) != 1 {
					t.Errorf("PodDisruptionBudget %s selects %v, want exactly one workload", pdb.Name, matched)
				}
			}
		})
	}
}

// TestServicesSelectWorkloads checks that every Service selects pods of some
// workload, and that its target ports exist on every pod it selects.
func TestServicesSelectWorkloads(t *testing.T) {
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			r := render(t, o)
			for _, s := range r.services() {
				var picked []workload
				for _, w := range r.workloads() {
					if w.kind != "Job" && selects(s.Spec.Selector, w.labels) {
						picked = append(picked, w)
					}
				}
				if len(picked) == 0 {
					t.Errorf("Service %s selects no workload (selector %v)", s.Name, s.Spec.Selector)
				}
				for _, w := range picked {
					for _, p := range s.Spec.Ports {
						target := p.TargetPort
						if target.Type == intstr.Int && target.IntVal == 0 {
							target = intstr.FromInt32(p.Port)
						}
						if _, ok := containerPort(w.spec, target); !ok {
							t.Errorf("Service %s port %s: target port %s is not a port of %s", s.Name, p.Name, target.String(), w)
						}
					}
				}
			}
		})
	}
}

// TestProbesAndVolumes checks that every probe's port is a port of its
// container, and every volume mount a volume of its pod (with the nats-tls
// component too).
func TestProbesAndVolumes(t *testing.T) {
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		t.Run(filepath.Base(o), func(t *testing.T) {
			r := render(t, o)
			for _, w := range r.workloads() {
				volumes := map[string]bool{}
				for _, v := range w.spec.Volumes {
					volumes[v.Name] = true
				}
				for name := range w.claims {
					volumes[name] = true
				}
				for _, c := range allContainers(w.spec) {
					for _, m := range c.VolumeMounts {
						if !volumes[m.Name] {
							t.Errorf("%s container %s mounts %q, which is no volume of the pod", w, c.Name, m.Name)
						}
					}
				}
				for _, c := range w.spec.Containers {
					if w.kind != "Job" && (c.LivenessProbe == nil || c.ReadinessProbe == nil) {
						t.Errorf("%s container %s: liveness and readiness probes are required", w, c.Name)
					}
					for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
						if p == nil {
							continue
						}
						if p.HTTPGet == nil {
							t.Errorf("%s container %s: probe is not an HTTP probe", w, c.Name)
							continue
						}
						pod := corev1.PodSpec{Containers: []corev1.Container{c}}
						if _, ok := containerPort(&pod, p.HTTPGet.Port); !ok {
							t.Errorf("%s container %s: probe port %s is not a port of the container", w, c.Name, p.HTTPGet.Port.String())
						}
						if !strings.HasPrefix(p.HTTPGet.Path, "/healthz") && !strings.HasPrefix(p.HTTPGet.Path, "/readyz") {
							t.Errorf("%s container %s: probe path %q is not /healthz or /readyz", w, c.Name, p.HTTPGet.Path)
						}
					}
				}
			}
		})
	}
}

// documentedSecrets reads the table of deploy/overlays/prod/SECRETS.md:
// secret name → keys.
func documentedSecrets(t *testing.T) map[string][]string {
	t.Helper()
	row := regexp.MustCompile("(?m)^\\|\\s*`([a-z0-9.-]+)`\\s*\\|\\s*`([A-Za-z0-9._-]+)`\\s*\\|")
	out := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(string(readFile(t, "deploy/overlays/prod/SECRETS.md")), -1) {
		out[m[1]] = append(out[m[1]], m[2])
	}
	return out
}

// ref is one reference of a pod to a key of a Secret or ConfigMap; an empty
// key means the whole object (envFrom, volumes without items).
type ref struct {
	secret    bool
	name, key string
	optional  bool
}

func podRefs(spec *corev1.PodSpec) []ref {
	var refs []ref
	opt := func(b *bool) bool { return b != nil && *b }
	for _, c := range allContainers(spec) {
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if s := e.ValueFrom.SecretKeyRef; s != nil {
				refs = append(refs, ref{true, s.Name, s.Key, opt(s.Optional)})
			}
			if cm := e.ValueFrom.ConfigMapKeyRef; cm != nil {
				refs = append(refs, ref{false, cm.Name, cm.Key, opt(cm.Optional)})
			}
		}
		for _, f := range c.EnvFrom {
			if f.SecretRef != nil {
				refs = append(refs, ref{true, f.SecretRef.Name, "", opt(f.SecretRef.Optional)})
			}
			if f.ConfigMapRef != nil {
				refs = append(refs, ref{false, f.ConfigMapRef.Name, "", opt(f.ConfigMapRef.Optional)})
			}
		}
	}
	// A volume with items projects those keys only.
	keys := func(items []corev1.KeyToPath) []string {
		if len(items) == 0 {
			return []string{""}
		}
		var out []string
		for _, it := range items {
			out = append(out, it.Key)
		}
		return out
	}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			for _, k := range keys(v.Secret.Items) {
				refs = append(refs, ref{true, v.Secret.SecretName, k, opt(v.Secret.Optional)})
			}
		}
		if v.ConfigMap != nil {
			for _, k := range keys(v.ConfigMap.Items) {
				refs = append(refs, ref{false, v.ConfigMap.Name, k, opt(v.ConfigMap.Optional)})
			}
		}
	}
	return refs
}

// TestSecretAndConfigMapReferences checks that every secretKeyRef names a
// Secret and key that the overlay defines or, for prod and the overlays
// with the nats-tls component, SECRETS.md documents; that every ConfigMap
// reference resolves; and that the documentation lists nothing that is not
// used by prod, alone or with the nats-tls component.
func TestSecretAndConfigMapReferences(t *testing.T) {
	documented := documentedSecrets(t)
	if len(documented) == 0 {
		t.Fatal("deploy/overlays/prod/SECRETS.md documents no Secret")
	}
	used := map[string]map[string]bool{} // by prod and prod-tls
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		name := filepath.Base(o)
		t.Run(name, func(t *testing.T) {
			r := render(t, o)
			prod := name == "prod" || name == "prod-tls"
			for _, w := range r.workloads() {
				for _, ref := range podRefs(w.spec) {
					if ref.optional {
						t.Errorf("%s: optional reference to %q: a missing credential must stop the pod", w, ref.name)
					}
					if !ref.secret {
						cm := r.configMap(ref.name)
						if cm == nil {
							t.Errorf("%s refers to ConfigMap %q, which the overlay does not define", w, ref.name)
						} else if _, ok := cm.Data[ref.key]; ref.key != "" && !ok {
							t.Errorf("%s refers to key %q of ConfigMap %s, which has no such key", w, ref.key, ref.name)
						}
						continue
					}
					if prod {
						if used[ref.name] == nil {
							used[ref.name] = map[string]bool{}
						}
						used[ref.name][ref.key] = true
					}
					if s := r.secret(ref.name); s != nil {
						_, inData := s.Data[ref.key]
						_, inString := s.StringData[ref.key]
						if ref.key != "" && !inData && !inString {
							t.Errorf("%s refers to key %q of Secret %s, which has no such key", w, ref.key, ref.name)
						}
						continue
					}
					if (prod || slices.Contains(tlsOverlays, o)) && (ref.key == "" || slices.Contains(documented[ref.name], ref.key)) {
						continue
					}
					t.Errorf("%s refers to Secret %s key %q, which the %s overlay neither defines nor documents", w, ref.name, ref.key, name)
				}
			}
			if prod {
				for _, obj := range r.objects {
					if s, ok := obj.(*corev1.Secret); ok {
						t.Errorf("the %s overlay defines Secret %s: credentials must not be in the repository", name, s.Name)
					}
				}
			}
		})
	}
	for name, keys := range documented {
		for _, k := range keys {
			if !used[name][k] {
				t.Errorf("SECRETS.md documents %s/%s, which no pod of prod (alone or with nats-tls) uses", name, k)
			}
		}
	}
}

// TestImages checks that every Leviathan container uses the skaffold
// artifact, and every other image a pinned tag, never latest.
func TestImages(t *testing.T) {
	artifact := skaffoldArtifact(t)
	natsVersion := moduleVersion(t, "github.com/nats-io/nats-server/v2")
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			r := render(t, o)
			for _, w := range r.workloads() {
				for _, c := range allContainers(w.spec) {
					switch {
					case c.Image == artifact:
						// Replaced by skaffold with the built tag.
					case c.Image == "" || strings.HasSuffix(c.Image, ":latest") || !strings.Contains(c.Image, ":"):
						t.Errorf("%s container %s: image %q is not pinned", w, c.Name, c.Image)
					case strings.HasPrefix(c.Image, "nats:"):
						// The tests run this server version (tests/deploy
						// builds it from the module the product uses).
						want := "nats:" + strings.TrimPrefix(natsVersion, "v") + "-alpine"
						if c.Image != want {
							t.Errorf("%s: image %s, want %s (the nats-server version of go.mod)", w, c.Image, want)
						}
					default:
						t.Errorf("%s container %s: unexpected image %s", w, c.Name, c.Image)
					}
					if c.Image == artifact && c.ImagePullPolicy == corev1.PullAlways {
						t.Errorf("%s: imagePullPolicy Always cannot use an image loaded into kind", w)
					}
				}
			}
		})
	}
}

// TestSecurityAndResources checks the hardening of every container (with
// the nats-tls component too): non-root, read-only root filesystem, no
// capabilities, no privilege escalation, the RuntimeDefault seccomp
// profile, requests and a memory limit; and a ServiceAccount of its own
// for every workload, without an API token.
func TestSecurityAndResources(t *testing.T) {
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		t.Run(filepath.Base(o), func(t *testing.T) {
			r := render(t, o)
			accounts := map[string]bool{}
			for _, obj := range r.objects {
				if sa, ok := obj.(*corev1.ServiceAccount); ok {
					accounts[sa.Name] = true
					if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
						t.Errorf("ServiceAccount %s mounts an API token; nothing here talks to the API server", sa.Name)
					}
				}
			}
			owner := map[string]string{}
			for _, w := range r.workloads() {
				spec := w.spec
				switch sa := spec.ServiceAccountName; {
				case sa == "" || sa == "default":
					t.Errorf("%s runs as the default ServiceAccount", w)
				case !accounts[sa]:
					t.Errorf("%s: ServiceAccount %s is not defined", w, sa)
				case owner[sa] != "":
					t.Errorf("%s shares ServiceAccount %s with %s", w, sa, owner[sa])
				default:
					owner[sa] = w.String()
				}
				if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
					t.Errorf("%s mounts an API token", w)
				}
				pod := spec.SecurityContext
				if pod == nil || pod.SeccompProfile == nil || pod.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
					t.Errorf("%s: pod seccomp profile must be RuntimeDefault", w)
				}
				for _, c := range allContainers(spec) {
					sc := c.SecurityContext
					if sc == nil {
						t.Errorf("%s container %s has no securityContext", w, c.Name)
						continue
					}
					nonRoot := (sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) || (pod != nil && pod.RunAsNonRoot != nil && *pod.RunAsNonRoot)
					uid := sc.RunAsUser
					if uid == nil && pod != nil {
						uid = pod.RunAsUser
					}
					if !nonRoot || uid == nil || *uid == 0 {
						t.Errorf("%s container %s: runAsNonRoot and a non-zero runAsUser are required", w, c.Name)
					}
					if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
						t.Errorf("%s container %s: root filesystem is writable", w, c.Name)
					}
					if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
						t.Errorf("%s container %s: privilege escalation allowed", w, c.Name)
					}
					if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
						t.Errorf("%s container %s: capabilities must drop ALL and add none", w, c.Name)
					}
					if sc.Privileged != nil && *sc.Privileged {
						t.Errorf("%s container %s is privileged", w, c.Name)
					}
					req, lim := c.Resources.Requests, c.Resources.Limits
					if req.Cpu().IsZero() || req.Memory().IsZero() || lim.Memory().IsZero() {
						t.Errorf("%s container %s: cpu and memory requests and a memory limit are required", w, c.Name)
					} else if lim.Memory().Cmp(*req.Memory()) < 0 {
						t.Errorf("%s container %s: memory limit below the request", w, c.Name)
					}
				}
			}
		})
	}
}

// TestOneDeploymentPerService checks the shape of each overlay: one
// Deployment per service, the control plane Service, the replica counts of
// the issue (dev: one of everything; prod: 3 NATS servers, R3 streams, two
// pods per service with PodDisruptionBudgets and topology spread).
func TestOneDeploymentPerService(t *testing.T) {
	want := map[string]struct {
		nats, streams, pods int32
		localforge          bool
	}{
		"dev":  {nats: 1, streams: 1, pods: 1, localforge: true},
		"prod": {nats: 3, streams: 3, pods: 2, localforge: false},
	}
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			r := render(t, o)
			w := want[o]
			seen := map[string]workload{}
			for _, wl := range r.workloads() {
				for _, c := range wl.spec.Containers {
					if svc := leviathanService(c); svc != "" {
						if prev, dup := seen[svc]; dup {
							t.Errorf("service %s runs in both %s and %s", svc, prev, wl)
						}
						seen[svc] = wl
						if wl.kind != "Deployment" {
							t.Errorf("service %s runs in a %s, want a Deployment", svc, wl.kind)
						}
					}
				}
			}
			for _, svc := range leviathanServices {
				wl, ok := seen[svc]
				if !ok {
					t.Errorf("no Deployment runs `leviathan run %s`", svc)
					continue
				}
				if wl.replicas != w.pods {
					t.Errorf("%s: %d replicas, want %d", wl, wl.replicas, w.pods)
				}
			}
			if _, ok := seen["localforge"]; ok != w.localforge {
				t.Errorf("localforge deployed: %v, want %v", ok, w.localforge)
			}
			for svc := range seen {
				if !slices.Contains(leviathanServices, svc) && svc != "localforge" {
					t.Errorf("`leviathan run %s`: no such service", svc)
				}
			}
			nats, ok := r.workload("StatefulSet", "nats")
			if !ok {
				t.Fatal("no NATS StatefulSet")
			}
			if nats.replicas != w.nats {
				t.Errorf("NATS: %d servers, want %d", nats.replicas, w.nats)
			}
			env := r.configMap("leviathan-env")
			if env == nil {
				t.Fatal("no leviathan-env ConfigMap")
			}
			n, err := strconv.Atoi(env.Data["LEVIATHAN_STREAM_REPLICAS"])
			if err != nil || int32(n) != w.streams || int32(n) > nats.replicas {
				t.Errorf("LEVIATHAN_STREAM_REPLICAS=%q, want %d (and no more than the %d NATS servers)", env.Data["LEVIATHAN_STREAM_REPLICAS"], w.streams, nats.replicas)
			}
			cp := r.service("leviathan-control-plane")
			if cp == nil || len(cp.Spec.Ports) == 0 || cp.Spec.Ports[0].Port != 8000 || !selects(cp.Spec.Selector, seen["projector"].labels) {
				t.Errorf("the control plane Service must serve port 8000 from the projector: %+v", cp)
			}
			if o != "prod" {
				return
			}
			for _, wl := range r.workloads() {
				if wl.kind == "Job" {
					continue
				}
				var pdb bool
				for _, obj := range r.objects {
					if p, ok := obj.(*policyv1.PodDisruptionBudget); ok && labelSelects(t, p.Spec.Selector, wl.labels) {
						pdb = true
					}
				}
				if !pdb {
					t.Errorf("%s has no PodDisruptionBudget", wl)
				}
				var byHost bool
				for _, c := range wl.spec.TopologySpreadConstraints {
					byHost = byHost || (c.TopologyKey == "kubernetes.io/hostname" && c.WhenUnsatisfiable == corev1.DoNotSchedule)
				}
				if !byHost {
					t.Errorf("%s is not spread over nodes", wl)
				}
			}
		})
	}
}

// binaryEnv is every environment variable cmd/leviathan reads.
func binaryEnv(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "cmd", "leviathan", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`getenv\("([A-Z0-9_]+)"\)`)
	out := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		for _, m := range re.FindAllStringSubmatch(string(readFile(t, strings.TrimPrefix(f, root+"/"))), -1) {
			out[m[1]] = true
		}
	}
	if !out["NATS_URL"] || !out["NATS_USER"] || !out["NATS_PASSWORD"] {
		t.Fatalf("cmd/leviathan reads %v: NATS_URL, NATS_USER and NATS_PASSWORD expected", out)
	}
	return out
}

// TestEnvironmentIsReadByTheBinary catches misspelt variables: every
// variable given to a Leviathan container (with the nats-tls component
// too) is one the binary reads, one of the Go runtime, HOME (git), or one
// the container's own command uses.
func TestEnvironmentIsReadByTheBinary(t *testing.T) {
	read := binaryEnv(t)
	runtimeVars := map[string]bool{"GOMEMLIMIT": true, "GOMAXPROCS": true, "GOTRACEBACK": true, "HOME": true}
	// What each service cannot start without (internal/stack validate).
	required := map[string][]string{
		"clone": {"NATS_URL", "NATS_USER", "NATS_PASSWORD"}, "backlog-edit": {"NATS_URL", "NATS_USER", "NATS_PASSWORD"},
		"push": {"NATS_URL", "NATS_USER", "NATS_PASSWORD"}, "pr": {"NATS_URL", "NATS_USER", "NATS_PASSWORD", "LEVIATHAN_FORGE_TOKEN"},
		"projector":  {"NATS_URL", "NATS_USER", "NATS_PASSWORD", "LEVIATHAN_CONTROL_PLANE_TOKEN"},
		"localforge": {"LEVIATHAN_FORGE_TOKEN"},
	}
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		t.Run(filepath.Base(o), func(t *testing.T) {
			r := render(t, o)
			artifact := skaffoldArtifact(t)
			for _, w := range r.workloads() {
				for _, c := range allContainers(w.spec) {
					if c.Image != artifact {
						continue
					}
					names := map[string]bool{}
					for _, e := range c.Env {
						names[e.Name] = true
					}
					for _, f := range c.EnvFrom {
						if f.ConfigMapRef != nil {
							if cm := r.configMap(f.ConfigMapRef.Name); cm != nil {
								for k := range cm.Data {
									names[k] = true
								}
							}
						}
					}
					command := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
					script := ""
					if len(c.Command) > 1 && strings.HasSuffix(c.Command[1], ".sh") {
						script = string(readFile(t, "deploy/components/localforge/seed/"+filepath.Base(c.Command[1])))
					}
					for n := range names {
						if read[n] || runtimeVars[n] || strings.Contains(command, "$("+n+")") || strings.Contains(script, "$"+n) || strings.Contains(script, "${"+n) {
							continue
						}
						t.Errorf("%s container %s: %s is read by nothing in the container", w, c.Name, n)
					}
					for _, n := range required[leviathanService(c)] {
						if !names[n] {
							t.Errorf("%s container %s: %s is required", w, c.Name, n)
						}
					}
				}
			}
		})
	}
}

// TestNATS checks the NATS StatefulSet against its configuration: the
// headless Service of the routes, the cluster routes (one per server), the
// probes, the JetStream volume.
func TestNATS(t *testing.T) {
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			r := render(t, o)
			var sts *appsv1.StatefulSet
			for _, obj := range r.objects {
				if s, ok := obj.(*appsv1.StatefulSet); ok && s.Name == "nats" {
					sts = s
				}
			}
			if sts == nil {
				t.Fatal("no nats StatefulSet")
			}
			headless := r.service(sts.Spec.ServiceName)
			if headless == nil || headless.Spec.ClusterIP != corev1.ClusterIPNone || !headless.Spec.PublishNotReadyAddresses ||
				!selects(headless.Spec.Selector, sts.Spec.Template.Labels) {
				t.Errorf("serviceName %q must be a headless Service of the NATS pods that publishes unready addresses", sts.Spec.ServiceName)
			}
			c := sts.Spec.Template.Spec.Containers[0]
			if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz?js-enabled-only=true" {
				t.Errorf("liveness probe must be /healthz?js-enabled-only=true: %+v", c.LivenessProbe)
			}
			if c.ReadinessProbe == nil || !strings.HasPrefix(c.ReadinessProbe.HTTPGet.Path, "/healthz") {
				t.Errorf("readiness probe must be on /healthz: %+v", c.ReadinessProbe)
			}
			cfg := r.configMapWithPrefix("nats-config")
			if cfg == nil {
				t.Fatal("no nats-config ConfigMap")
			}
			conf := cfg.Data["nats.conf"]
			storeDir := regexp.MustCompile(`(?m)^\s*store_dir:\s*(\S+)`).FindStringSubmatch(conf)
			var mounted bool
			for _, m := range c.VolumeMounts {
				mounted = mounted || (storeDir != nil && m.MountPath == storeDir[1] && len(sts.Spec.VolumeClaimTemplates) > 0 && m.Name == sts.Spec.VolumeClaimTemplates[0].Name)
			}
			if !mounted {
				t.Errorf("JetStream store_dir %v is not the StatefulSet's volume claim", storeDir)
			}
			// JetStream must refuse writes before the volume is full.
			if m := regexp.MustCompile(`(?m)^\s*max_file_store:\s*(\d+)GB\s*$`).FindStringSubmatch(conf); m == nil {
				t.Errorf("nats.conf sets no max_file_store in GB")
			} else if len(sts.Spec.VolumeClaimTemplates) > 0 {
				limit, _ := strconv.ParseInt(m[1], 10, 64)
				volume := sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().Value()
				if limit*1e9 >= volume {
					t.Errorf("max_file_store %sGB does not fit the %d-byte volume", m[1], volume)
				}
			}
			// Route URLs carry the route password, so cluster.conf names
			// them by variable and the container's env builds them.
			clusterConf := cfg.Data["cluster.conf"]
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					clusterConf = strings.ReplaceAll(clusterConf, "$"+e.Name+"\n", e.Value+"\n")
				}
			}
			routes := regexp.MustCompile(`nats://(?:route:\$\(NATS_ROUTE_PASSWORD\)@)?([a-z0-9-]+)\.([a-z0-9-]+):(\d+)`).FindAllStringSubmatch(clusterConf, -1)
			if sts.Spec.Replicas != nil && *sts.Spec.Replicas == 1 {
				if len(routes) != 0 {
					t.Errorf("a single server has routes: %v", routes)
				}
				return
			}
			if int32(len(routes)) != *sts.Spec.Replicas {
				t.Fatalf("%d routes for %d servers", len(routes), *sts.Spec.Replicas)
			}
			if !regexp.MustCompile(`(?s)authorization\s*\{\s*user:\s*route\s+password:\s*\$NATS_ROUTE_PASSWORD`).MatchString(clusterConf) {
				t.Error("cluster routes are not authenticated")
			}
			for _, m := range routes {
				if !strings.Contains(m[0], "route:$(NATS_ROUTE_PASSWORD)@") {
					t.Errorf("route %s dials without the route user", m[0])
				}
			}
			cluster, _ := containerPort(&sts.Spec.Template.Spec, intstr.FromString("cluster"))
			for i, m := range routes {
				if m[1] != fmt.Sprintf("%s-%d", sts.Name, i) || m[2] != sts.Spec.ServiceName || m[3] != strconv.Itoa(int(cluster.ContainerPort)) {
					t.Errorf("route %s: want %s-%d.%s:%d", m[0], sts.Name, i, sts.Spec.ServiceName, cluster.ContainerPort)
				}
			}
		})
	}
}

// TestProofJob checks the Job of the dev overlay: `leviathan submit --wait`,
// never restarted in place, with a deadline.
func TestProofJob(t *testing.T) {
	r := render(t, "dev")
	var job *batchv1.Job
	for _, obj := range r.objects {
		if j, ok := obj.(*batchv1.Job); ok && j.Name == "leviathan-proof" {
			job = j
		}
	}
	if job == nil {
		t.Fatal("the dev overlay has no proof Job")
	}
	spec := job.Spec.Template.Spec
	if spec.RestartPolicy != corev1.RestartPolicyNever || len(spec.Containers) != 1 {
		t.Fatalf("restartPolicy %q with %d containers, want Never and one", spec.RestartPolicy, len(spec.Containers))
	}
	args := spec.Containers[0].Args
	if len(args) == 0 || args[0] != "submit" || !slices.Contains(args, "--wait") {
		t.Errorf("args %v: want `submit --wait ...`", args)
	}
	if job.Spec.ActiveDeadlineSeconds == nil || job.Spec.BackoffLimit == nil {
		t.Error("the Job needs a deadline and a backoff limit")
	}
	for _, p := range render(t, "prod").objects {
		if j, ok := p.(*batchv1.Job); ok && j.Name == "leviathan-proof" {
			t.Error("the prod overlay runs the proof Job: it would open a pull request on every deploy")
		}
	}
}
