package deploy

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	corev1 "k8s.io/api/core/v1"

	"github.com/leviathan-dev/leviathan/tests/internal/podrun"
)

// tlsOverlays are the overlays with the nats-tls component, added the way
// SECRETS.md tells operators to (testdata): dev's one NATS server and
// prod's three-node cluster.
var tlsOverlays = []string{"tests/deploy/testdata/dev-tls", "tests/deploy/testdata/prod-tls"}

// natsServerNames are the names SECRETS.md tells operators to put in the
// NATS servers' certificate. The pods dial the first (NATS_URL).
var natsServerNames = []string{"nats", "nats.leviathan", "nats.leviathan.svc", "nats.leviathan.svc.cluster.local", "localhost"}

var (
	tlsBlockStart = regexp.MustCompile(`(?m)^\s*tls\s*\{`)
	tlsFile       = regexp.MustCompile(`(?m)^\s*(cert_file|key_file|ca_file):\s*"?([^"\s]+)"?\s*$`)
	includeTLS    = regexp.MustCompile(`(?m)^include \./tls\.conf\s*$`)
)

// tlsBlock returns the files of the tls block of a NATS configuration
// (cert_file, key_file, ca_file → path), or nil when it has none.
func tlsBlock(conf string) map[string]string {
	conf = string(stripComments([]byte(conf)))
	if !tlsBlockStart.MatchString(conf) {
		return nil
	}
	out := map[string]string{}
	for _, m := range tlsFile.FindAllStringSubmatch(conf, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// secretFile finds what a container sees at file: the Secret volume
// mounted on a directory above it, the key projected there and its mode.
func secretFile(spec *corev1.PodSpec, c corev1.Container, file string) (secret, key string, mode int32, ok bool) {
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, file)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			continue
		}
		v, found := volumes[m.Name]
		if !found || v.Secret == nil {
			return "", "", 0, false
		}
		mode = 0o644
		if v.Secret.DefaultMode != nil {
			mode = *v.Secret.DefaultMode
		}
		if len(v.Secret.Items) == 0 {
			return v.Secret.SecretName, rel, mode, true
		}
		for _, it := range v.Secret.Items {
			if it.Path == rel {
				if it.Mode != nil {
					mode = *it.Mode
				}
				return v.Secret.SecretName, it.Key, mode, true
			}
		}
		return "", "", 0, false
	}
	return "", "", 0, false
}

// readableIn says whether the containers of a pod can read a file of a
// Secret volume with mode: the files are root's, of the pod's fsGroup when
// it has one.
func readableIn(spec *corev1.PodSpec, mode int32) bool {
	fsGroup := spec.SecurityContext != nil && spec.SecurityContext.FSGroup != nil
	return mode&0o004 != 0 || (fsGroup && mode&0o040 != 0)
}

// natsClientContainer is the container of a workload that connects to
// NATS (the one with NATS_USER).
func natsClientContainer(w workload) (corev1.Container, bool) {
	for _, c := range allContainers(w.spec) {
		for _, e := range c.Env {
			if e.Name == "NATS_USER" {
				return c, true
			}
		}
	}
	return corev1.Container{}, false
}

func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom == nil {
			return e.Value, true
		}
	}
	return "", false
}

// TestNATSTLSComponent checks the rendered overlays with and without the
// nats-tls component. Without it (dev, prod) the base's tls.conf has no
// tls block and no pod refers to the TLS Secrets or sets NATS_CA_FILE. With
// it (dev-tls, prod-tls), on dev's single server and prod's cluster alike:
// nats.conf includes a tls.conf whose tls block names the certificate, key
// and CA that the NATS container sees from the Secret nats-tls (keys
// tls.crt, tls.key, ca.crt), readable by the server and the key by no
// other user; every pod that connects to NATS (the services, the set-up
// Job, dev's proof Job) sets NATS_CA_FILE to the ca.crt of the Secret
// nats-ca that it mounts, readable by its user; and no pod but NATS refers
// to nats-tls, which holds the server's key.
func TestNATSTLSComponent(t *testing.T) {
	want := map[string]string{"cert_file": "tls.crt", "key_file": "tls.key", "ca_file": "ca.crt"}
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		name := filepath.Base(o)
		withTLS := slices.Contains(tlsOverlays, o)
		t.Run(name, func(t *testing.T) {
			r := render(t, o)
			cfg := r.configMapWithPrefix("nats-config")
			if cfg == nil {
				t.Fatal("no nats-config ConfigMap")
			}
			if !includeTLS.MatchString(cfg.Data["nats.conf"]) {
				t.Error("nats.conf does not include ./tls.conf")
			}
			conf, ok := cfg.Data["tls.conf"]
			if !ok {
				t.Fatal("nats-config has no tls.conf")
			}
			files := tlsBlock(conf)
			if !withTLS {
				if files != nil {
					t.Errorf("TLS is on without the nats-tls component: %v", files)
				}
				for _, w := range r.workloads() {
					for _, rf := range podRefs(w.spec) {
						if rf.secret && (rf.name == "nats-tls" || rf.name == "nats-ca") {
							t.Errorf("%s refers to Secret %s without the nats-tls component", w, rf.name)
						}
					}
					if c, ok := natsClientContainer(w); ok {
						if v, set := envValue(c, "NATS_CA_FILE"); set {
							t.Errorf("%s sets NATS_CA_FILE=%s without the nats-tls component", w, v)
						}
					}
				}
				return
			}
			nats, ok := r.workload("StatefulSet", "nats")
			if !ok {
				t.Fatal("no NATS StatefulSet")
			}
			natsC := nats.spec.Containers[0]
			for field, key := range want {
				file, ok := files[field]
				if !ok {
					t.Errorf("the tls block has no %s: %v", field, files)
					continue
				}
				secret, k, mode, found := secretFile(nats.spec, natsC, file)
				if !found {
					t.Errorf("%s %s: no item of a Secret volume is mounted there in the NATS container, want nats-tls/%s", field, file, key)
					continue
				}
				if secret != "nats-tls" || k != key {
					t.Errorf("%s %s: the NATS container sees %s/%s there, want nats-tls/%s", field, file, secret, k, key)
					continue
				}
				if !readableIn(nats.spec, mode) {
					t.Errorf("%s %s: mode %o, which the server cannot read", field, file, mode)
				}
				if field == "key_file" && mode&0o007 != 0 {
					t.Errorf("the server's key %s has mode %o: readable by others", file, mode)
				}
			}
			clients := 0
			for _, w := range r.workloads() {
				if w.String() == nats.String() {
					continue
				}
				for _, rf := range podRefs(w.spec) {
					if rf.secret && rf.name == "nats-tls" {
						t.Errorf("%s refers to nats-tls, the Secret of the server's key", w)
					}
				}
				c, ok := natsClientContainer(w)
				if !ok {
					for _, rf := range podRefs(w.spec) {
						if rf.secret && rf.name == "nats-ca" {
							t.Errorf("%s mounts nats-ca but does not connect to NATS", w)
						}
					}
					continue
				}
				clients++
				ca, set := envValue(c, "NATS_CA_FILE")
				if !set {
					t.Errorf("%s container %s: no NATS_CA_FILE", w, c.Name)
					continue
				}
				secret, k, mode, found := secretFile(w.spec, c, ca)
				switch {
				case !found:
					t.Errorf("%s: NATS_CA_FILE=%s is no item of a mounted Secret volume, want nats-ca/ca.crt", w, ca)
				case secret != "nats-ca" || k != "ca.crt":
					t.Errorf("%s: NATS_CA_FILE=%s is %s/%s, want nats-ca/ca.crt", w, ca, secret, k)
				case !readableIn(w.spec, mode):
					t.Errorf("%s: NATS_CA_FILE=%s has mode %o, which its user cannot read", w, ca, mode)
				}
			}
			// The five services and the set-up Job; dev's proof Job too.
			wantClients := len(leviathanServices) + 1
			if name == "dev-tls" {
				wantClients++
			}
			if clients != wantClients {
				t.Errorf("%d pods connect to NATS, want %d", clients, wantClients)
			}
		})
	}
}

// testPKI is a throwaway CA and a server certificate it signed, in PEM.
type testPKI struct{ ca, cert, key string }

func newTestPKI(t *testing.T, names []string) testPKI {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "leviathan-test-nats-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(typ string, b []byte) string { return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})) }
	return testPKI{ca: enc("CERTIFICATE", caDER), cert: enc("CERTIFICATE", der), key: enc("PRIVATE KEY", keyDER)}
}

// mountLocally lays out a container's volumes in temporary directories as
// a kubelet mounts them (ConfigMaps and Secret items as files, anything
// else empty) and returns the map from the container's paths to them. The
// ConfigMaps' files are rewritten with it, so the paths a configuration
// names lead to the same files here.
func mountLocally(t *testing.T, k *podrun.Kubelet, spec *corev1.PodSpec, c corev1.Container) *strings.Replacer {
	t.Helper()
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := append([]corev1.VolumeMount{}, c.VolumeMounts...)
	// Longest first: /etc/nats-tls before /etc/nats.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPath) > len(mounts[j].MountPath) })
	var pairs []string
	configs := map[string]map[string]string{}
	for _, m := range mounts {
		dir := t.TempDir()
		pairs = append(pairs, m.MountPath, dir)
		v, ok := volumes[m.Name]
		switch {
		case ok && v.ConfigMap != nil:
			cm := k.Objects.ConfigMap(v.ConfigMap.Name)
			if cm == nil {
				t.Fatalf("volume %s: no ConfigMap %s", m.Name, v.ConfigMap.Name)
			}
			configs[dir] = cm.Data
		case ok && v.Secret != nil:
			if len(v.Secret.Items) == 0 {
				t.Fatalf("volume %s: Secret %s without items (not needed so far)", m.Name, v.Secret.SecretName)
			}
			for _, it := range v.Secret.Items {
				val, found := k.SecretValue(v.Secret.SecretName, it.Key)
				if !found {
					t.Fatalf("volume %s: Secret %s has no key %s", m.Name, v.Secret.SecretName, it.Key)
				}
				if err := os.WriteFile(filepath.Join(dir, it.Path), []byte(val), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	paths := strings.NewReplacer(pairs...)
	for dir, files := range configs {
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(paths.Replace(data)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return paths
}

// natsServerOptions reads the configuration of the first pod of the NATS
// StatefulSet with nats-server's own parser, as the pod's command would:
// its files where its volumes are mounted, its environment set.
func natsServerOptions(t *testing.T, k *podrun.Kubelet, w workload) *server.Options {
	t.Helper()
	c := w.spec.Containers[0]
	p := podrun.Pod{Name: w.name + "-0", Namespace: "leviathan", Owner: w.String(), Labels: w.labels, Spec: w.spec,
		Subdomain: w.serviceName, Claims: w.claims}
	env, err := k.Env(p, c)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range env {
		t.Setenv(name, v)
	}
	paths := mountLocally(t, k, w.spec, c)
	cmd := append(append([]string{}, c.Command...), c.Args...)
	i := slices.Index(cmd, "--config")
	if i < 0 || i+1 == len(cmd) {
		t.Fatalf("NATS command %v has no --config", cmd)
	}
	opts, err := server.ProcessConfigFile(paths.Replace(cmd[i+1]))
	if err != nil {
		t.Fatalf("nats-server does not accept the configuration: %v", err)
	}
	return opts
}

// serviceDialer stands in for the cluster's DNS: a Service's host:port to
// the address where it is served here.
type serviceDialer map[string]string

func (d serviceDialer) Dial(network, address string) (net.Conn, error) {
	to, ok := d[address]
	if !ok {
		return nil, fmt.Errorf("no Service %s here", address)
	}
	return net.DialTimeout(network, to, 5*time.Second)
}

// TestNATSServesTLSWithTheComponent runs the rendered NATS configuration
// in nats-server itself, with a throwaway CA and a server certificate for
// the names SECRETS.md lists as the Secrets nats-tls and nats-ca. The
// overlays without the component parse to no TLS; prod-tls parses to TLS
// on client connections with the cluster's routes as before. dev-tls's
// server is started: every pod that connects to NATS, with its rendered
// environment (NATS_URL, NATS_USER, NATS_PASSWORD, NATS_CA_FILE) and its
// mounted files, connects over TLS and verifies the server as nats, the
// host of NATS_URL; a plain-text client is refused, a client without the
// CA cannot verify the server, and a wrong password is still refused.
func TestNATSServesTLSWithTheComponent(t *testing.T) {
	doc := string(readFile(t, "deploy/overlays/prod/SECRETS.md"))
	for _, n := range natsServerNames {
		if !regexp.MustCompile(`DNS:` + regexp.QuoteMeta(n) + `[,'\s\\]`).MatchString(doc) {
			t.Errorf("SECRETS.md does not list DNS:%s for the server's certificate", n)
		}
	}
	pki := newTestPKI(t, natsServerNames)
	for _, o := range append(append([]string{}, overlays...), tlsOverlays...) {
		name := filepath.Base(o)
		t.Run(name, func(t *testing.T) {
			r := render(t, o)
			// The Secrets an operator creates (random values), the TLS
			// ones from the throwaway CA; dev defines its own.
			secrets := map[string]map[string]string{}
			for s, keys := range documentedSecrets(t) {
				secrets[s] = map[string]string{}
				for _, key := range keys {
					secrets[s][key] = key + "-" + randomHex(8)
				}
			}
			secrets["nats-tls"] = map[string]string{"ca.crt": pki.ca, "tls.crt": pki.cert, "tls.key": pki.key}
			secrets["nats-ca"] = map[string]string{"ca.crt": pki.ca}
			k := &podrun.Kubelet{Objects: r, Secrets: secrets}
			w, ok := r.workload("StatefulSet", "nats")
			if !ok {
				t.Fatal("no NATS StatefulSet")
			}
			opts := natsServerOptions(t, k, w)
			if !slices.Contains(tlsOverlays, o) {
				if opts.TLSConfig != nil {
					t.Error("TLS on client connections without the nats-tls component")
				}
				return
			}
			if opts.TLSConfig == nil || len(opts.TLSConfig.Certificates) != 1 {
				t.Fatal("no TLS on client connections with the nats-tls component")
			}
			if name == "prod-tls" {
				if len(opts.Routes) != 3 || opts.Cluster.Port != 6222 || opts.Cluster.Username != "route" || opts.Cluster.TLSConfig != nil {
					t.Errorf("the cluster changed with the nats-tls component: %d routes, port %d, user %q, TLS %v",
						len(opts.Routes), opts.Cluster.Port, opts.Cluster.Username, opts.Cluster.TLSConfig != nil)
				}
				return
			}

			// Served on loopback, without the monitoring port.
			opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
			opts.NoSigs, opts.NoLog = true, true
			s, err := server.NewServer(opts)
			if err != nil {
				t.Fatal(err)
			}
			go s.Start()
			t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
			if !s.ReadyForConnections(20 * time.Second) {
				t.Fatal("nats-server did not start")
			}
			addr := s.Addr().String()
			dns := serviceDialer{"nats:4222": addr}

			var setupEnv map[string]string
			var setupCA string
			clients := 0
			for _, w := range r.workloads() {
				c, ok := natsClientContainer(w)
				if !ok {
					continue
				}
				p := podrun.Pod{Name: w.name + "-0", Namespace: "leviathan", Owner: w.String(), Labels: w.labels, Spec: w.spec}
				env, err := k.Env(p, c)
				if err != nil {
					t.Fatal(err)
				}
				ca := mountLocally(t, k, w.spec, c).Replace(env["NATS_CA_FILE"])
				// The options cmd/leviathan builds from the same variables.
				nc, err := nats.Connect(env["NATS_URL"], nats.UserInfo(env["NATS_USER"], env["NATS_PASSWORD"]), nats.RootCAs(ca),
					nats.SetCustomDialer(dns), nats.Timeout(5*time.Second), nats.NoReconnect())
				if err != nil {
					t.Errorf("%s connects to %s as %s: %v", w, env["NATS_URL"], env["NATS_USER"], err)
					continue
				}
				state, err := nc.TLSConnectionState()
				if err != nil || !state.HandshakeComplete || len(state.VerifiedChains) == 0 {
					t.Errorf("%s: not a verified TLS connection: %v", w, err)
				}
				if err := nc.Flush(); err != nil {
					t.Errorf("%s: %v", w, err)
				}
				nc.Close()
				clients++
				if env["NATS_USER"] == "setup" {
					setupEnv, setupCA = env, ca
				}
			}
			if clients != len(leviathanServices)+2 || setupEnv == nil {
				t.Fatalf("%d pods connected, want the %d services and the two Jobs", clients, len(leviathanServices))
			}

			// Plain text: the server asks for TLS and answers nothing
			// before it.
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(conn)
			line, err := br.ReadString('\n')
			var info struct {
				TLSRequired bool `json:"tls_required"`
			}
			if err != nil || !strings.HasPrefix(line, "INFO ") || json.Unmarshal([]byte(strings.TrimPrefix(line, "INFO ")), &info) != nil || !info.TLSRequired {
				t.Errorf("the server's greeting does not require TLS: %q %v", line, err)
			}
			connect, _ := json.Marshal(map[string]any{"user": setupEnv["NATS_USER"], "pass": setupEnv["NATS_PASSWORD"], "verbose": false})
			_, _ = fmt.Fprintf(conn, "CONNECT %s\r\nPING\r\n", connect)
			for {
				line, err := br.ReadString('\n')
				if strings.HasPrefix(line, "PONG") {
					t.Error("a plain-text client is served")
				}
				if err != nil {
					break
				}
			}

			// Without the CA, the server's certificate is not trusted.
			if nc, err := nats.Connect(setupEnv["NATS_URL"], nats.UserInfo(setupEnv["NATS_USER"], setupEnv["NATS_PASSWORD"]),
				nats.SetCustomDialer(dns), nats.Timeout(5*time.Second), nats.NoReconnect()); err == nil {
				nc.Close()
				t.Error("a client without NATS_CA_FILE trusts the throwaway CA")
			} else if !strings.Contains(err.Error(), "certificate") {
				t.Errorf("a client without the CA: %v, want a certificate error", err)
			}
			// With TLS, the password still counts.
			if nc, err := nats.Connect(setupEnv["NATS_URL"], nats.UserInfo(setupEnv["NATS_USER"], "wrong"), nats.RootCAs(setupCA),
				nats.SetCustomDialer(dns), nats.Timeout(5*time.Second), nats.NoReconnect()); err == nil {
				nc.Close()
				t.Error("a wrong password is accepted over TLS")
			} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
				t.Errorf("a wrong password: %v, want an authorization error", err)
			}
		})
	}
}
