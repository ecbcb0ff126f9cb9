package gitx

import (
	"bytes"
	"compress/zlib"
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/storage/memory"
)

// zlibWriters keep their deflate state between packs. A new zlib writer
// allocates and clears hundreds of kilobytes of it on its first write:
// go-git's pack encoder, which makes one per pack, spent more CPU on that
// than on the rest of a snapshot or a push pack (15% of clone's CPU, 12%
// of push's, with the collections those allocations caused besides).
// BestSpeed: the objects are a few kilobytes, and its state resets cheaply.
var zlibWriters = sync.Pool{New: func() any {
	w, _ := zlib.NewWriterLevel(nil, zlib.BestSpeed) // a valid level: no error
	return w
}}

// encodePack writes the objects hashes of s, in that order, as one pack
// (version 2) without deltas: the packs we build are a handful of small
// objects. An object named twice is written once: git verify-pack calls
// a pack that holds an object twice bad.
func encodePack(s *memory.Storage, hashes []plumbing.Hash) ([]byte, error) {
	seen := make(map[plumbing.Hash]bool, len(hashes))
	hashes = slices.DeleteFunc(slices.Clone(hashes), func(h plumbing.Hash) bool {
		dup := seen[h]
		seen[h] = true
		return dup
	})
	if uint64(len(hashes)) > math.MaxUint32 {
		return nil, fmt.Errorf("gitx: encoding pack: %d objects", len(hashes))
	}
	var buf bytes.Buffer
	sum := sha1.New() // the trailer: SHA-1 of everything before it
	w := io.MultiWriter(&buf, sum)
	var hdr [12]byte
	copy(hdr[:], "PACK")
	binary.BigEndian.PutUint32(hdr[4:], 2)
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(hashes)))
	_, _ = w.Write(hdr[:]) // a bytes.Buffer and a hash: no error
	zw := zlibWriters.Get().(*zlib.Writer)
	defer func() {
		zw.Reset(io.Discard) // not to keep this pack reachable from the pool
		zlibWriters.Put(zw)
	}()
	for _, h := range hashes {
		if err := writeObject(w, zw, s, h); err != nil {
			return nil, fmt.Errorf("gitx: encoding pack: %w", err)
		}
	}
	return sum.Sum(buf.Bytes()), nil
}

// writeObject writes the pack entry of object h: its type and size, then
// its content deflated.
func writeObject(w io.Writer, zw *zlib.Writer, s *memory.Storage, h plumbing.Hash) error {
	o, err := s.EncodedObject(plumbing.AnyObject, h)
	if err != nil {
		return fmt.Errorf("object %s: %w", h, err)
	}
	t, size := o.Type(), o.Size()
	switch t {
	case plumbing.CommitObject, plumbing.TreeObject, plumbing.BlobObject, plumbing.TagObject:
	default:
		return fmt.Errorf("object %s: cannot pack a %s", h, t)
	}
	if size < 0 {
		return fmt.Errorf("object %s: size %d", h, size)
	}
	_, _ = w.Write(entryHeader(t, uint64(size)))
	r, err := o.Reader()
	if err != nil {
		return fmt.Errorf("object %s: %w", h, err)
	}
	defer r.Close()
	zw.Reset(w)
	n, err := io.Copy(zw, r)
	if err == nil {
		err = zw.Close()
	}
	if err == nil && n != size {
		err = fmt.Errorf("%d bytes, %d announced", n, size)
	}
	if err != nil {
		return fmt.Errorf("object %s: %w", h, err)
	}
	return nil
}

// entryHeader is a pack entry's header: the type in bits 4–6 of the first
// byte, the size in its low four bits and then seven bits a byte, least
// significant first; a set high bit says another byte follows.
func entryHeader(t plumbing.ObjectType, size uint64) []byte {
	b := []byte{byte(t)<<4 | byte(size&0x0f)}
	for size >>= 4; size > 0; size >>= 7 {
		b[len(b)-1] |= 0x80
		b = append(b, byte(size&0x7f))
	}
	return b
}
