package localforge

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGitCloneAndPush(t *testing.T) {
	f, _ := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	url := f.CloneURL("acme", "widgets")
	auth := authEnv("x-access-token", testToken)

	// Every fetch strategy the git stage may use must work over HTTP.
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"full", nil},
		{"shallow", []string{"--depth=1"}},
		{"blobless", []string{"--filter=blob:none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "clone")
			git(t, "", auth, append(append([]string{"clone", "--quiet"}, tc.args...), url, dir)...)
			readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
			if err != nil || string(readme) != "# widgets\n" {
				t.Fatalf("README.md = %q, %v", readme, err)
			}
			if got := git(t, dir, nil, "log", "-1", "--format=%an <%ae>"); got != "Leviathan Seed <seed@example.com>" {
				t.Fatalf("seed author = %q", got)
			}
		})
	}

	t.Run("push branch", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "clone")
		git(t, "", auth, "clone", "--quiet", url, dir)
		git(t, dir, nil, "checkout", "--quiet", "-b", "leviathan/task-1")
		if err := os.WriteFile(filepath.Join(dir, "task.txt"), []byte("work\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		git(t, dir, nil, "add", ".")
		git(t, dir, nil, "commit", "--quiet", "-m", "task 1")
		git(t, dir, auth, "push", "--quiet", "origin", "leviathan/task-1")
		want := git(t, dir, nil, "rev-parse", "HEAD")
		if got := git(t, f.RepoDir("acme", "widgets"), nil, "rev-parse", "refs/heads/leviathan/task-1"); got != want {
			t.Fatalf("pushed tip = %s, want %s", got, want)
		}
	})

	t.Run("bad credentials", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "clone")
		if out, err := tryGit("", authEnv("x", "wrong"), "clone", "--quiet", url, dir); err == nil {
			t.Fatalf("clone with a wrong password succeeded: %s", out)
		}
		for _, tc := range []struct {
			name, user, pass string
		}{
			{"wrong password", "x", "wrong"},
			{"empty user", "", testToken},
			{"none", "", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest("GET", url+"/info/refs?service=git-upload-pack", nil)
				if tc.user != "" || tc.pass != "" {
					req.SetBasicAuth(tc.user, tc.pass)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("status %d, want 401", resp.StatusCode)
				}
			})
		}
	})

	t.Run("unknown repo", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "clone")
		out, err := tryGit("", auth, "clone", "--quiet", strings.Replace(url, "widgets", "gadgets", 1), dir)
		if err == nil {
			t.Fatalf("clone of a missing repo succeeded: %s", out)
		}
	})
}
