package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// root is the repository root, relative to this package.
const root = "../.."

// overlays are the deployable kustomizations.
var overlays = []string{"dev", "prod"}

// scheme knows every API type the manifests may use; anything else is an
// error (a typo in apiVersion or kind).
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// strictDecoder fails on unknown fields and duplicate fields, like
// `kubectl apply --validate=strict` does on the server.
var strictDecoder = serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()

// decodeStrict turns one YAML document into its typed API object.
func decodeStrict(doc []byte) (runtime.Object, error) {
	// Duplicate keys are caught here: JSON decoding would keep the last.
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	obj, gvk, err := strictDecoder.Decode(js, nil, nil)
	if err != nil {
		return nil, err
	}
	if gvk.Version == "" || gvk.Kind == "" {
		return nil, fmt.Errorf("no apiVersion or kind")
	}
	return obj, nil
}

// splitYAML splits a multi-document YAML stream, dropping empty documents.
func splitYAML(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// rendered is one overlay as `kubectl kustomize` prints it, decoded.
type rendered struct {
	overlay string
	raw     []byte
	objects []runtime.Object
}

var (
	renderMu    sync.Mutex
	renderCache = map[string]*rendered{}
)

// kustomize runs `kubectl kustomize dir` (the kustomize that users have).
func kustomize(t *testing.T, dir string) []byte {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is needed to render the manifests (CI installs it): %v", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return out
}

// render renders and strictly decodes an overlay, once per test binary.
func render(t *testing.T, overlay string) *rendered {
	t.Helper()
	renderMu.Lock()
	defer renderMu.Unlock()
	if r, ok := renderCache[overlay]; ok {
		return r
	}
	dir := filepath.Join(root, "deploy", "overlays", overlay)
	if strings.Contains(overlay, "/") { // a test overlay, by its path from the repository root
		dir = filepath.Join(root, overlay)
	}
	raw := kustomize(t, dir)
	docs, err := splitYAML(raw)
	if err != nil {
		t.Fatalf("%s: split: %v", overlay, err)
	}
	r := &rendered{overlay: filepath.Base(overlay), raw: raw} // a name for networks and containers
	for i, doc := range docs {
		obj, err := decodeStrict(doc)
		if err != nil {
			t.Fatalf("%s: object %d does not decode strictly: %v\n%s", overlay, i, err, doc)
		}
		r.objects = append(r.objects, obj)
	}
	renderCache[overlay] = r
	return r
}

// workload is anything that runs pods.
type workload struct {
	kind, name string
	selector   *metav1.LabelSelector // nil for a Job (its selector is generated)
	labels     map[string]string     // of the pod template
	replicas   int32
	spec       *corev1.PodSpec
	// claims are the StatefulSet's volumeClaimTemplates by name.
	claims      map[string]bool
	serviceName string // StatefulSet
}

func (w workload) String() string { return w.kind + "/" + w.name }

func replicas(p *int32) int32 {
	if p == nil {
		return 1
	}
	return *p
}

func (r *rendered) workloads() []workload {
	var ws []workload
	for _, o := range r.objects {
		switch o := o.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{kind: "Deployment", name: o.Name, selector: o.Spec.Selector,
				labels: o.Spec.Template.Labels, replicas: replicas(o.Spec.Replicas), spec: &o.Spec.Template.Spec})
		case *appsv1.StatefulSet:
			claims := map[string]bool{}
			for _, c := range o.Spec.VolumeClaimTemplates {
				claims[c.Name] = true
			}
			ws = append(ws, workload{kind: "StatefulSet", name: o.Name, selector: o.Spec.Selector,
				labels: o.Spec.Template.Labels, replicas: replicas(o.Spec.Replicas), spec: &o.Spec.Template.Spec,
				claims: claims, serviceName: o.Spec.ServiceName})
		case *batchv1.Job:
			ws = append(ws, workload{kind: "Job", name: o.Name, labels: o.Spec.Template.Labels, replicas: 1,
				spec: &o.Spec.Template.Spec})
		}
	}
	return ws
}

// labelSelects is selects for a LabelSelector (matchLabels and
// matchExpressions).
func labelSelects(t *testing.T, sel *metav1.LabelSelector, podLabels map[string]string) bool {
	t.Helper()
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("bad selector %v: %v", sel, err)
		return false
	}
	return s.Matches(labels.Set(podLabels))
}

func (r *rendered) services() []*corev1.Service {
	var out []*corev1.Service
	for _, o := range r.objects {
		if s, ok := o.(*corev1.Service); ok {
			out = append(out, s)
		}
	}
	return out
}

func (r *rendered) service(name string) *corev1.Service {
	for _, s := range r.services() {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (r *rendered) secret(name string) *corev1.Secret {
	for _, o := range r.objects {
		if s, ok := o.(*corev1.Secret); ok && s.Name == name {
			return s
		}
	}
	return nil
}

func (r *rendered) configMap(name string) *corev1.ConfigMap {
	for _, o := range r.objects {
		if c, ok := o.(*corev1.ConfigMap); ok && c.Name == name {
			return c
		}
	}
	return nil
}

// configMapWithPrefix finds a generated ConfigMap (name plus hash suffix).
func (r *rendered) configMapWithPrefix(prefix string) *corev1.ConfigMap {
	for _, o := range r.objects {
		if c, ok := o.(*corev1.ConfigMap); ok && (c.Name == prefix || strings.HasPrefix(c.Name, prefix+"-")) {
			return c
		}
	}
	return nil
}

func (r *rendered) workload(kind, name string) (workload, bool) {
	for _, w := range r.workloads() {
		if w.kind == kind && w.name == name {
			return w, true
		}
	}
	return workload{}, false
}

// allContainers returns the init containers and containers of a pod.
func allContainers(spec *corev1.PodSpec) []corev1.Container {
	return append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
}

func readFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
