package k8s

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The control plane's versions, in one place. kind's config pins
// kindest/node:v1.37.0 (deploy/kind/cluster.yaml); the control plane is
// the newest patch of the same minor that the Go module proxy serves,
// built from k8s.io/kubernetes with every staging module (k8s.io/api,
// k8s.io/apiserver, ...) at the matching v0.x. etcd is the release the
// same Kubernetes release requires (its go.mod's go.etcd.io/etcd/server/v3).
const (
	kubernetesVersion = "v1.37.2"
	stagingVersion    = "v0.37.2"
	etcdVersion       = "v3.7.0"
)

// advertiseAddress is the API server's address in the namespace, on its
// loopback interface: kube-apiserver refuses to advertise a loopback
// address (127.0.0.0/8) to its endpoint reconciler.
const advertiseAddress = "10.255.255.1"

// controlPlane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler, each a process in a loopback-only network namespace of
// their own (nothing in it can reach anything but itself).
type controlPlane struct {
	t          *testing.T
	dir        string
	netns      *exec.Cmd // holds the network namespace
	procs      []*exec.Cmd
	logs       map[string]*lockedBuffer
	kubeconfig string
	apiPort    int
}

// binaries builds the control plane's binaries once and caches them
// (os.UserCacheDir()/leviathan-tests/k8s-<version>): a throwaway module
// that requires k8s.io/kubernetes and replaces each of its staging
// modules (its own replace directives point at directories its module
// zip does not hold) with the published one of the same release.
func binaries(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "leviathan-tests", "k8s-"+kubernetesVersion+"-etcd-"+etcdVersion)
	bin := filepath.Join(dir, "bin")
	names := []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"}
	have := true
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(bin, n)); err != nil {
			have = false
		}
	}
	if have {
		t.Logf("control plane %s, etcd %s: cached in %s", kubernetesVersion, etcdVersion, bin)
		return bin
	}
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("building the control plane %s and etcd %s into %s (once; several minutes on 2 cores)", kubernetesVersion, etcdVersion, bin)
	start := time.Now()
	env := append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = src, env
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				out = append(out, ee.Stderr...)
			}
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module controlplane\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The staging modules are what k8s.io/kubernetes replaces with its
	// own directories.
	out := run("mod", "download", "-json", "k8s.io/kubernetes@"+kubernetesVersion)
	var gomod string
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == `"GoMod"` {
			gomod = strings.Trim(strings.TrimSpace(v), `",`)
		}
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		t.Fatalf("k8s.io/kubernetes go.mod: %v", err)
	}
	var mod strings.Builder
	fmt.Fprintf(&mod, "module controlplane\n\ngo 1.26\n\nrequire (\n\tk8s.io/kubernetes %s\n\tgo.etcd.io/etcd/server/v3 %s\n)\n\n", kubernetesVersion, etcdVersion)
	s := bufio.NewScanner(bytes.NewReader(data))
	for s.Scan() {
		f := strings.Fields(s.Text())
		if len(f) >= 3 && strings.HasPrefix(f[0], "k8s.io/") && f[1] == "=>" && strings.HasPrefix(f[2], "./staging/") {
			fmt.Fprintf(&mod, "replace %s => %s %s\n", f[0], f[0], stagingVersion)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(mod.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	mains := map[string]string{
		"kube-apiserver":          "k8s.io/kubernetes/cmd/kube-apiserver/app\"\n)\n\nfunc main() { os.Exit(cli.Run(app.NewAPIServerCommand())) }\n",
		"kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager/app\"\n)\n\nfunc main() { os.Exit(cli.Run(app.NewControllerManagerCommand())) }\n",
		"kube-scheduler":          "k8s.io/kubernetes/cmd/kube-scheduler/app\"\n)\n\nfunc main() { os.Exit(cli.Run(app.NewSchedulerCommand())) }\n",
	}
	for name, body := range mains {
		d := filepath.Join(src, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		code := "package main\n\nimport (\n\t\"os\"\n\n\t\"k8s.io/component-base/cli\"\n\t\"" + body
		if err := os.WriteFile(filepath.Join(d, "main.go"), []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run("mod", "tidy")
	tmp := bin + ".tmp"
	_ = os.RemoveAll(tmp)
	for name := range mains {
		run("build", "-trimpath", "-o", filepath.Join(tmp, name), "./"+name)
	}
	run("build", "-trimpath", "-o", filepath.Join(tmp, "etcd"), "go.etcd.io/etcd/server/v3")
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("built in %v", time.Since(start).Round(time.Second))
	return bin
}

// startControlPlane runs the control plane in a network namespace of its
// own with only loopback up; kubectl runs in it too (c.kubectl).
func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	for _, tool := range []string{"unshare", "nsenter", "ip", "kubectl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: %v", tool, err)
		}
	}
	bin := binaries(t)
	c := &controlPlane{t: t, dir: t.TempDir(), logs: map[string]*lockedBuffer{}, apiPort: 6443}
	t.Cleanup(c.stop)
	// The namespace lives as long as this process: its loopback comes up,
	// then it sleeps.
	c.netns = exec.Command("unshare", "--net", "sh", "-c", "ip link set lo up && ip addr add "+advertiseAddress+"/32 dev lo && echo ready && exec sleep infinity")
	var ready lockedBuffer
	c.netns.Stdout, c.netns.Stderr = &ready, &ready
	c.netns.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.netns.Start(); err != nil {
		t.Fatalf("unshare --net: %v", err)
	}
	c.waitFor("the network namespace", 10*time.Second, func() error {
		if !strings.Contains(ready.String(), "ready") {
			return errors.New(ready.String())
		}
		return nil
	})
	pki := c.makePKI()
	etcdDir := filepath.Join(c.dir, "etcd")
	c.start("etcd", filepath.Join(bin, "etcd"), "--data-dir", etcdDir, "--name", "cp",
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "cp=http://127.0.0.1:2380", "--log-level", "warn")
	c.start("kube-apiserver", filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", "0.0.0.0", "--advertise-address", advertiseAddress, "--secure-port", strconv.Itoa(c.apiPort),
		"--tls-cert-file", pki.servingCert, "--tls-private-key-file", pki.servingKey,
		// kind's kubeadm allows privileged containers; Pod Security
		// admission is then what refuses them in a restricted namespace.
		"--allow-privileged=true",
		"--token-auth-file", pki.tokens,
		"--authorization-mode", "Node,RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", pki.saPub, "--service-account-signing-key-file", pki.saKey,
		"--service-cluster-ip-range", "10.96.0.0/16",
		// PodSecurity is among the default admission plugins; the
		// namespace's labels choose its level.
		"--enable-admission-plugins", "NodeRestriction",
		"--v", "1")
	if err := os.WriteFile(c.kubeconfigPath(), []byte(kubeconfig(c.apiPort, pki.adminToken)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.kubeconfig = c.kubeconfigPath()
	c.waitFor("kube-apiserver /readyz", 3*time.Minute, func() error {
		_, err := c.kubectlErr("get", "--raw", "/readyz")
		return err
	})
	c.start("kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig", c.kubeconfig, "--leader-elect=false", "--use-service-account-credentials=false",
		"--service-account-private-key-file", pki.saKey, "--root-ca-file", pki.ca,
		"--controllers", "*", "--bind-address", "127.0.0.1", "--secure-port", "10257", "--v", "1")
	c.start("kube-scheduler", filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig", c.kubeconfig, "--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "10259", "--v", "1")
	// The controller-manager is working once it has made a namespace's
	// default service account.
	c.waitFor("the default service account (kube-controller-manager)", 3*time.Minute, func() error {
		_, err := c.kubectlErr("get", "serviceaccount", "default", "-n", "default")
		return err
	})
	return c
}

func (c *controlPlane) kubeconfigPath() string { return filepath.Join(c.dir, "kubeconfig") }

// start runs a control plane process in the namespace.
func (c *controlPlane) start(name, bin string, args ...string) {
	c.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=/proc/" + strconv.Itoa(c.netns.Process.Pid) + "/ns/net", bin}, args...)...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	c.logs[name] = out
	c.procs = append(c.procs, cmd)
}

func (c *controlPlane) stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		_ = p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	if c.netns != nil && c.netns.Process != nil {
		_ = c.netns.Process.Kill()
		_ = c.netns.Wait()
	}
	if c.t.Failed() {
		for name, out := range c.logs {
			c.t.Logf("--- %s (last lines)\n%s", name, lastLines(out.String(), 25))
		}
	}
}

// kubectl runs kubectl in the namespace against the control plane and
// fails the test on an error.
func (c *controlPlane) kubectl(args ...string) string {
	c.t.Helper()
	out, err := c.kubectlErr(args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// kubectlErr runs kubectl and returns its output, or an error with it.
func (c *controlPlane) kubectlErr(args ...string) (string, error) {
	return c.kubectlIn(nil, args...)
}

func (c *controlPlane) kubectlIn(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"--net=/proc/" + strconv.Itoa(c.netns.Process.Pid) + "/ns/net", "kubectl", "--kubeconfig", c.kubeconfigPath()}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// waitFor polls check until it succeeds, failing the test after d.
func (c *controlPlane) waitFor(what string, d time.Duration, check func() error) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: not ready after %v: %v", what, d, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

type pki struct {
	tokens, adminToken, saKey, saPub string
	ca, servingCert, servingKey      string
}

// makePKI writes a CA and the API server's serving certificate signed by
// it (the CA is what the controller-manager publishes to pods as
// kube-root-ca.crt), the service account signing key, and a static token
// for the admin (group system:masters), which the controller-manager and
// the scheduler use too.
func (c *controlPlane) makePKI() pki {
	c.t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		c.t.Fatal(err)
	}
	p := pki{saKey: filepath.Join(c.dir, "sa.key"), saPub: filepath.Join(c.dir, "sa.pub"),
		tokens: filepath.Join(c.dir, "tokens.csv"), ca: filepath.Join(c.dir, "ca.crt"),
		servingCert: filepath.Join(c.dir, "apiserver.crt"), servingKey: filepath.Join(c.dir, "apiserver.key")}
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		c.t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "leviathan-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		c.t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		c.t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(advertiseAddress), net.ParseIP("10.96.0.1")}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		c.t.Fatal(err)
	}
	srvKeyDER, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	p.adminToken = hex.EncodeToString(b)
	for _, f := range []struct {
		path string
		data []byte
	}{
		{p.saKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
		{p.saPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})},
		{p.tokens, []byte(p.adminToken + ",admin,admin,system:masters\n")},
		{p.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})},
		{p.servingCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER})},
		{p.servingKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: srvKeyDER})},
	} {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			c.t.Fatal(err)
		}
	}
	return p
}

func kubeconfig(port int, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:%d
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, port, token)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
