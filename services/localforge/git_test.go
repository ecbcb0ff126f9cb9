package localforge

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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

// TestHasCommitsBetween checks the in-process walk that decides whether a
// pull request would merge anything against git's own count, on every
// shape of history: equal, ahead, behind, diverged, and further ahead
// than the walk reads.
func TestHasCommitsBetween(t *testing.T) {
	dir := t.TempDir()
	bare := filepath.Join(dir, "r.git")
	work := filepath.Join(dir, "w")
	git(t, "", nil, "init", "--quiet", "--bare", bare)
	git(t, "", nil, "init", "--quiet", "--initial-branch=main", work)
	commit := func(msg string) string {
		git(t, work, nil, "commit", "--quiet", "--allow-empty", "-m", msg)
		return git(t, work, nil, "rev-parse", "HEAD")
	}
	root := commit("root")
	one := commit("one")
	var deeps []string
	for i := range baseWalk + 3 {
		deeps = append(deeps, commit("deep "+strconv.Itoa(i)))
	}
	deep := deeps[len(deeps)-1]
	git(t, work, nil, "checkout", "--quiet", "-b", "side", root)
	side := commit("side")
	git(t, work, nil, "push", "--quiet", bare, "main", "side")
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		base, head string
		want, walk bool // walk: the walk alone decides
	}{
		{"equal", one, one, false, false},
		{"one ahead", root, one, true, true},
		{"behind", one, root, false, false},
		{"diverged", one, side, true, false},
		{"ahead beyond the walk", root, deep, true, false},
		{"three ahead", deeps[len(deeps)-4], deep, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hasCommitsBetween(ctx, bare, tc.base, tc.head)
			if err != nil || got != tc.want {
				t.Fatalf("hasCommitsBetween = %v, %v; want %v", got, err, tc.want)
			}
			n, err := commitsBetween(ctx, bare, tc.base, tc.head)
			if err != nil || (n > 0) != tc.want {
				t.Fatalf("git counts %d, %v; want ahead = %v", n, err, tc.want)
			}
			if tc.walk && !descends(bare, tc.base, tc.head, baseWalk) {
				t.Fatal("the walk did not find base")
			}
		})
	}
}

// TestGCEveryPushes: with receive.autogc off in every push (pushConfig),
// the forge itself runs `git gc --auto` every gcEvery pushes to a
// repository. Here each push keeps its pack (unpackLimit 1) and gc --auto
// repacks once there are more than two.
func TestGCEveryPushes(t *testing.T) {
	f, _ := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	repo := f.RepoDir("acme", "widgets")
	git(t, repo, nil, "config", "receive.unpackLimit", "1")
	git(t, repo, nil, "config", "gc.autoPackLimit", "2")
	url := f.CloneURL("acme", "widgets")
	auth := authEnv("x-access-token", testToken)
	dir := filepath.Join(t.TempDir(), "clone")
	git(t, "", auth, "clone", "--quiet", url, dir)
	packs := func() int {
		m, _ := filepath.Glob(filepath.Join(repo, "objects", "pack", "*.pack"))
		return len(m)
	}
	for i := range gcEvery {
		git(t, dir, nil, "commit", "--quiet", "--allow-empty", "-m", "push "+strconv.Itoa(i))
		git(t, dir, auth, "push", "--quiet", "origin", "HEAD:refs/heads/b")
		if i == gcEvery-2 && packs() < gcEvery-1 {
			t.Fatalf("%d packs after %d pushes: receive-pack ran gc itself", packs(), i+1)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for packs() > 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d packs a minute after push %d: no gc", packs(), gcEvery)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := git(t, dir, nil, "rev-parse", "HEAD"); got != git(t, repo, nil, "rev-parse", "refs/heads/b") {
		t.Fatal("the branch moved")
	}
	git(t, repo, nil, "fsck", "--no-progress")
}
