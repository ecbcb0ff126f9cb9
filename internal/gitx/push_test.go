package gitx

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"

	"github.com/leviathan-dev/leviathan/events"
)

// fetchRepo fetches path from main with strategy and opens the snapshot.
func fetchRepo(t *testing.T, r Remote, path string, s Strategy) (*Snapshot, *Repo) {
	t.Helper()
	snap, err := Fetch(context.Background(), r, "main", path, FetchOptions{Strategy: s})
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	repo, err := OpenPack(snap.Pack)
	if err != nil {
		t.Fatalf("OpenPack: %v", err)
	}
	return snap, repo
}

// checkPushed verifies with the git CLI that branch on the bare repository
// is one commit on main that changes exactly file, to content, and that the
// repository is sound.
func checkPushed(t *testing.T, dir, branch, file string, content []byte, c *NewCommit) {
	t.Helper()
	git(t, dir, "fsck", "--strict", "--no-dangling")
	if got := revParse(t, dir, branch); got != c.Hash {
		t.Errorf("%s is at %s, want %s", branch, got, c.Hash)
	}
	if got, want := revParse(t, dir, branch+"^"), revParse(t, dir, "main"); got != want {
		t.Errorf("%s^ = %s, want main %s", branch, got, want)
	}
	if got := git(t, dir, "diff", "--name-only", "main", branch); got != file {
		t.Errorf("git diff --name-only main %s = %q, want %q", branch, got, file)
	}
	if got := git(t, dir, "cat-file", "blob", branch+":"+file); got != strings.TrimSpace(string(content)) {
		t.Errorf("%s:%s = %q, want %q", branch, file, got, content)
	}
	if got := git(t, dir, "log", "-1", "--format=%an <%ae> %at|%s", branch); got != "Leviathan <leviathan@example.com> 1735787045|Leviathan: Propose task t-2" {
		t.Errorf("commit header = %q", got)
	}
}

func TestCommitAndPush(t *testing.T) {
	tf := startForge(t, nil)
	files := bigRepo()
	for _, s := range []Strategy{StrategyMinimal, StrategyBlobNone, StrategyShallow} {
		t.Run(string(s), func(t *testing.T) {
			r, dir := tf.repo(t, "push-"+string(s), files)
			snap, repo := fetchRepo(t, r, backlogPath, s)
			old, oldBlob, err := repo.ReadFile(snap.Commit, backlogPath)
			if err != nil {
				t.Fatal(err)
			}
			content := append(slices.Clone(old), "  - id: t-2\n    title: Second\n"...)

			c, err := repo.Commit(snap.Commit, backlogPath, content, meta("Leviathan: Propose task t-2"))
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
			if !slices.Equal(c.ChangedPaths, []string{backlogPath}) {
				t.Errorf("ChangedPaths = %q", c.ChangedPaths)
			}
			// blob, .leviathan tree, root tree, commit: nothing else.
			var types []string
			for _, o := range c.Objects {
				types = append(types, o.Type().String())
			}
			if !slices.Equal(types, []string{"blob", "tree", "tree", "commit"}) {
				t.Errorf("new objects %v, want blob, tree, tree, commit", types)
			}
			again, err := repo.Commit(snap.Commit, backlogPath, content, meta("Leviathan: Propose task t-2"))
			if err != nil || again.Hash != c.Hash {
				t.Errorf("Commit is not deterministic: %s then %s (%v)", c.Hash, again.Hash, err)
			}

			branch := "agent/backlog-propose-a-1"
			res, err := Push(context.Background(), r, branch, c)
			if err != nil || res.UpToDate {
				t.Fatalf("Push = %+v, %v", res, err)
			}
			checkPushed(t, dir, branch, backlogPath, content, c)
			if got := revParse(t, dir, "main:"+backlogPath); got != oldBlob {
				t.Errorf("main's backlog changed")
			}

			// A redelivered push finds its work done.
			res, err = Push(context.Background(), r, branch, c)
			if err != nil || !res.UpToDate {
				t.Fatalf("second Push = %+v, %v; want UpToDate", res, err)
			}

			// Another commit for the same branch is a conflict, not a force.
			other, err := repo.Commit(snap.Commit, backlogPath, []byte("tasks: []\n"), meta("other"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Push(context.Background(), r, branch, other); !errors.Is(err, ErrBranchConflict) {
				t.Fatalf("Push of another commit = %v, want ErrBranchConflict", err)
			}
			if got := revParse(t, dir, branch); got != c.Hash {
				t.Errorf("conflicting push moved the branch to %s", got)
			}
		})
	}
}

// TestCommitCreatesPath: a file (and its directories) absent from the base
// commit is created, from a minimal snapshot that has only the root tree.
func TestCommitCreatesPath(t *testing.T) {
	tf := startForge(t, nil)
	for _, file := range []string{backlogPath, "new/deeper/still/file.yaml", "src/new.go"} {
		t.Run(file, func(t *testing.T) {
			files := map[string][]byte{"README.md": []byte("# demo\n"), "src/app.go": []byte("package app\n")}
			r, dir := tf.repo(t, strings.NewReplacer("/", "-", ".", "-").Replace(file), files)
			snap, repo := fetchRepo(t, r, file, StrategyMinimal)
			if _, _, err := repo.ReadFile(snap.Commit, file); !errors.Is(err, ErrFileNotFound) {
				t.Fatalf("ReadFile = %v, want ErrFileNotFound", err)
			}
			content := []byte("tasks:\n  - id: t-2\n")
			c, err := repo.Commit(snap.Commit, file, content, meta("Leviathan: Propose task t-2"))
			if err != nil {
				t.Fatalf("Commit: %v", err)
			}
			if !slices.Equal(c.ChangedPaths, []string{file}) {
				t.Errorf("ChangedPaths = %q", c.ChangedPaths)
			}
			// blob + one tree per directory + root + commit.
			if want := strings.Count(file, "/") + 3; len(c.Objects) != want {
				t.Errorf("%d new objects, want %d", len(c.Objects), want)
			}
			if _, err := Push(context.Background(), r, "agent/x", c); err != nil {
				t.Fatalf("Push: %v", err)
			}
			checkPushed(t, dir, "agent/x", file, content, c)
		})
	}
}

func TestPushRefBlocked(t *testing.T) {
	tf := startForge(t, nil)
	r, dir := tf.repo(t, "blocked", smallRepo())
	snap, repo := fetchRepo(t, r, backlogPath, StrategyMinimal)
	c, err := repo.Commit(snap.Commit, backlogPath, []byte("tasks: []\n"), meta("m"))
	if err != nil {
		t.Fatal(err)
	}
	main := revParse(t, dir, "main").String()
	git(t, dir, "update-ref", "refs/heads/agent", main)
	git(t, dir, "update-ref", "refs/heads/feature/x/y", main)
	for _, tc := range []struct{ branch, blocker string }{
		{"agent/x", "refs/heads/agent"},
		{"agent/x/y", "refs/heads/agent"},
		{"feature/x", "refs/heads/feature/x/y"},
		{"feature", "refs/heads/feature/x/y"},
	} {
		_, err := Push(context.Background(), r, tc.branch, c)
		if !errors.Is(err, ErrRefBlocked) || !strings.Contains(err.Error(), tc.blocker) {
			t.Errorf("Push %s = %v, want ErrRefBlocked naming %s", tc.branch, err, tc.blocker)
		}
	}
	// A sibling name is fine.
	if _, err := Push(context.Background(), r, "feature/x2", c); err != nil {
		t.Errorf("Push feature/x2: %v", err)
	}
}

func TestPushRejectedByHook(t *testing.T) {
	tf := startForge(t, nil)
	r, dir := tf.repo(t, "hooked", smallRepo())
	hook := filepath.Join(dir, "hooks", "pre-receive")
	if err := os.MkdirAll(filepath.Dir(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hook, []byte("#!/bin/sh\necho 'policy: agents may not push today' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	snap, repo := fetchRepo(t, r, backlogPath, StrategyMinimal)
	c, err := repo.Commit(snap.Commit, backlogPath, []byte("tasks: []\n"), meta("m"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Push(context.Background(), r, "agent/x", c)
	if !errors.Is(err, ErrPushRejected) || !strings.Contains(err.Error(), "policy: agents may not push today") {
		t.Fatalf("Push = %v, want ErrPushRejected with the hook's message", err)
	}
	t.Log(err)
}

func TestPushErrors(t *testing.T) {
	tf := startForge(t, nil)
	r, dir := tf.repo(t, "small", smallRepo())
	snap, repo := fetchRepo(t, r, backlogPath, StrategyMinimal)
	c, err := repo.Commit(snap.Commit, backlogPath, []byte("tasks: []\n"), meta("m"))
	if err != nil {
		t.Fatal(err)
	}
	wrong := r
	wrong.Password = "wrong-password-XYZZY-1234"
	for _, tc := range []struct {
		name   string
		remote Remote
		branch string
		want   error
	}{
		{"wrong password", wrong, "agent/x", ErrAuth},
		{"missing repo", tf.remote("nope"), "agent/x", ErrRepoNotFound},
	} {
		_, err := Push(context.Background(), tc.remote, tc.branch, c)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Push = %v, want %v", tc.name, err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), testToken) || strings.Contains(err.Error(), wrong.Password)) {
			t.Errorf("%s: error shows the password: %v", tc.name, err)
		}
	}
	if _, err := Push(context.Background(), r, "bad..name", c); !errors.Is(err, ErrInvalidBranch) {
		t.Errorf("Push to an invalid branch name succeeded")
	}
	if out := git(t, dir, "for-each-ref", "--format=%(refname)"); out != "refs/heads/main" {
		t.Errorf("failed pushes left refs: %q", out)
	}
}

// TestCommitUnchangedContent: writing the same bytes makes a commit whose
// tree is the parent's, with no changed paths and only the commit as new.
func TestCommitUnchangedContent(t *testing.T) {
	tf := startForge(t, nil)
	files := smallRepo()
	r, _ := tf.repo(t, "same", files)
	snap, repo := fetchRepo(t, r, backlogPath, StrategyMinimal)
	c, err := repo.Commit(snap.Commit, backlogPath, files[backlogPath], meta("m"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ChangedPaths) != 0 || len(c.Objects) != 1 || c.Objects[0].Type() != plumbing.CommitObject {
		t.Errorf("ChangedPaths %q, %d objects; want none and the commit", c.ChangedPaths, len(c.Objects))
	}
}

func TestCommitRefusesBadPaths(t *testing.T) {
	tf := startForge(t, nil)
	r, _ := tf.repo(t, "paths", smallRepo())
	snap, repo := fetchRepo(t, r, "README.md", StrategyShallow)
	for _, p := range []string{"src", "README.md/x", "", "/abs", "a//b", "a/../b", ".git/config", "x/"} {
		if _, err := repo.Commit(snap.Commit, p, []byte("x"), meta("m")); !errors.Is(err, ErrInvalidPath) {
			t.Errorf("Commit(%q) = %v, want ErrInvalidPath", p, err)
		}
	}
	if _, err := repo.Commit(snap.Commit, "README.md", []byte("x"), CommitMeta{Message: "no author"}); err == nil {
		t.Errorf("Commit without an author succeeded")
	}
	if _, err := repo.Commit(plumbing.NewHash(strings.Repeat("ab", 20)), "README.md", []byte("x"), meta("m")); !errors.Is(err, ErrMissingObject) {
		t.Errorf("Commit on an unknown parent = %v, want ErrMissingObject", err)
	}
}

// TestCommitKeepsExecutableBit: rewriting an executable file keeps its mode.
func TestCommitKeepsExecutableBit(t *testing.T) {
	tf := startForge(t, nil)
	r, dir := tf.repo(t, "exec", smallRepo())
	// Make a commit on main in which src/app.go is executable.
	work := t.TempDir()
	git(t, work, "clone", "--quiet", dir, "w")
	wdir := filepath.Join(work, "w")
	git(t, wdir, "update-index", "--chmod=+x", "src/app.go")
	git(t, wdir, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "--quiet", "-m", "exec")
	git(t, wdir, "push", "--quiet", "origin", "HEAD:main")

	snap, repo := fetchRepo(t, r, "src/app.go", StrategyMinimal)
	c, err := repo.Commit(snap.Commit, "src/app.go", []byte("package app // v2\n"), meta("m"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Push(context.Background(), r, "agent/exec", c); err != nil {
		t.Fatal(err)
	}
	if got := git(t, dir, "ls-tree", "agent/exec", "src/app.go"); !strings.HasPrefix(got, "100755 ") {
		t.Errorf("ls-tree = %q, want mode 100755", got)
	}
	if got := git(t, dir, "diff", "--name-only", "main", "agent/exec"); got != "src/app.go" {
		t.Errorf("diff = %q", got)
	}
	if !bytes.Equal([]byte(git(t, dir, "cat-file", "blob", "agent/exec:README.md")), []byte("# demo")) {
		t.Errorf("README changed")
	}
}

// TestPushRefLocked: a ref whose lock is held on the server is a
// transient refusal (ErrRefLocked, retried), not a rejection.
func TestPushRefLocked(t *testing.T) {
	tf := startForge(t, nil)
	r, dir := tf.repo(t, "locked", smallRepo())
	snap, repo := fetchRepo(t, r, backlogPath, StrategyMinimal)
	c, err := repo.Commit(snap.Commit, backlogPath, []byte("tasks: []\n"), meta("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "refs", "heads", "agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "refs", "heads", "agent", "x.lock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Push(context.Background(), r, "agent/x", c)
	if ft, retry := Classify(err); !errors.Is(err, ErrRefLocked) || errors.Is(err, ErrPushRejected) || !retry || ft != events.RetriesExhausted {
		t.Fatalf("Push = %v, want ErrRefLocked, retried", err)
	}
}
