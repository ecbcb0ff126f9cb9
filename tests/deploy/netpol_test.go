package deploy

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// TestNetworkPolicies: the namespace denies by default; every port a
// policy opens is a port of a pod it selects (or, for egress, of a pod it
// sends to, or the forge's 443); every pod a policy names exists; and the
// NATS monitoring port is on no Service.
func TestNetworkPolicies(t *testing.T) {
	for _, overlay := range []string{"dev", "prod"} {
		t.Run(overlay, func(t *testing.T) {
			r := render(t, overlay)
			var pols []*networkingv1.NetworkPolicy
			for _, obj := range r.objects {
				if p, ok := obj.(*networkingv1.NetworkPolicy); ok {
					pols = append(pols, p)
				}
			}
			pods := map[string]workload{}
			for _, w := range r.workloads() {
				pods[w.name] = w
			}
			selected := func(sel metav1.LabelSelector) []string {
				s, err := metav1.LabelSelectorAsSelector(&sel)
				if err != nil {
					t.Fatal(err)
				}
				var out []string
				for name, w := range pods {
					if s.Matches(labels.Set(w.labels)) {
						out = append(out, name)
					}
				}
				return out
			}
			hasPort := func(names []string, port int32) bool {
				for _, n := range names {
					for _, c := range pods[n].spec.Containers {
						for _, p := range c.Ports {
							if p.ContainerPort == port {
								return true
							}
						}
					}
				}
				return false
			}
			var deny bool
			for _, p := range pols {
				sel := selected(p.Spec.PodSelector)
				if len(sel) == 0 {
					t.Errorf("NetworkPolicy %s selects no pod", p.Name)
				}
				if len(p.Spec.PodSelector.MatchLabels) == 0 && len(p.Spec.PodSelector.MatchExpressions) == 0 &&
					len(p.Spec.Ingress) == 0 && len(p.Spec.Egress) == 0 && len(p.Spec.PolicyTypes) == 2 {
					deny = true
				}
				for _, in := range p.Spec.Ingress {
					for _, port := range in.Ports {
						if !hasPort(sel, port.Port.IntVal) {
							t.Errorf("NetworkPolicy %s opens ingress port %d, which no pod it selects listens on", p.Name, port.Port.IntVal)
						}
					}
				}
				for _, out := range p.Spec.Egress {
					var to []string
					for _, peer := range out.To {
						if peer.PodSelector != nil && peer.NamespaceSelector == nil {
							to = append(to, selected(*peer.PodSelector)...)
							if len(selected(*peer.PodSelector)) == 0 {
								t.Errorf("NetworkPolicy %s sends to pods that do not exist", p.Name)
							}
						}
					}
					for _, port := range out.Ports {
						if len(to) > 0 && !hasPort(to, port.Port.IntVal) {
							t.Errorf("NetworkPolicy %s opens egress port %d, on which none of its peers listens", p.Name, port.Port.IntVal)
						}
					}
				}
			}
			if !deny {
				t.Error("no default-deny NetworkPolicy")
			}
			for _, s := range r.services() {
				for _, p := range s.Spec.Ports {
					if s.Spec.Selector["app.kubernetes.io/name"] == "nats" && p.Port == 8222 {
						t.Errorf("Service %s exposes the NATS monitoring port", s.Name)
					}
				}
			}
		})
	}
}
