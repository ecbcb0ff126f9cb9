package deploy

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kind/pkg/apis/config/defaults"
	kindv1alpha4 "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

// kindVersion is the version of sigs.k8s.io/kind in tests/go.mod: its Go
// types decode the config here, its default node image is the one the
// config must pin, and the Makefile installs that release.
func kindVersion(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*sigs\.k8s\.io/kind\s+(v\S+)`).FindStringSubmatch(string(readFile(t, "tests/go.mod")))
	if m == nil {
		t.Fatal("sigs.k8s.io/kind is not in tests/go.mod")
	}
	return m[1]
}

// TestKindCluster decodes deploy/kind/cluster.yaml strictly into kind's
// v1alpha4 types and checks the node image and the port mappings.
func TestKindCluster(t *testing.T) {
	var cluster kindv1alpha4.Cluster
	if err := yaml.UnmarshalStrict(readFile(t, "deploy/kind/cluster.yaml"), &cluster); err != nil {
		t.Fatalf("deploy/kind/cluster.yaml: %v", err)
	}
	if cluster.Kind != "Cluster" || cluster.APIVersion != "kind.x-k8s.io/v1alpha4" {
		t.Fatalf("kind %q apiVersion %q", cluster.Kind, cluster.APIVersion)
	}
	if cluster.Name == "" || len(cluster.Nodes) == 0 {
		t.Fatal("the cluster needs a name and nodes")
	}
	// The strict decoder must catch a misspelt field, or the check above
	// proves nothing.
	if err := yaml.UnmarshalStrict([]byte("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n  extraPortMapping: []\n"), &kindv1alpha4.Cluster{}); err == nil {
		t.Fatal("strict decoding accepted an unknown field")
	}

	// Pinned by digest, to the image of the kind release the Makefile installs.
	version := kindVersion(t)
	if !strings.Contains(string(readFile(t, "Makefile")), "sigs.k8s.io/kind@"+version) {
		t.Errorf("the Makefile does not install kind %s (the version of tests/go.mod)", version)
	}
	digest := regexp.MustCompile(`^kindest/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$`)
	r := render(t, "dev")
	nodePorts := map[int32]string{}
	for _, s := range r.services() {
		if s.Spec.Type == corev1.ServiceTypeNodePort {
			for _, p := range s.Spec.Ports {
				nodePorts[p.NodePort] = s.Name
			}
		}
	}
	hostPorts := map[int32]bool{}
	mapped := map[int32]bool{}
	for i, n := range cluster.Nodes {
		if !digest.MatchString(n.Image) {
			t.Errorf("node %d: image %q is not pinned by digest", i, n.Image)
		}
		if n.Image != defaults.Image {
			t.Errorf("node %d: image %s, want kind %s's %s", i, n.Image, version, defaults.Image)
		}
		for _, m := range n.ExtraPortMappings {
			if m.ListenAddress != "127.0.0.1" {
				t.Errorf("port %d listens on %q: bind it to 127.0.0.1, not every interface", m.HostPort, m.ListenAddress)
			}
			if hostPorts[m.HostPort] {
				t.Errorf("host port %d mapped twice", m.HostPort)
			}
			hostPorts[m.HostPort] = true
			mapped[m.ContainerPort] = true
			if _, ok := nodePorts[m.ContainerPort]; !ok {
				t.Errorf("port mapping to node port %d: no NodePort Service of the dev overlay has it", m.ContainerPort)
			}
		}
	}
	for p, svc := range nodePorts {
		if !mapped[p] {
			t.Errorf("node port %d of Service %s is not mapped to the host", p, svc)
		}
	}
	if len(nodePorts) == 0 {
		t.Error("the dev overlay has no NodePort Service to map")
	}

	// skaffold's dev profile turns itself on for this cluster's context.
	var activated bool
	for _, p := range parseSkaffold(t, skaffoldJSON(t)).Profiles {
		if p.Name != "dev" {
			continue
		}
		for _, a := range p.Activation {
			var act struct {
				KubeContext string `json:"kubeContext"`
			}
			activated = activated || (json.Unmarshal(a, &act) == nil && act.KubeContext == "kind-"+cluster.Name)
		}
	}
	if !activated {
		t.Errorf("skaffold's dev profile is not activated by the kube context kind-%s", cluster.Name)
	}
}
