package deploy

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/leviathan-dev/leviathan/internal/natsperm"
)

// natsUserSecret is the Secret of a NATS user's password (key password).
func natsUserSecret(user string) string { return "nats-user-" + user }

// natsRouteSecret is the Secret of the cluster routes' password (key
// password).
const natsRouteSecret = "nats-route"

// isNATSSecret says whether a Secret holds a NATS password (nats-users is
// the one Secret of every password there was before: no pod may use it).
func isNATSSecret(name string) bool {
	return strings.HasPrefix(name, "nats-user") || name == natsRouteSecret
}

// natsClientUser is the NATS user a workload's containers connect as
// (NATS_USER), or "" for a workload that does not use NATS.
func natsClientUser(w workload) string {
	for _, c := range allContainers(w.spec) {
		for _, e := range c.Env {
			if e.Name == "NATS_USER" {
				return e.Value
			}
		}
	}
	return ""
}

// TestEachPodHasItsOwnNATSSecret: every NATS user's password is in a
// Secret of its own (nats-user-<user>, key password; the routes' in
// nats-route), so RBAC can grant each workload only its own. A pod that
// connects to NATS refers to exactly one of them, its user's, and takes
// NATS_PASSWORD from it; each service is its own user, the set-up Job the
// setup user, the proof Job the client user. The NATS pods refer to every
// user's Secret (they verify the passwords), each as the variable
// users.conf reads, and to nats-route when clustered. No other pod refers
// to any. The dev overlay defines one Secret per user with only its
// password; SECRETS.md documents one per user and nats-route.
func TestEachPodHasItsOwnNATSSecret(t *testing.T) {
	users := natsperm.Users()
	want := map[string]string{"Job/leviathan-setup": natsperm.SetupUser, "Job/leviathan-proof": natsperm.ClientUser}
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		name := filepath.Base(o)
		t.Run(name, func(t *testing.T) {
			r := render(t, o)
			seen := map[string]bool{}
			for _, w := range r.workloads() {
				var natsRefs []string
				for _, rf := range podRefs(w.spec) {
					if rf.secret && isNATSSecret(rf.name) {
						natsRefs = append(natsRefs, rf.name+"/"+rf.key)
					}
				}
				if w.kind == "StatefulSet" && w.name == "nats" {
					wantEnv := map[string]string{}
					for _, u := range users {
						wantEnv[natsperm.PasswordVar(u)] = natsUserSecret(u) + "/password"
					}
					if w.replicas > 1 {
						wantEnv["NATS_ROUTE_PASSWORD"] = natsRouteSecret + "/password"
					}
					got := map[string]string{}
					for _, e := range w.spec.Containers[0].Env {
						if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && isNATSSecret(e.ValueFrom.SecretKeyRef.Name) {
							got[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
						}
					}
					if fmt.Sprint(got) != fmt.Sprint(wantEnv) {
						t.Errorf("%s: password variables %v, want %v", w, got, wantEnv)
					}
					if len(natsRefs) != len(wantEnv) {
						t.Errorf("%s refers to the NATS Secrets %v, want the %d of its variables", w, natsRefs, len(wantEnv))
					}
					continue
				}
				user := natsClientUser(w)
				if user == "" {
					if len(natsRefs) > 0 {
						t.Errorf("%s does not connect to NATS but refers to %v", w, natsRefs)
					}
					continue
				}
				expected, ok := want[w.String()]
				if w.kind == "Deployment" {
					expected, ok = leviathanService(w.spec.Containers[0]), true
				}
				if !ok || user != expected {
					t.Errorf("%s connects as NATS user %q, want %q", w, user, expected)
				}
				if !slices.Contains(users, user) {
					t.Errorf("%s: NATS user %q is not in users.conf (internal/natsperm)", w, user)
				}
				seen[user] = true
				if own := natsUserSecret(user) + "/password"; len(natsRefs) != 1 || natsRefs[0] != own {
					t.Errorf("%s refers to the NATS Secrets %v, want only its own, %s", w, natsRefs, own)
				}
				var from *corev1.SecretKeySelector
				for _, c := range allContainers(w.spec) {
					for _, e := range c.Env {
						if e.Name == "NATS_PASSWORD" && e.ValueFrom != nil {
							from = e.ValueFrom.SecretKeyRef
						}
					}
				}
				if from == nil || from.Name != natsUserSecret(user) || from.Key != "password" {
					t.Errorf("%s: NATS_PASSWORD is not from %s/password: %+v", w, natsUserSecret(user), from)
				}
			}
			// Every service and the set-up Job connect as their users
			// (the proof Job is dev's only; in prod, client is for users).
			for _, u := range users {
				if !seen[u] && u != natsperm.ClientUser {
					t.Errorf("no pod connects as NATS user %s", u)
				}
			}
			if !strings.HasPrefix(name, "dev") {
				return
			}
			if !seen[natsperm.ClientUser] {
				t.Error("the proof Job does not connect as the client user")
			}
			var generated []string
			for _, obj := range r.objects {
				if s, ok := obj.(*corev1.Secret); ok && isNATSSecret(s.Name) {
					generated = append(generated, s.Name)
					if len(s.Data) != 1 || len(s.Data["password"]) == 0 {
						t.Errorf("Secret %s: keys %v, want only a password", s.Name, keysOf(s.Data))
					}
				}
			}
			var wantSecrets []string
			for _, u := range users {
				wantSecrets = append(wantSecrets, natsUserSecret(u))
			}
			sort.Strings(generated)
			sort.Strings(wantSecrets)
			if fmt.Sprint(generated) != fmt.Sprint(wantSecrets) {
				t.Errorf("the dev overlay defines the NATS Secrets %v, want %v", generated, wantSecrets)
			}
		})
	}
	documented := documentedSecrets(t)
	names := []string{natsRouteSecret}
	for _, u := range users {
		names = append(names, natsUserSecret(u))
	}
	for _, name := range names {
		if fmt.Sprint(documented[name]) != "[password]" {
			t.Errorf("SECRETS.md documents the keys %v of %s, want [password]", documented[name], name)
		}
	}
	for name := range documented {
		if isNATSSecret(name) && !strings.HasPrefix(name, "nats-user-") && name != natsRouteSecret {
			t.Errorf("SECRETS.md documents %s: the NATS passwords are one Secret per user", name)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
