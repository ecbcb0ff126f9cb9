package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// genVersion names the generator. Bump it whenever what a spec produces
// changes: the cache of another version is then deleted and regenerated.
const genVersion = 1

// benchOwner owns the generated repositories on the forge.
const benchOwner = "bench"

// repoSpec describes a generated repository: Top top-level directories of
// Sub subdirectories of Files files each, so the root tree stays small, as
// in real repositories, however many files there are. File contents are
// random (incompressible) bytes of MinSize to MaxSize bytes.
type repoSpec struct {
	Name             string
	Top, Sub, Files  int
	MinSize, MaxSize int
	Seed             uint64
	// MinDepth1Pack is the least size the depth-1 pack must have: a
	// generator that makes less has a bug.
	MinDepth1Pack int64
}

// specs are the two repositories of the benchmark.
var specs = []repoSpec{
	// 100 files in 20 directories.
	{Name: "small", Top: 4, Sub: 5, Files: 5, MinSize: 2800, MaxSize: 3600, Seed: 1},
	// 50,000 files in 2,000 leaf directories (40 × 50), ~3.2 KB each:
	// a depth-1 pack of about 160 MB, since nothing compresses.
	{Name: "large", Top: 40, Sub: 50, Files: 25, MinSize: 2800, MaxSize: 3600, Seed: 2, MinDepth1Pack: 150_000_000},
}

func specByName(name string) *repoSpec {
	for i := range specs {
		if specs[i].Name == name {
			return &specs[i]
		}
	}
	return nil
}

// repoMeta is what generation measured, stored beside the repository. Its
// presence marks the repository as complete.
type repoMeta struct {
	GenVersion      int     `json:"gen_version"`
	Files           int     `json:"files"`
	Dirs            int     `json:"dirs"`
	Depth1PackBytes int64   `json:"depth1_pack_bytes"`
	GenerateSeconds float64 `json:"generate_seconds"`
	Head            string  `json:"head"`
}

// ensureRepos returns the forge directory (cacheDir/gen-v<N>, laid out as
// localforge's Dir: repos/<owner>/<name>.git) holding every repository of
// specs, generating those missing, and their metadata.
func ensureRepos(ctx context.Context, cacheDir string, specs []repoSpec, out io.Writer) (string, map[string]repoMeta, error) {
	current := fmt.Sprintf("gen-v%d", genVersion)
	dir := filepath.Join(cacheDir, current)
	// Other generator versions are stale: drop them (they are large).
	stale, _ := filepath.Glob(filepath.Join(cacheDir, "gen-v*"))
	for _, s := range stale {
		if filepath.Base(s) != current {
			fmt.Fprintf(out, "removing stale cache %s\n", s)
			if err := os.RemoveAll(s); err != nil {
				return "", nil, err
			}
		}
	}
	metas := map[string]repoMeta{}
	for _, spec := range specs {
		metaPath := filepath.Join(dir, spec.Name+".json")
		bare := filepath.Join(dir, "repos", benchOwner, spec.Name+".git")
		if m, err := readMeta(metaPath); err == nil {
			if _, err := os.Stat(bare); err == nil {
				fmt.Fprintf(out, "%s repo: cached (%s)\n", spec.Name, bare)
				metas[spec.Name] = m
				continue
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", nil, err
		}
		m, err := generate(ctx, spec, bare, out)
		if err != nil {
			return "", nil, fmt.Errorf("generating %s: %w", spec.Name, err)
		}
		b, _ := json.MarshalIndent(m, "", "  ")
		if err := os.WriteFile(metaPath, append(b, '\n'), 0o644); err != nil {
			return "", nil, err
		}
		metas[spec.Name] = m
	}
	return dir, metas, nil
}

func readMeta(path string) (repoMeta, error) {
	var m repoMeta
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Fixed commit identity and times: the same spec always gives the same
// commit ids.
const (
	genIdent = "Bench Generator <bench@example.com>"
	genTime1 = 1700000000
	genTime2 = 1700003600
)

// generate builds the bare repository of spec at bare with git
// fast-import: a first commit with every file, a second one that changes
// the README and the backlog (so there is history that a depth-1 fetch
// leaves behind). It streams; nothing is held in memory.
func generate(ctx context.Context, spec repoSpec, bare string, out io.Writer) (repoMeta, error) {
	start := time.Now()
	total := spec.Top * spec.Sub * spec.Files
	fmt.Fprintf(out, "%s repo: generating %d files in %d directories (git fast-import) ...\n", spec.Name, total, spec.Top*spec.Sub)
	if err := os.MkdirAll(filepath.Dir(bare), 0o755); err != nil {
		return repoMeta{}, err
	}
	// Built beside its final place and renamed in: an interrupted run
	// leaves no half-made repository behind that looks complete.
	tmp := filepath.Join(filepath.Dir(bare), ".tmp-"+spec.Name)
	if err := os.RemoveAll(tmp); err != nil {
		return repoMeta{}, err
	}
	defer os.RemoveAll(tmp)
	if _, err := gitOutput(ctx, "", nil, nil, "init", "--bare", "--quiet", "--initial-branch=main", tmp); err != nil {
		return repoMeta{}, err
	}

	cmd := gitCmd(ctx, tmp, nil, "fast-import", "--quiet")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return repoMeta{}, err
	}
	if err := cmd.Start(); err != nil {
		return repoMeta{}, err
	}
	w := bufio.NewWriterSize(stdin, 1<<20)
	werr := writeStream(w, spec, func(done int) {
		if done%5000 == 0 || done == total {
			fmt.Fprintf(out, "  %s: %d/%d files (%.1f s)\n", spec.Name, done, total, time.Since(start).Seconds())
		}
	})
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return repoMeta{}, fmt.Errorf("git fast-import: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if werr != nil {
		return repoMeta{}, werr
	}

	head, err := gitOutput(ctx, tmp, nil, nil, "rev-parse", "refs/heads/main")
	if err != nil {
		return repoMeta{}, err
	}
	fmt.Fprintf(out, "  %s: measuring the depth-1 pack ...\n", spec.Name)
	packBytes, err := depth1PackSize(ctx, tmp)
	if err != nil {
		return repoMeta{}, err
	}
	if packBytes < spec.MinDepth1Pack {
		return repoMeta{}, fmt.Errorf("the depth-1 pack has %d bytes, want at least %d", packBytes, spec.MinDepth1Pack)
	}
	if err := os.Rename(tmp, bare); err != nil {
		return repoMeta{}, err
	}
	m := repoMeta{
		GenVersion: genVersion, Files: total + 2, Dirs: spec.Top*spec.Sub + spec.Top + 1,
		Depth1PackBytes: packBytes, GenerateSeconds: time.Since(start).Seconds(),
		Head: strings.TrimSpace(string(head)),
	}
	fmt.Fprintf(out, "%s repo: generated in %.1f s, depth-1 pack %s\n", spec.Name, m.GenerateSeconds, humanBytes(packBytes))
	return m, nil
}

// writeStream writes the fast-import stream of spec to w and flushes it,
// calling progress after every file of the first commit. Write errors stick
// in w, so the flush reports the first one.
func writeStream(w *bufio.Writer, spec repoSpec, progress func(done int)) error {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], spec.Seed)
	src := rand.NewChaCha8(seed)
	rng := rand.New(src)
	buf := make([]byte, spec.MaxSize)

	commitHeader(w, genTime1, "Initial import", "")
	inline(w, "README.md", []byte(readme(spec, 1)))
	inline(w, ".leviathan/backlog.yaml", []byte(backlog(1)))
	done := 0
	for t := range spec.Top {
		for s := range spec.Sub {
			for f := range spec.Files {
				data := buf[:spec.MinSize+rng.IntN(spec.MaxSize-spec.MinSize+1)]
				_, _ = src.Read(data) // never fails
				inline(w, fmt.Sprintf("area-%02d/mod-%02d/file-%03d.bin", t, s, f), data)
				done++
				progress(done)
			}
		}
	}
	commitHeader(w, genTime2, "Plan the next tasks", ":1")
	inline(w, "README.md", []byte(readme(spec, 2)))
	inline(w, ".leviathan/backlog.yaml", []byte(backlog(2)))
	fmt.Fprintf(w, "\ndone\n")
	return w.Flush()
}

func commitHeader(w *bufio.Writer, when int64, msg, from string) {
	fmt.Fprintf(w, "commit refs/heads/main\n")
	if from == "" {
		fmt.Fprintf(w, "mark :1\n")
	}
	fmt.Fprintf(w, "author %s %d +0000\ncommitter %s %d +0000\n", genIdent, when, genIdent, when)
	fmt.Fprintf(w, "data %d\n%s\n", len(msg)+1, msg)
	if from != "" {
		fmt.Fprintf(w, "from %s\n", from)
	}
}

func inline(w *bufio.Writer, path string, data []byte) {
	fmt.Fprintf(w, "M 100644 inline %s\ndata %d\n", path, len(data))
	w.Write(data)
	w.WriteByte('\n')
}

func readme(spec repoSpec, rev int) string {
	return fmt.Sprintf("# Benchmark repository %q (revision %d)\n\nGenerated by gitbench, generator version %d: %d top-level directories of %d subdirectories of %d random files.\n",
		spec.Name, rev, genVersion, spec.Top, spec.Sub, spec.Files)
}

// backlog is the .leviathan/backlog.yaml of revision rev: a few tasks in
// the format of DESIGN.md §6, with a comment that the edit must keep.
func backlog(rev int) string {
	var b strings.Builder
	b.WriteString("# Backlog of the benchmark repository.\nmetadata:\n  project: bench\n\ntasks:\n")
	n := 3
	if rev > 1 {
		n = 5
	}
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "  - id: BENCH-%03d\n    title: \"Seed task %d\"\n    priority: medium\n    allowed_paths:\n      - area-%02d/\n    acceptance_criteria:\n      - The change is reviewed\n", i, i, i)
	}
	return b.String()
}

// depth1PackSize is the size of a pack of every object of the tip commit:
// what a depth-1 clone without filter downloads, framing aside.
func depth1PackSize(ctx context.Context, bare string) (int64, error) {
	objs, err := gitOutput(ctx, bare, nil, nil, "rev-list", "--objects", "--no-object-names", "--max-count=1", "refs/heads/main")
	if err != nil {
		return 0, err
	}
	var n countWriter
	cmd := gitCmd(ctx, bare, nil, "pack-objects", "--stdout", "-q")
	cmd.Stdin = bytes.NewReader(objs)
	cmd.Stdout = &n
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("git pack-objects: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return int64(n), nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) {
	*c += countWriter(len(p))
	return len(p), nil
}
