package localforge

import (
	"context"
	"maps"
	"strings"
	"testing"
)

// TestBranchTipsReadsWhatGitStores: the in-process ref reader agrees with
// `git for-each-ref` on loose refs, packed refs, a packed ref overridden by
// a newer loose one, nested branch names, and a deleted branch.
func TestBranchTipsReadsWhatGitStores(t *testing.T) {
	f, _ := startForge(t, Config{})
	createRepo(t, f, "o", "r")
	bare := f.RepoDir("o", "r")
	main := git(t, bare, nil, "rev-parse", "refs/heads/main")
	tree := git(t, bare, nil, "rev-parse", "main^{tree}")
	second := git(t, bare, nil, "commit-tree", tree, "-p", main, "-m", "second")
	for _, b := range []string{"packed-1", "agent/backlog-propose-a-1", "gone", "moved"} {
		git(t, bare, nil, "update-ref", "refs/heads/"+b, main)
	}
	git(t, bare, nil, "tag", "v1", main)
	git(t, bare, nil, "pack-refs", "--all")
	git(t, bare, nil, "update-ref", "refs/heads/moved", second) // loose, newer than its packed line
	git(t, bare, nil, "update-ref", "refs/heads/agent/backlog-propose-a-2", second)
	git(t, bare, nil, "update-ref", "-d", "refs/heads/gone")

	want := map[string]string{}
	for _, line := range strings.Split(git(t, bare, nil, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/"), "\n") {
		sha, ref, _ := strings.Cut(line, " ")
		want[strings.TrimPrefix(ref, "refs/heads/")] = sha
	}
	got, err := branchTips(context.Background(), bare)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("branchTips = %v\nfor-each-ref: %v", got, want)
	}
	if got["moved"] != second || got["packed-1"] != main || len(got) != 5 {
		t.Fatalf("branchTips = %v", got)
	}
	if _, err := branchTips(context.Background(), f.RepoDir("o", "missing")); err != ErrRepoNotFound {
		t.Fatalf("missing repository: %v", err)
	}
}
