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

// tempFile is a temporary file, unlinked at once where the system allows
// it (nothing is left behind if the process dies), else removed on close.
type tempFile struct {
	*os.File
	linked bool
}

func newTempFile() (*tempFile, error) {
	f, err := os.CreateTemp("", "leviathan-pack-*")
	if err != nil {
		return nil, err
	}
	return &tempFile{File: f, linked: os.Remove(f.Name()) != nil}, nil
}

func (t *tempFile) close() {
	_ = t.File.Close()
	if t.linked {
		_ = os.Remove(t.Name())
	}
}

// Lock and Unlock make it the billy.File go-git's Packfile reads from;
// nothing else opens the file.
func (*tempFile) Lock() error   { return nil }
func (*tempFile) Unlock() error { return nil }

// readPack reads a pack: into memory up to spillAt, into a temporary file
// (os.TempDir) beyond. The caller owns the file (indexSpilled).
func readPack(r io.Reader) (pack []byte, file *tempFile, err error) {
	var buf bytes.Buffer
	n, err := io.CopyN(&buf, r, int64(spillAt)+1)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	if n <= int64(spillAt) {
		return buf.Bytes(), nil, nil
	}
	if file, err = newTempFile(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errSpill, err)
	}
	if _, err := buf.WriteTo(file); err != nil {
		file.close()
		return nil, nil, fmt.Errorf("%w: %w", errSpill, err)
	}
	buf = bytes.Buffer{}
	if _, err := io.Copy(writerOnly{file.File}, r); err != nil {
		file.close()
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
	file *tempFile
	pack *packfile.Packfile
}

// indexSpilled indexes the pack in file (checking every object's hash, as
// parsing into memory does) and opens it for reads by hash. It closes the
// file if it fails.
func indexSpilled(file *tempFile) (*spilledPack, error) {
	_, err := file.Seek(0, io.SeekStart)
	w := new(idxfile.Writer)
	var p *packfile.Parser
	if err == nil {
		p, err = packfile.NewParser(packfile.NewScanner(file.File), w)
	}
	if err == nil {
		_, err = p.Parse()
	}
	var idx *idxfile.MemoryIndex
	if err == nil {
		idx, err = w.Index()
	}
	if err != nil {
		file.close()
		return nil, fmt.Errorf("reading pack: %w", err)
	}
	// No filesystem: objects come back as memory objects, which outlive
	// the file.
	return &spilledPack{file: file, pack: packfile.NewPackfile(idx, nil, file, 0)}, nil
}

// has reports whether the snapshot holds object h, copying it into memory
// from a spilled pack if it is there (the objects on the path are few and
// small). An error is a failure to read a spilled pack, not a missing
// object.
func (f *fetcher) has(h plumbing.Hash) (bool, error) {
	if f.store.HasEncodedObject(h) == nil {
		return true, nil
	}
	for _, sp := range f.spilled {
		obj, err := sp.pack.Get(h)
		if errors.Is(err, plumbing.ErrObjectNotFound) {
			continue
		}
		if err == nil {
			_, err = f.store.SetEncodedObject(obj)
		}
		if err != nil {
			return false, fmt.Errorf("gitx: fetch %s: reading %s from a spilled pack: %w", f.remote.displayURL(), h, err)
		}
		return true, nil
	}
	return false, nil
}

// closeSpilled closes the spilled packs and their files.
func (f *fetcher) closeSpilled() {
	for _, sp := range f.spilled {
		_ = sp.pack.Close() // closes the file too
		sp.file.close()
	}
}
