package gitx

import (
	"fmt"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// testToken is the forge's password. It is long and odd enough that finding
// it in an error message cannot be a coincidence.
const testToken = "tok-7Qx9-gitx-SECRET-4242"

const backlogPath = ".leviathan/backlog.yaml"

// testForge serves bare repositories with the real git http-backend (with
// basic auth and partial clone enabled, as localforge and GitHub serve
// them) behind an HTTP server. Packages under internal/ import no
// service, so this is gitx's own, not localforge.
type testForge struct {
	root string
	srv  *httptest.Server
}

// startForge serves a fresh root of repositories. wrap, if set, wraps its
// handler (to count requests or inject faults).
func startForge(t *testing.T, wrap func(http.Handler) http.Handler) *testForge {
	t.Helper()
	execPath, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal("git is not installed (make test installs it with apt-get):", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(execPath)), "git-http-backend")
	tf := &testForge{root: t.TempDir()}
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if user, pass, ok := r.BasicAuth(); !ok || user != "x-access-token" || pass != testToken {
			w.Header().Set("WWW-Authenticate", `Basic realm="gitx-test"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = strings.TrimPrefix(r.URL.Path, "/git")
		env := []string{"GIT_PROJECT_ROOT=" + tf.root, "GIT_HTTP_EXPORT_ALL=1", "GIT_CONFIG_NOSYSTEM=1", "HOME=" + tf.root}
		if p := r.Header.Get("Git-Protocol"); p != "" {
			env = append(env, "GIT_PROTOCOL="+p)
		}
		(&cgi.Handler{Path: backend, Dir: tf.root, Env: env}).ServeHTTP(w, r2)
	})
	if wrap != nil {
		h = wrap(h)
	}
	tf.srv = httptest.NewServer(h)
	t.Cleanup(tf.srv.Close)
	return tf
}

// repo creates acme/name with files committed on main and returns its
// remote and bare directory.
func (tf *testForge) repo(t *testing.T, name string, files map[string][]byte) (Remote, string) {
	t.Helper()
	bare := filepath.Join(tf.root, "acme", name+".git")
	git(t, tf.root, "init", "--bare", "--quiet", "--initial-branch=main", bare)
	for _, kv := range [][2]string{
		{"http.receivepack", "true"}, {"uploadpack.allowFilter", "true"}, {"uploadpack.allowAnySHA1InWant", "true"},
	} {
		git(t, bare, "config", kv[0], kv[1])
	}
	work := t.TempDir()
	for p, data := range files {
		full := filepath.Join(work, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	seed := []string{"--git-dir", bare, "--work-tree", work}
	git(t, work, append(seed, "add", "--all", ".")...)
	git(t, work, append(seed, "-c", "user.name=Seed", "-c", "user.email=seed@example.com", "-c", "commit.gpgsign=false",
		"commit", "--quiet", "--allow-empty", "--no-verify", "-m", "Seed repository")...)
	return tf.remote(name), bare
}

func (tf *testForge) remote(name string) Remote {
	return Remote{URL: tf.srv.URL + "/git/acme/" + name + ".git", Username: "x-access-token", Password: testToken}
}

// git runs the git CLI with no user or system config.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// smallRepo is a README and a backlog.
func smallRepo() map[string][]byte {
	return map[string][]byte{
		"README.md":  []byte("# demo\n"),
		backlogPath:  []byte("# the backlog\ntasks:\n  - id: t-1\n    title: First\n"),
		"src/app.go": []byte("package app\n"),
	}
}

// bigRepo is 200 files in 20 directories (two levels deep), a README and
// the backlog; every file has distinct content, so no object is shared.
func bigRepo() map[string][]byte {
	files := smallRepo()
	for d := 0; d < 20; d++ {
		for i := 0; i < 10; i++ {
			p := fmt.Sprintf("dir%02d/sub%d/file%02d.txt", d, i%2, i)
			files[p] = []byte(fmt.Sprintf("file %d of dir %d\n%s\n", i, d, strings.Repeat("padding ", 64)))
		}
	}
	files["dir07/sub1/deep/config.yaml"] = []byte("deep: true\n")
	return files
}

// packContents lists the objects of a pack as git sees them: type by hash.
// It indexes the pack with the git CLI, which also proves it valid.
func packContents(t *testing.T, pack []byte) map[string]string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "snap.pack")
	if err := os.WriteFile(p, pack, 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "index-pack", "-o", filepath.Join(dir, "snap.idx"), p)
	out := git(t, dir, "verify-pack", "-v", filepath.Join(dir, "snap.idx"))
	objs := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && len(f[0]) == 40 {
			objs[f[0]] = f[1]
		}
	}
	return objs
}

// meta is a fixed author, so commits are reproducible.
func meta(msg string) CommitMeta {
	sig := object.Signature{Name: "Leviathan", Email: "leviathan@example.com", When: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	return CommitMeta{Message: msg, Author: sig, Committer: sig}
}

func revParse(t *testing.T, dir, rev string) plumbing.Hash {
	t.Helper()
	return plumbing.NewHash(git(t, dir, "rev-parse", rev))
}
