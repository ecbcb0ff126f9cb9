package gitx

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/idxfile"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
)

// spillAt is the size above which an answer's pack goes to a temporary
// file instead of memory. The answers of minimal and blob-none fetches are
// kilobytes; a shallow fetch of a large repository is the whole tree (the
// benchmark's large repository: 162 MB), which parsed into memory took
// over a gigabyte.
var spillAt = 16 << 20

// errSpill marks a failure to keep a large pack on disk (no room in the
// temporary directory, say): not the server's refusal, nor the network.
var errSpill = errors.New("cannot keep a large pack in the temporary directory")

// readPack reads a pack: into memory up to spillAt, into a temporary file
// (os.TempDir) beyond. The caller owns the file (closeSpilled).
func readPack(r io.Reader) (pack []byte, file *os.File, err error) {
	var buf bytes.Buffer
	n, err := io.CopyN(&buf, r, int64(spillAt)+1)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	if n <= int64(spillAt) {
		return buf.Bytes(), nil, nil
	}
	file, err = os.CreateTemp("", "leviathan-pack-*")
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errSpill, err)
	}
	// Unlinked at once: the open file is all that needs it, and nothing is
	// left behind if the process dies.
	_ = os.Remove(file.Name())
	if _, err := buf.WriteTo(file); err != nil {
		file.Close()
		return nil, nil, fmt.Errorf("%w: %w", errSpill, err)
	}
	buf = bytes.Buffer{}
	if _, err := io.Copy(writerOnly{file}, r); err != nil {
		file.Close()
		var we *writeError
		if errors.As(err, &we) {
			return nil, nil, fmt.Errorf("%w: %w", errSpill, we.err)
		}
		return nil, nil, err
	}
	return nil, file, nil
}

// writerOnly tells the file's write errors from the reader's in io.Copy
// (and hides ReadFrom, so that the copy goes through Write).
type writerOnly struct{ f *os.File }

type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

func (w writerOnly) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		return n, &writeError{err}
	}
	return n, nil
}

// spilledPack is a pack in a temporary file with its index, read object
// by object.
type spilledPack struct {
	file *os.File
	pack *packfile.Packfile
}

// indexSpilled indexes the pack in file (checking every object's hash, as
// parsing into memory does) and opens it for reads by hash.
func indexSpilled(file *os.File) (*spilledPack, error) {
	if _, err := file.Seek(0, io.SeekStart); err != nil {
		file.Close()
		return nil, err
	}
	w := new(idxfile.Writer)
	p, err := packfile.NewParser(packfile.NewScanner(file), w)
	if err == nil {
		_, err = p.Parse()
	}
	var idx *idxfile.MemoryIndex
	if err == nil {
		idx, err = w.Index()
	}
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("reading pack: %w", err)
	}
	// No filesystem: objects come back as memory objects, which outlive
	// the file.
	return &spilledPack{file: file, pack: packfile.NewPackfile(idx, nil, lockless{file}, 0)}, nil
}

// has reports whether the snapshot holds object h, copying it into memory
// from a spilled pack if it is there (the objects on the path are few and
// small).
func (f *fetcher) has(h plumbing.Hash) bool {
	if f.store.HasEncodedObject(h) == nil {
		return true
	}
	for _, sp := range f.spilled {
		obj, err := sp.pack.Get(h)
		if err != nil {
			continue
		}
		if _, err := f.store.SetEncodedObject(obj); err == nil {
			return true
		}
	}
	return false
}

// closeSpilled closes the spilled packs (their files are already
// unlinked).
func (f *fetcher) closeSpilled() {
	for _, sp := range f.spilled {
		_ = sp.pack.Close()
		_ = sp.file.Close()
		_ = os.Remove(sp.file.Name()) // where an open file cannot be unlinked
	}
	f.spilled = nil
}

// lockless is an *os.File as the billy.File that go-git's Packfile reads
// from; nothing else opens the file, so locking is not needed.
type lockless struct{ *os.File }

func (lockless) Lock() error   { return nil }
func (lockless) Unlock() error { return nil }
