package gitx

import (
	"bytes"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
)

func TestEntryHeader(t *testing.T) {
	for _, tc := range []struct {
		t    plumbing.ObjectType
		size uint64
		want []byte
	}{
		{plumbing.BlobObject, 0, []byte{0x30}},
		{plumbing.BlobObject, 15, []byte{0x3f}},
		{plumbing.BlobObject, 16, []byte{0xb0, 0x01}},
		{plumbing.CommitObject, 2047, []byte{0x9f, 0x7f}},
		{plumbing.TreeObject, 2048, []byte{0xa0, 0x80, 0x01}},
		{plumbing.TagObject, 1 << 40, []byte{0xc0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02}},
	} {
		if got := entryHeader(tc.t, tc.size); !bytes.Equal(got, tc.want) {
			t.Errorf("entryHeader(%s, %d) = % x, want % x", tc.t, tc.size, got, tc.want)
		}
	}
}

// TestEncodePack packs objects of every type and of sizes around each
// length of the entry header, and checks the pack with the git CLI (which
// indexes it, verifying every object and the trailer) and by reading it
// back. Packs encoded at once share the pool's writers: each must come out
// the same.
func TestEncodePack(t *testing.T) {
	s := memory.NewStorage()
	var hashes []plumbing.Hash
	put := func(typ plumbing.ObjectType, content []byte) plumbing.Hash {
		o := s.NewEncodedObject()
		o.SetType(typ)
		w, err := o.Writer()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(content); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		h, err := s.SetEncodedObject(o)
		if err != nil {
			t.Fatal(err)
		}
		hashes = append(hashes, h)
		return h
	}
	encode := func(typ plumbing.ObjectType, v interface {
		Encode(plumbing.EncodedObject) error
	}) plumbing.Hash {
		o := &plumbing.MemoryObject{}
		o.SetType(typ)
		if err := v.Encode(o); err != nil {
			t.Fatal(err)
		}
		r, _ := o.Reader()
		b, _ := io.ReadAll(r)
		return put(typ, b)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var blobs []plumbing.Hash
	for _, n := range []int{0, 1, 15, 16, 2047, 2048, 300_000} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256)) // incompressible
		}
		blobs = append(blobs, put(plumbing.BlobObject, b))
	}
	blobs = append(blobs, put(plumbing.BlobObject, bytes.Repeat([]byte("tasks: []\n"), 5000)))
	var entries []object.TreeEntry
	for i, h := range blobs {
		entries = append(entries, object.TreeEntry{Name: string(rune('a' + i)), Mode: filemode.Regular, Hash: h})
	}
	tree := encode(plumbing.TreeObject, &object.Tree{Entries: entries})
	sig := meta("").Author
	commit := encode(plumbing.CommitObject, &object.Commit{Author: sig, Committer: sig, Message: "m\n", TreeHash: tree})
	encode(plumbing.TagObject, &object.Tag{Name: "v1", Tagger: sig, Message: "t\n", TargetType: plumbing.CommitObject, Target: commit})

	// Named twice, written once.
	pack, err := encodePack(s, append(slices.Clone(hashes), hashes[0], hashes[3]))
	if err != nil {
		t.Fatal(err)
	}
	objs := packContents(t, pack)
	if len(objs) != len(hashes) {
		t.Fatalf("git sees %d objects in the pack, want %d", len(objs), len(hashes))
	}
	back := memory.NewStorage()
	if err := parsePack(back, pack); err != nil {
		t.Fatal(err)
	}
	for _, h := range hashes {
		want, _ := s.EncodedObject(plumbing.AnyObject, h)
		if objs[h.String()] != want.Type().String() {
			t.Errorf("git: %s is a %q, want %s", h, objs[h.String()], want.Type())
		}
		got, err := back.EncodedObject(plumbing.AnyObject, h)
		if err != nil {
			t.Errorf("read back: %s: %v", h, err)
			continue
		}
		if got.Type() != want.Type() || got.Size() != want.Size() {
			t.Errorf("read back: %s is a %s of %d bytes, want a %s of %d", h, got.Type(), got.Size(), want.Type(), want.Size())
		}
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			again, err := encodePack(s, hashes)
			if err != nil || !bytes.Equal(again, pack) {
				t.Errorf("encoding again, at once with others: %d bytes, %v; want the same %d bytes", len(again), err, len(pack))
			}
		})
	}
	wg.Wait()

	if _, err := encodePack(s, []plumbing.Hash{plumbing.NewHash("0123456789012345678901234567890123456789")}); err == nil {
		t.Error("a pack of an object the storage lacks: no error")
	}
}
