package gitx

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/leviathan-dev/leviathan/services/localforge"
)

// testToken is the forge's password. It is long and odd enough that finding
// it in an error message cannot be a coincidence.
const testToken = "tok-7Qx9-gitx-SECRET-4242"

const backlogPath = ".leviathan/backlog.yaml"

// testForge is a localforge (the real git http-backend) behind an HTTP
// server.
type testForge struct {
	f   *localforge.Forge
	srv *httptest.Server
}

// startForge serves a fresh localforge. wrap, if set, wraps its handler
// (to count requests or inject faults).
func startForge(t *testing.T, wrap func(http.Handler) http.Handler) *testForge {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is not installed (make test installs it with apt-get):", err)
	}
	f, err := localforge.New(localforge.Config{Dir: t.TempDir(), Token: testToken})
	if err != nil {
		t.Fatalf("localforge.New: %v", err)
	}
	h := f.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	f.SetBaseURL(srv.URL)
	return &testForge{f: f, srv: srv}
}

// repo creates owner/name with files on main and returns its remote and
// bare directory.
func (tf *testForge) repo(t *testing.T, name string, files map[string][]byte) (Remote, string) {
	t.Helper()
	if err := tf.f.CreateRepo(context.Background(), "acme", name, "main", files); err != nil {
		t.Fatalf("CreateRepo: %v", err)
	}
	return tf.remote(name), tf.f.RepoDir("acme", name)
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
