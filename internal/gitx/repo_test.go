package gitx

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
)

// partialPack builds, without a server, the pack a minimal fetch of
// docs/a/b.txt would give: the commit and the trees on that path hold
// entries whose objects (other.txt, lib/) are absent.
func partialPack(t testing.TB) (pack []byte, commit plumbing.Hash) {
	t.Helper()
	s := memory.NewStorage()
	put := func(o plumbing.EncodedObject) plumbing.Hash {
		h, err := s.SetEncodedObject(o)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	blob := &plumbing.MemoryObject{}
	blob.SetType(plumbing.BlobObject)
	_, _ = blob.Write([]byte("hello\n"))
	absent := plumbing.NewHash(strings.Repeat("ab", 20)) // an object the snapshot lacks
	tree := func(entries ...object.TreeEntry) plumbing.Hash {
		o := &plumbing.MemoryObject{}
		if err := (&object.Tree{Entries: entries}).Encode(o); err != nil {
			t.Fatal(err)
		}
		return put(o)
	}
	a := tree(object.TreeEntry{Name: "b.txt", Mode: filemode.Regular, Hash: put(blob)},
		object.TreeEntry{Name: "other.txt", Mode: filemode.Regular, Hash: absent})
	docs := tree(object.TreeEntry{Name: "a", Mode: filemode.Dir, Hash: a})
	root := tree(object.TreeEntry{Name: "docs", Mode: filemode.Dir, Hash: docs},
		object.TreeEntry{Name: "lib", Mode: filemode.Dir, Hash: absent})
	c := &object.Commit{Author: meta("").Author, Committer: meta("").Author, Message: "base\n", TreeHash: root,
		ParentHashes: []plumbing.Hash{absent}}
	co := &plumbing.MemoryObject{}
	if err := c.Encode(co); err != nil {
		t.Fatal(err)
	}
	commit = put(co)
	pack, err := encodePack(s, []plumbing.Hash{commit, root, docs, a, blob.Hash()})
	if err != nil {
		t.Fatal(err)
	}
	return pack, commit
}

func TestRepoOnPartialSnapshot(t *testing.T) {
	pack, commit := partialPack(t)
	repo, err := OpenPack(pack)
	if err != nil {
		t.Fatal(err)
	}
	data, _, err := repo.ReadFile(commit, "docs/a/b.txt")
	if err != nil || string(data) != "hello\n" {
		t.Fatalf("ReadFile = %q, %v", data, err)
	}
	for p, want := range map[string]error{
		"docs/a/other.txt": ErrMissingObject, // named in the tree, not fetched
		"lib/x.go":         ErrMissingObject,
		"docs/a/nope.txt":  ErrFileNotFound,
		"docs/a":           ErrFileNotFound, // a directory
		"nope/b.txt":       ErrFileNotFound,
		"docs/a/b.txt/c":   ErrFileNotFound,
		"docs//b.txt":      ErrInvalidPath,
	} {
		if _, _, err := repo.ReadFile(commit, p); !errors.Is(err, want) {
			t.Errorf("ReadFile(%q) = %v, want %v", p, err, want)
		}
	}

	// The diff skips everything whose hash did not change, so the absent
	// objects are never needed.
	for _, tc := range []struct {
		path    string
		changed []string
		objects int
	}{
		{"docs/a/b.txt", []string{"docs/a/b.txt"}, 5},
		{"docs/a/new.txt", []string{"docs/a/new.txt"}, 5},
		{"docs/new/deep/x.txt", []string{"docs/new/deep/x.txt"}, 6},
		{"top.txt", []string{"top.txt"}, 3},
	} {
		c, err := repo.Commit(commit, tc.path, []byte("changed\n"), meta("m"))
		if err != nil {
			t.Fatalf("Commit %s: %v", tc.path, err)
		}
		if !slices.Equal(c.ChangedPaths, tc.changed) || len(c.Objects) != tc.objects {
			t.Errorf("Commit %s: changed %q, %d objects; want %q, %d", tc.path, c.ChangedPaths, len(c.Objects), tc.changed, tc.objects)
		}
		// The new objects alone make a valid pack that round-trips.
		p, err := packObjects(c.Objects)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := OpenPack(p); err != nil {
			t.Errorf("pack of new objects: %v", err)
		}
	}
	// Writing where the snapshot has only a name, no object, needs that
	// object: it says so rather than inventing a tree.
	if _, err := repo.Commit(commit, "lib/x.go", []byte("x"), meta("m")); !errors.Is(err, ErrMissingObject) {
		t.Errorf("Commit under an absent tree = %v, want ErrMissingObject", err)
	}
}

func TestDiffTrees(t *testing.T) {
	s := memory.NewStorage()
	blob := func(content string) plumbing.Hash {
		o := &plumbing.MemoryObject{}
		o.SetType(plumbing.BlobObject)
		_, _ = o.Write([]byte(content))
		h, _ := s.SetEncodedObject(o)
		return h
	}
	tree := func(entries ...object.TreeEntry) plumbing.Hash {
		o := &plumbing.MemoryObject{}
		if err := (&object.Tree{Entries: entries}).Encode(o); err != nil {
			t.Fatal(err)
		}
		h, _ := s.SetEncodedObject(o)
		return h
	}
	file := func(name, content string) object.TreeEntry {
		return object.TreeEntry{Name: name, Mode: filemode.Regular, Hash: blob(content)}
	}
	dir := func(name string, h plumbing.Hash) object.TreeEntry {
		return object.TreeEntry{Name: name, Mode: filemode.Dir, Hash: h}
	}
	shared := tree(file("s.txt", "shared"))
	a := tree(file("a.txt", "1"), file("gone.txt", "x"), dir("keep", shared), dir("swap", tree(file("in.txt", "i"))))
	b := tree(file("a.txt", "2"), dir("keep", shared), file("new.txt", "n"), file("swap", "now a file"),
		object.TreeEntry{Name: "x.sh", Mode: filemode.Executable, Hash: blob("1")})
	repo := &Repo{store: s}
	var got []string
	if err := diffTrees(repo.get, "", a, b, &got); err != nil {
		t.Fatal(err)
	}
	want := []string{"a.txt", "gone.txt", "new.txt", "swap", "swap/in.txt", "x.sh"}
	if !slices.Equal(got, want) {
		t.Errorf("diff = %q, want %q", got, want)
	}
}

func TestOpenPackRejectsGarbage(t *testing.T) {
	pack, _ := partialPack(t)
	for _, p := range [][]byte{nil, []byte("PACK"), []byte("not a pack at all"), pack[:len(pack)-5]} {
		if _, err := OpenPack(p); err == nil {
			t.Errorf("OpenPack(%d bytes) accepted garbage", len(p))
		}
	}
}

// FuzzOpenPack: a snapshot comes back from the Object Store, so OpenPack
// must fail cleanly, never panic, on any bytes.
func FuzzOpenPack(f *testing.F) {
	pack, _ := partialPack(f)
	f.Add(pack)
	f.Add(pack[:40])
	f.Add([]byte("PACK\x00\x00\x00\x02\x00\x00\x00\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		repo, err := OpenPack(data)
		if err == nil && repo == nil {
			t.Fatal("nil repo without error")
		}
	})
}

// FuzzSplitPath: whatever it accepts is a clean relative path that cannot
// leave the tree or touch .git.
func FuzzSplitPath(f *testing.F) {
	for _, s := range []string{backlogPath, "a/b/c", "../x", "a//b", ".git/config", "/abs", "x/", "A/.GIT/y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		elems, err := splitPath(p)
		if err != nil {
			return
		}
		if strings.Join(elems, "/") != p {
			t.Fatalf("split %q into %q", p, elems)
		}
		for _, e := range elems {
			if e == "" || e == "." || e == ".." || strings.EqualFold(e, ".git") || strings.ContainsAny(e, "/\x00") {
				t.Fatalf("accepted %q with element %q", p, e)
			}
		}
	})
}

func TestPackObjectsKeepsOrder(t *testing.T) {
	pack, commit := partialPack(t)
	repo, err := OpenPack(pack)
	if err != nil {
		t.Fatal(err)
	}
	c, err := repo.Commit(commit, "docs/a/b.txt", []byte("v2\n"), meta("m"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := packObjects(c.Objects)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(p, []byte("PACK\x00\x00\x00\x02\x00\x00\x00\x05")) {
		t.Errorf("pack header %q, want version 2 with 5 objects", p[:12])
	}
}
