package gitx

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
)

// Repo is an in-memory object store holding a snapshot: usually a commit,
// the trees on one path and one blob, not a whole repository. It is never
// modified after OpenPack, so its methods are safe for concurrent use.
type Repo struct {
	store *memory.Storage
}

// OpenPack loads the objects of a packfile (a Snapshot.Pack) into a Repo.
func OpenPack(pack []byte) (*Repo, error) {
	if len(pack) == 0 {
		return nil, errors.New("gitx: empty pack")
	}
	s := memory.NewStorage()
	if err := parsePack(s, pack); err != nil {
		return nil, fmt.Errorf("gitx: %w", err)
	}
	return &Repo{store: s}, nil
}

// ReadFile returns the content and blob hash of path in commit. It returns
// ErrFileNotFound when an element of the path is missing (or is a file where
// a directory is needed, or the last one is not a regular file), and
// ErrMissingObject when the snapshot lacks an object it would need.
func (r *Repo) ReadFile(commit plumbing.Hash, path string) (data []byte, blob plumbing.Hash, err error) {
	elems, err := splitPath(path)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	root, err := r.rootTree(commit)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	e, err := lookup(r.get, root, elems)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	if e == nil || !isRegular(e.Mode) {
		return nil, plumbing.ZeroHash, fmt.Errorf("%w: %s in %s", ErrFileNotFound, path, commit)
	}
	obj, err := r.get(e.Hash)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	data, err = readObject(obj)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	return data, e.Hash, nil
}

// CommitMeta is what a new commit says about itself. Author.Name and
// Author.When must be set (Commit is deterministic, so it does not read the
// clock); a zero Committer defaults to the Author. Message gets a final
// newline if it lacks one, as git itself writes messages.
type CommitMeta struct {
	Message           string
	Author, Committer object.Signature
}

// NewCommit is a commit built by Repo.Commit, ready for Push.
type NewCommit struct {
	// Hash of the commit object.
	Hash plumbing.Hash
	// Objects are exactly the objects the snapshot did not already have:
	// the blob (unless identical content was there), every tree on the
	// path and the commit. Push sends these and nothing else.
	Objects []plumbing.EncodedObject
	// ChangedPaths are the files that differ between the parent's tree and
	// the new one, sorted.
	ChangedPaths []string
}

// Commit builds a commit on parent in which path holds content, creating
// the file and any missing directories. Everything else is the parent's
// tree, shared by hash, so only the trees on the path need to be in the
// snapshot. The same inputs always give the same hash.
func (r *Repo) Commit(parent plumbing.Hash, path string, content []byte, meta CommitMeta) (*NewCommit, error) {
	elems, err := splitPath(path)
	if err != nil {
		return nil, err
	}
	if meta.Author.When.IsZero() || meta.Author.Name == "" {
		return nil, errors.New("gitx: commit author name and time are required")
	}
	if meta.Committer == (object.Signature{}) {
		meta.Committer = meta.Author
	}
	if !strings.HasSuffix(meta.Message, "\n") {
		meta.Message += "\n"
	}
	oldRoot, err := r.rootTree(parent)
	if err != nil {
		return nil, err
	}

	b := &builder{repo: r, created: map[plumbing.Hash]plumbing.EncodedObject{}}
	blob := &plumbing.MemoryObject{}
	blob.SetType(plumbing.BlobObject)
	if _, err := blob.Write(content); err != nil {
		return nil, err
	}
	b.add(blob)
	newRoot, err := b.put(oldRoot, elems, path, blob.Hash())
	if err != nil {
		return nil, err
	}

	c := &object.Commit{
		Author:       meta.Author,
		Committer:    meta.Committer,
		Message:      meta.Message,
		TreeHash:     newRoot,
		ParentHashes: []plumbing.Hash{parent},
	}
	obj := &plumbing.MemoryObject{}
	if err := c.Encode(obj); err != nil {
		return nil, fmt.Errorf("gitx: encoding commit: %w", err)
	}
	b.add(obj)

	var changed []string
	if err := diffTrees(b.get, "", oldRoot, newRoot, &changed); err != nil {
		return nil, err
	}
	return &NewCommit{Hash: obj.Hash(), Objects: b.objects, ChangedPaths: changed}, nil
}

// builder collects the objects of a commit under construction. Lookups see
// them over the snapshot, without modifying the Repo.
type builder struct {
	repo    *Repo
	created map[plumbing.Hash]plumbing.EncodedObject
	objects []plumbing.EncodedObject // new ones, in creation order: blob, trees bottom-up, commit
}

func (b *builder) add(o plumbing.EncodedObject) {
	h := o.Hash()
	if _, ok := b.created[h]; ok {
		return
	}
	b.created[h] = o
	if b.repo.store.HasEncodedObject(h) == nil {
		return // the server has it already: it came from there
	}
	b.objects = append(b.objects, o)
}

func (b *builder) get(h plumbing.Hash) (plumbing.EncodedObject, error) {
	if o, ok := b.created[h]; ok {
		return o, nil
	}
	return b.repo.get(h)
}

// put returns the hash of tree (zero: a new, empty directory) with
// elems set to blob, encoding every tree it changes.
func (b *builder) put(tree plumbing.Hash, elems []string, path string, blob plumbing.Hash) (plumbing.Hash, error) {
	var entries []object.TreeEntry
	if !tree.IsZero() {
		t, err := b.tree(tree)
		if err != nil {
			return plumbing.ZeroHash, err
		}
		entries = slices.Clone(t.Entries)
	}
	name := elems[0]
	i := slices.IndexFunc(entries, func(e object.TreeEntry) bool { return e.Name == name })
	var next object.TreeEntry
	if i >= 0 {
		next = entries[i]
	}
	if len(elems) == 1 {
		mode := filemode.Regular
		if i >= 0 {
			if !isRegular(next.Mode) {
				return plumbing.ZeroHash, fmt.Errorf("%w: %s is a %s, not a regular file", ErrInvalidPath, path, modeName(next.Mode))
			}
			mode = next.Mode // keep the executable bit
		}
		next = object.TreeEntry{Name: name, Mode: mode, Hash: blob}
	} else {
		sub := plumbing.ZeroHash
		if i >= 0 {
			if next.Mode != filemode.Dir {
				return plumbing.ZeroHash, fmt.Errorf("%w: %s: %s is a %s, not a directory", ErrInvalidPath, path, name, modeName(next.Mode))
			}
			sub = next.Hash
		}
		h, err := b.put(sub, elems[1:], path, blob)
		if err != nil {
			return plumbing.ZeroHash, err
		}
		next = object.TreeEntry{Name: name, Mode: filemode.Dir, Hash: h}
	}
	if i >= 0 {
		entries[i] = next
	} else {
		entries = append(entries, next)
	}
	sort.Sort(object.TreeEntrySorter(entries))
	obj := &plumbing.MemoryObject{}
	if err := (&object.Tree{Entries: entries}).Encode(obj); err != nil {
		return plumbing.ZeroHash, fmt.Errorf("gitx: encoding tree: %w", err)
	}
	b.add(obj)
	return obj.Hash(), nil
}

func (b *builder) tree(h plumbing.Hash) (*object.Tree, error) {
	return decodeTree(b.get, h)
}

// diffTrees appends to out every file path that differs between trees a
// and b (either may be zero: absent). Entries with equal hashes are skipped
// without being read, so only the changed spine of the trees must be in the
// store: that is what makes it work on a partial snapshot.
func diffTrees(get getter, prefix string, a, b plumbing.Hash, out *[]string) error {
	if a == b {
		return nil
	}
	var ea, eb []object.TreeEntry
	for _, side := range []struct {
		h   plumbing.Hash
		dst *[]object.TreeEntry
	}{{a, &ea}, {b, &eb}} {
		if side.h.IsZero() {
			continue
		}
		t, err := decodeTree(get, side.h)
		if err != nil {
			return err
		}
		*side.dst = t.Entries
	}
	names := map[string]bool{}
	for _, e := range ea {
		names[e.Name] = true
	}
	for _, e := range eb {
		names[e.Name] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, name := range sorted {
		x, y := findEntry(ea, name), findEntry(eb, name)
		if x != nil && y != nil && x.Hash == y.Hash && x.Mode == y.Mode {
			continue
		}
		p := name
		if prefix != "" {
			p = prefix + "/" + name
		}
		// A directory on either side contributes its files (against
		// nothing, if the other side is a file or absent); a file on
		// either side contributes its own path, once.
		var dirA, dirB plumbing.Hash
		file := false
		if x != nil {
			if x.Mode == filemode.Dir {
				dirA = x.Hash
			} else {
				file = true
			}
		}
		if y != nil {
			if y.Mode == filemode.Dir {
				dirB = y.Hash
			} else {
				file = true
			}
		}
		if file {
			*out = append(*out, p)
		}
		if !dirA.IsZero() || !dirB.IsZero() {
			if err := diffTrees(get, p, dirA, dirB, out); err != nil {
				return err
			}
		}
	}
	if prefix == "" {
		sort.Strings(*out)
	}
	return nil
}

// getter finds an object by hash or fails with ErrMissingObject.
type getter func(plumbing.Hash) (plumbing.EncodedObject, error)

func (r *Repo) get(h plumbing.Hash) (plumbing.EncodedObject, error) {
	o, err := r.store.EncodedObject(plumbing.AnyObject, h)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrMissingObject, h)
	}
	return o, nil
}

// rootTree is the tree hash of a commit in the snapshot.
func (r *Repo) rootTree(commit plumbing.Hash) (plumbing.Hash, error) {
	o, err := r.get(commit)
	if err != nil {
		return plumbing.ZeroHash, err
	}
	if o.Type() != plumbing.CommitObject {
		return plumbing.ZeroHash, fmt.Errorf("gitx: %s is a %s, not a commit", commit, o.Type())
	}
	c, err := object.DecodeCommit(r.store, o)
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("gitx: decoding commit %s: %w", commit, err)
	}
	return c.TreeHash, nil
}

// lookup walks elems from tree root and returns the last entry, or nil when
// the path stops before it (a missing name, or a file where a directory is
// needed).
func lookup(get getter, root plumbing.Hash, elems []string) (*object.TreeEntry, error) {
	cur := root
	for i, name := range elems {
		t, err := decodeTree(get, cur)
		if err != nil {
			return nil, err
		}
		e := findEntry(t.Entries, name)
		if e == nil {
			return nil, nil
		}
		if i == len(elems)-1 {
			return e, nil
		}
		if e.Mode != filemode.Dir {
			return nil, nil
		}
		cur = e.Hash
	}
	return nil, nil
}

func decodeTree(get getter, h plumbing.Hash) (*object.Tree, error) {
	o, err := get(h)
	if err != nil {
		return nil, err
	}
	if o.Type() != plumbing.TreeObject {
		return nil, fmt.Errorf("gitx: %s is a %s, not a tree", h, o.Type())
	}
	t := &object.Tree{}
	if err := t.Decode(o); err != nil {
		return nil, fmt.Errorf("gitx: decoding tree %s: %w", h, err)
	}
	return t, nil
}

func readObject(o plumbing.EncodedObject) ([]byte, error) {
	rd, err := o.Reader()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return io.ReadAll(rd)
}

func findEntry(entries []object.TreeEntry, name string) *object.TreeEntry {
	for i := range entries {
		if entries[i].Name == name {
			return &entries[i]
		}
	}
	return nil
}

// isRegular: a blob that is file content (not a symlink or a submodule).
func isRegular(m filemode.FileMode) bool {
	return m == filemode.Regular || m == filemode.Executable || m == filemode.Deprecated
}

func modeName(m filemode.FileMode) string {
	switch m {
	case filemode.Dir:
		return "directory"
	case filemode.Symlink:
		return "symlink"
	case filemode.Submodule:
		return "submodule"
	}
	return "file"
}

// splitPath checks a repository-relative file path and splits it. It
// refuses what git would refuse or what could escape the tree.
func splitPath(path string) ([]string, error) {
	if path == "" || strings.HasPrefix(path, "/") || strings.HasSuffix(path, "/") || strings.ContainsRune(path, 0) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidPath, path)
	}
	elems := strings.Split(path, "/")
	for _, e := range elems {
		if e == "" || e == "." || e == ".." || strings.EqualFold(e, ".git") {
			return nil, fmt.Errorf("%w: %q", ErrInvalidPath, path)
		}
	}
	return elems, nil
}

// branchRef is the full ref name of a branch, validated.
func branchRef(branch string) (plumbing.ReferenceName, error) {
	if strings.HasPrefix(branch, "refs/") {
		return "", fmt.Errorf("%w: %q: give the short name, not a ref", ErrInvalidBranch, branch)
	}
	ref := plumbing.NewBranchReferenceName(branch)
	if err := ref.Validate(); err != nil {
		return "", fmt.Errorf("%w: %q", ErrInvalidBranch, branch)
	}
	return ref, nil
}
