package gitx

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// requestCounter counts the git HTTP requests a forge serves.
type requestCounter struct{ gets, posts atomic.Int64 }

func (c *requestCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			c.posts.Add(1)
		} else {
			c.gets.Add(1)
		}
		next.ServeHTTP(w, r)
	})
}

func (c *requestCounter) reset() { c.gets.Store(0); c.posts.Store(0) }

// wantObjects is the set of objects (hash → type) each strategy must fetch
// for file, computed with the git CLI.
func wantObjects(t *testing.T, dir string, strategy Strategy, file string) map[string]string {
	t.Helper()
	want := map[string]string{
		git(t, dir, "rev-parse", "main"):        "commit",
		git(t, dir, "rev-parse", "main^{tree}"): "tree",
		git(t, dir, "rev-parse", "main:"+file):  "blob",
	}
	switch strategy {
	case StrategyMinimal:
		for d := path.Dir(file); d != "."; d = path.Dir(d) {
			want[git(t, dir, "rev-parse", "main:"+d)] = "tree"
		}
		// The file's own directory comes with its entries (one request
		// instead of two); files of 1 MiB or more are left out.
		if d := path.Dir(file); d != "." {
			for _, line := range strings.Split(git(t, dir, "ls-tree", "-l", "main:"+d), "\n") {
				f := strings.Fields(line) // mode type hash size name
				if size, _ := strconv.Atoi(f[3]); f[1] == "tree" || f[1] == "blob" && size < 1<<20 {
					want[f[2]] = f[1]
				}
			}
		}
	case StrategyBlobNone, StrategyShallow:
		// They fetch more, but the snapshot keeps only the path.
		for d := path.Dir(file); d != "."; d = path.Dir(d) {
			want[git(t, dir, "rev-parse", "main:"+d)] = "tree"
		}
	}
	return want
}

func TestFetchStrategies(t *testing.T) {
	var reqs requestCounter
	tf := startForge(t, reqs.wrap)
	files := bigRepo()
	r, dir := tf.repo(t, "big", files)
	tip := revParse(t, dir, "main")

	bytesBy := map[Strategy]int64{}
	for _, tc := range []struct {
		force, want Strategy
		file        string
		posts       int64 // upload-pack requests
	}{
		{StrategyMinimal, StrategyMinimal, backlogPath, 2},
		{StrategyMinimal, StrategyMinimal, "dir07/sub1/deep/config.yaml", 4},
		{StrategyMinimal, StrategyMinimal, "dir03/sub0/file04.txt", 3},
		{StrategyMinimal, StrategyMinimal, "README.md", 2},
		{StrategyBlobNone, StrategyBlobNone, backlogPath, 2},
		{StrategyBlobNone, StrategyBlobNone, "dir07/sub1/deep/config.yaml", 2},
		{StrategyShallow, StrategyShallow, backlogPath, 1},
		{StrategyShallow, StrategyShallow, "dir07/sub1/deep/config.yaml", 1},
		{"", StrategyMinimal, backlogPath, 2},
	} {
		t.Run(string(tc.force)+"/"+tc.file, func(t *testing.T) {
			reqs.reset()
			snap, err := Fetch(context.Background(), r, "main", tc.file, FetchOptions{Strategy: tc.force})
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if snap.Commit != tip || snap.Strategy != tc.want {
				t.Fatalf("snapshot of %s by %s, want %s by %s", snap.Commit, snap.Strategy, tip, tc.want)
			}
			if got := reqs.posts.Load(); got != tc.posts || reqs.gets.Load() != 1 {
				t.Errorf("requests: %d GET + %d POST, want 1 + %d", reqs.gets.Load(), got, tc.posts)
			}

			repo, err := OpenPack(snap.Pack)
			if err != nil {
				t.Fatalf("OpenPack: %v", err)
			}
			data, blob, err := repo.ReadFile(snap.Commit, tc.file)
			if err != nil {
				t.Fatalf("ReadFile: %v", err)
			}
			if !bytes.Equal(data, files[tc.file]) {
				t.Errorf("ReadFile = %q, want %q", data, files[tc.file])
			}
			if want := revParse(t, dir, "main:"+tc.file); blob != want {
				t.Errorf("blob = %s, want %s", blob, want)
			}

			got, want := packContents(t, snap.Pack), wantObjects(t, dir, tc.want, tc.file)
			if len(got) != len(want) {
				t.Errorf("pack holds %d objects, want %d", len(got), len(want))
			}
			for h, typ := range want {
				if got[h] != typ {
					t.Errorf("pack lacks %s %s", typ, h)
				}
			}
			for h, typ := range got {
				if _, ok := want[h]; !ok {
					t.Errorf("pack holds unrelated %s %s", typ, h)
				}
			}
			t.Logf("%s %s: %d objects, %d bytes fetched, %d requests, pack %d bytes",
				snap.Strategy, tc.file, len(got), snap.BytesFetched, 1+reqs.posts.Load(), len(snap.Pack))
			if tc.file == backlogPath && tc.force != "" {
				bytesBy[tc.force] = snap.BytesFetched
			}
		})
	}
	// The point of the strategies: each fetches less than the next.
	if !(bytesBy[StrategyMinimal] < bytesBy[StrategyBlobNone] && bytesBy[StrategyBlobNone] < bytesBy[StrategyShallow]) {
		t.Errorf("bytes fetched: minimal %d, blob-none %d, shallow %d; want increasing",
			bytesBy[StrategyMinimal], bytesBy[StrategyBlobNone], bytesBy[StrategyShallow])
	}
	if bytesBy[StrategyMinimal] > 4096 {
		t.Errorf("minimal fetched %d bytes, want under 4 KiB", bytesBy[StrategyMinimal])
	}
}

func TestFetchMissingFile(t *testing.T) {
	tf := startForge(t, nil)
	r, _ := tf.repo(t, "small", smallRepo())
	for _, s := range []Strategy{StrategyMinimal, StrategyBlobNone, StrategyShallow} {
		for _, p := range []string{"missing.yaml", ".leviathan/missing.yaml", "no/such/dir.yaml", "README.md/under-a-file", "src"} {
			snap, err := Fetch(context.Background(), r, "main", p, FetchOptions{Strategy: s})
			if err != nil {
				t.Fatalf("%s %s: Fetch: %v", s, p, err)
			}
			repo, err := OpenPack(snap.Pack)
			if err != nil {
				t.Fatalf("OpenPack: %v", err)
			}
			if _, _, err := repo.ReadFile(snap.Commit, p); !errors.Is(err, ErrFileNotFound) {
				t.Errorf("%s: ReadFile(%q) = %v, want ErrFileNotFound", s, p, err)
			}
		}
	}
}

// TestFetchFallback checks the automatic choice against servers that lack
// or refuse filters, and that a forced strategy is refused instead.
func TestFetchFallback(t *testing.T) {
	tf := startForge(t, nil)
	for _, tc := range []struct {
		name, key, value string
		auto             Strategy
		unsupported      []Strategy
	}{
		// No "filter" capability at all: only shallow is possible.
		{"nofilter", "uploadpack.allowFilter", "false", StrategyShallow, []Strategy{StrategyMinimal, StrategyBlobNone}},
		// "filter" advertised, but tree:<depth> refused at request time.
		{"notreefilter", "uploadpackfilter.tree.allow", "false", StrategyBlobNone, []Strategy{StrategyMinimal}},
		// Combined filters refused: minimal still works, the blob by itself.
		{"nocombine", "uploadpackfilter.combine.allow", "false", StrategyMinimal, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := smallRepo()
			r, dir := tf.repo(t, tc.name, files)
			git(t, dir, "config", tc.key, tc.value)

			snap, err := Fetch(context.Background(), r, "main", backlogPath, FetchOptions{})
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if snap.Strategy != tc.auto {
				t.Errorf("auto picked %s, want %s", snap.Strategy, tc.auto)
			}
			repo, err := OpenPack(snap.Pack)
			if err != nil {
				t.Fatal(err)
			}
			if data, _, err := repo.ReadFile(snap.Commit, backlogPath); err != nil || !bytes.Equal(data, files[backlogPath]) {
				t.Errorf("ReadFile = %q, %v", data, err)
			}
			t.Logf("auto → %s, %d bytes fetched", snap.Strategy, snap.BytesFetched)

			for _, s := range tc.unsupported {
				if _, err := Fetch(context.Background(), r, "main", backlogPath, FetchOptions{Strategy: s}); !errors.Is(err, ErrNoFilterSupport) {
					t.Errorf("forced %s: err = %v, want ErrNoFilterSupport", s, err)
				}
			}
		})
	}
}

func TestFetchErrors(t *testing.T) {
	down := startForge(t, nil)
	downURL := down.remote("gone").URL
	down.srv.Close()
	failing := startForge(t, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
		})
	})

	tf := startForge(t, nil)
	good, _ := tf.repo(t, "small", smallRepo())
	wrongPass := good
	wrongPass.Password = "wrong-password-XYZZY-1234"

	for _, tc := range []struct {
		name   string
		remote Remote
		branch string
		path   string
		check  func(error) bool
	}{
		{"wrong password", wrongPass, "main", backlogPath, func(err error) bool { return errors.Is(err, ErrAuth) }},
		{"no credentials", Remote{URL: good.URL}, "main", backlogPath, func(err error) bool { return errors.Is(err, ErrAuth) }},
		{"missing repo", tf.remote("nope"), "main", backlogPath, func(err error) bool { return errors.Is(err, ErrRepoNotFound) }},
		{"missing branch", good, "develop", backlogPath, func(err error) bool { return errors.Is(err, ErrBranchNotFound) }},
		{"invalid branch", good, "a..b", backlogPath, func(err error) bool { return errors.Is(err, ErrInvalidBranch) }},
		{"invalid path", good, "main", "../etc/passwd", func(err error) bool { return errors.Is(err, ErrInvalidPath) }},
		{"dot git path", good, "main", ".git/config", func(err error) bool { return errors.Is(err, ErrInvalidPath) }},
		{"server down", Remote{URL: downURL, Password: testToken}, "main", backlogPath, func(err error) bool {
			var ue *url.Error
			return errors.As(err, &ue)
		}},
		{"server failing", failing.remote("x"), "main", backlogPath, func(err error) bool {
			var se *StatusError
			return errors.As(err, &se) && se.StatusCode == http.StatusServiceUnavailable && se.Temporary()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap, err := Fetch(context.Background(), tc.remote, tc.branch, tc.path, FetchOptions{})
			if !tc.check(err) {
				t.Fatalf("Fetch = %v, %v: unexpected error", snap, err)
			}
			for _, secret := range []string{testToken, wrongPass.Password} {
				if strings.Contains(err.Error(), secret) || strings.Contains(errorChain(err), secret) {
					t.Errorf("error shows the password: %v", err)
				}
			}
			t.Logf("%v", err)
		})
	}
}

func TestFetchEmptyRepo(t *testing.T) {
	tf := startForge(t, nil)
	r, dir := tf.repo(t, "empty", smallRepo())
	// Delete the only branch: the repository exists but is empty.
	git(t, dir, "update-ref", "-d", "refs/heads/main")
	if _, err := Fetch(context.Background(), r, "main", backlogPath, FetchOptions{}); !errors.Is(err, ErrBranchNotFound) {
		t.Fatalf("Fetch = %v, want ErrBranchNotFound", err)
	}
}

func TestFetchCanceled(t *testing.T) {
	tf := startForge(t, nil)
	r, _ := tf.repo(t, "small", smallRepo())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Fetch(ctx, r, "main", backlogPath, FetchOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch = %v, want context.Canceled", err)
	}
}

// errorChain is the message of every error in err's chain, so a secret
// hidden below a redacting wrapper is found too.
func errorChain(err error) string {
	var b strings.Builder
	for e := err; e != nil; e = errors.Unwrap(e) {
		b.WriteString(e.Error())
		b.WriteString("\n")
	}
	return b.String()
}

// TestFetchSpilled: answers too large for memory go to a temporary file and
// are read object by object; the snapshot is the same as from memory, and
// no file is left behind.
func TestFetchSpilled(t *testing.T) {
	tf := startForge(t, nil)
	files := bigRepo()
	r, dir := tf.repo(t, "big", files)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	defer func(old int) { spillAt = old }(spillAt)
	spillAt = 0 // every answer spills
	for _, tc := range []struct {
		strategy Strategy
		file     string
	}{
		{StrategyShallow, backlogPath},
		{StrategyShallow, "dir07/sub1/deep/config.yaml"},
		{StrategyBlobNone, "dir07/sub1/deep/config.yaml"},
		{StrategyShallow, "no/such/file.yaml"},
	} {
		snap, err := Fetch(context.Background(), r, "main", tc.file, FetchOptions{Strategy: tc.strategy})
		if err != nil {
			t.Fatalf("%s %s: %v", tc.strategy, tc.file, err)
		}
		repo, err := OpenPack(snap.Pack)
		if err != nil {
			t.Fatal(err)
		}
		data, _, err := repo.ReadFile(snap.Commit, tc.file)
		if _, exists := files[tc.file]; !exists {
			if !errors.Is(err, ErrFileNotFound) {
				t.Fatalf("%s: ReadFile of a missing file: %v", tc.file, err)
			}
			continue
		}
		if err != nil || !bytes.Equal(data, files[tc.file]) {
			t.Fatalf("%s %s: ReadFile = %q, %v", tc.strategy, tc.file, data, err)
		}
		got, want := packContents(t, snap.Pack), wantObjects(t, dir, tc.strategy, tc.file)
		if !maps.Equal(got, want) {
			t.Errorf("%s %s: snapshot holds %v, want %v", tc.strategy, tc.file, got, want)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestFetchSpillFailure: no room for a large answer is said as such, not
// taken for the server refusing the strategy.
func TestFetchSpillFailure(t *testing.T) {
	tf := startForge(t, nil)
	r, _ := tf.repo(t, "big", bigRepo())
	t.Setenv("TMPDIR", filepath.Join(t.TempDir(), "missing"))
	defer func(old int) { spillAt = old }(spillAt)
	spillAt = 0
	_, err := Fetch(context.Background(), r, "main", backlogPath, FetchOptions{})
	if !errors.Is(err, errSpill) || errors.Is(err, errRefused) {
		t.Fatalf("Fetch with no temporary directory: %v", err)
	}
}

// TestFetchMinimalSpillsOneAnswer: a minimal fetch whose first answer
// stays in memory and whose second spills (a large sibling of the file in
// its directory) still snapshots the whole path.
func TestFetchMinimalSpillsOneAnswer(t *testing.T) {
	tf := startForge(t, nil)
	big := make([]byte, 200<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(rng.Uint32()) // incompressible
	}
	files := map[string][]byte{backlogPath: []byte("tasks: []\n"), ".leviathan/big.bin": big, "README.md": []byte("hi\n")}
	r, dir := tf.repo(t, "sibling", files)
	t.Setenv("TMPDIR", t.TempDir())
	defer func(old int) { spillAt = old }(spillAt)
	spillAt = 50 << 10
	for _, strategy := range []Strategy{StrategyMinimal, ""} {
		snap, err := Fetch(context.Background(), r, "main", backlogPath, FetchOptions{Strategy: strategy})
		if err != nil {
			t.Fatal(err)
		}
		repo, err := OpenPack(snap.Pack)
		if err != nil {
			t.Fatal(err)
		}
		if data, _, err := repo.ReadFile(snap.Commit, backlogPath); err != nil || !bytes.Equal(data, files[backlogPath]) {
			t.Fatalf("%q: ReadFile = %q, %v", strategy, data, err)
		}
		want := map[string]string{
			git(t, dir, "rev-parse", "main"): "commit", git(t, dir, "rev-parse", "main^{tree}"): "tree",
			git(t, dir, "rev-parse", "main:.leviathan"): "tree", git(t, dir, "rev-parse", "main:"+backlogPath): "blob",
		}
		if got := packContents(t, snap.Pack); !maps.Equal(got, want) {
			t.Errorf("%q: snapshot holds %v, want the path %v", strategy, got, want)
		}
	}
}
