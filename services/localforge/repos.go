package localforge

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// seedAuthor signs the first commit of every repository CreateRepo makes.
const (
	seedName  = "Leviathan Seed"
	seedEmail = "seed@example.com"
)

// validName reports whether s can be an owner or repository name. "." and
// ".." pass the character check but would escape the repository root.
func validName(s string) bool {
	return repoName.MatchString(s) && s != "." && s != ".."
}

func (f *Forge) repoRoot() string { return filepath.Join(f.dir, "repos") }

// RepoDir returns the path of the bare repository owner/name.
func (f *Forge) RepoDir(owner, name string) string {
	return filepath.Join(f.repoRoot(), owner, name+".git")
}

// CloneURL returns the smart-HTTP URL of owner/name: BaseURL/git/<owner>/<name>.git.
func (f *Forge) CloneURL(owner, name string) string {
	return f.cloneURLFor(nil, owner, name)
}

// repoExists reports whether owner/name names an existing repository.
func (f *Forge) repoExists(owner, name string) bool {
	if !validName(owner) || !validName(name) {
		return false
	}
	st, err := os.Stat(f.RepoDir(owner, name))
	return err == nil && st.IsDir()
}

// CreateRepo creates the bare repository owner/name whose branch (default
// "main") holds one commit with files, keyed by slash-separated path. It
// returns ErrRepoExists if the repository exists.
func (f *Forge) CreateRepo(ctx context.Context, owner, name, branch string, files map[string][]byte) error {
	if !validName(owner) || !validName(name) {
		return fmt.Errorf("%w: %q/%q", ErrInvalidName, owner, name)
	}
	if branch == "" {
		branch = "main"
	}
	final := f.RepoDir(owner, name)
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("%w: %s/%s", ErrRepoExists, owner, name)
	}
	parent := filepath.Dir(final)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("localforge: %w", err)
	}
	// Build the repository beside its final place and rename it in, so no
	// client ever sees a half-seeded repository. The temp name starts with
	// '.' and lacks the .git suffix, so nothing lists or serves it.
	tmp, err := os.MkdirTemp(parent, ".new-"+name+"-")
	if err != nil {
		return fmt.Errorf("localforge: %w", err)
	}
	defer os.RemoveAll(tmp)
	bare := filepath.Join(tmp, "repo.git")
	if err := initBare(ctx, bare, branch); err != nil {
		return fmt.Errorf("localforge: create %s/%s: %w", owner, name, err)
	}
	if err := seed(ctx, bare, tmp, files); err != nil {
		return fmt.Errorf("localforge: seed %s/%s: %w", owner, name, err)
	}
	// rename(2) fails on a non-empty target, so a concurrent CreateRepo of
	// the same name loses here rather than overwriting the winner.
	if err := os.Rename(bare, final); err != nil {
		if _, serr := os.Stat(final); serr == nil {
			return fmt.Errorf("%w: %s/%s", ErrRepoExists, owner, name)
		}
		return fmt.Errorf("localforge: %w", err)
	}
	f.log.Info("repository created", "owner", owner, "repo", name, "branch", branch)
	return nil
}

// seed commits files onto the bare repository's initial branch, using a
// scratch work tree and index under scratch.
func seed(ctx context.Context, bare, scratch string, files map[string][]byte) error {
	work := filepath.Join(scratch, "work")
	for p, data := range files {
		clean := filepath.Clean(filepath.FromSlash(p))
		if !filepath.IsLocal(clean) {
			return fmt.Errorf("file path %q leaves the repository", p)
		}
		full := filepath.Join(work, clean)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, data, 0o644); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	env := []string{
		"GIT_DIR=" + bare,
		"GIT_WORK_TREE=" + work,
		"GIT_INDEX_FILE=" + filepath.Join(scratch, "index"),
		"GIT_AUTHOR_NAME=" + seedName, "GIT_AUTHOR_EMAIL=" + seedEmail,
		"GIT_COMMITTER_NAME=" + seedName, "GIT_COMMITTER_EMAIL=" + seedEmail,
	}
	if _, err := gitOutput(ctx, work, env, "add", "--all", "."); err != nil {
		return err
	}
	// The operator's global config must not sign or hook the seed commit.
	_, err := gitOutput(ctx, work, env, "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null",
		"commit", "--quiet", "--allow-empty", "--no-verify", "-m", "Seed repository")
	return err
}

// repoRef names one repository.
type repoRef struct{ Owner, Name string }

// listRepos returns every repository, sorted by owner then name.
func (f *Forge) listRepos() ([]repoRef, error) {
	dirs, err := filepath.Glob(filepath.Join(f.repoRoot(), "*", "*.git"))
	if err != nil {
		return nil, err
	}
	var repos []repoRef
	for _, d := range dirs {
		owner, name := filepath.Base(filepath.Dir(d)), strings.TrimSuffix(filepath.Base(d), ".git")
		if st, err := os.Stat(d); err == nil && st.IsDir() && validName(owner) && validName(name) {
			repos = append(repos, repoRef{owner, name})
		}
	}
	slices.SortFunc(repos, func(a, b repoRef) int {
		return strings.Compare(a.Owner+"/"+a.Name, b.Owner+"/"+b.Name)
	})
	return repos, nil
}

// branchTips maps each branch of the bare repository to its commit id. It
// reads the refs as git stores them (loose files under refs/heads, then
// packed-refs) rather than running git: every pull request listing needs
// it, and a process per listing was most of localforge's CPU per attempt.
func branchTips(_ context.Context, bare string) (map[string]string, error) {
	if _, err := os.Stat(filepath.Join(bare, "HEAD")); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrRepoNotFound
		}
		return nil, err
	}
	tips := map[string]string{}
	// Loose refs first: git writes packed-refs before it deletes the
	// loose refs it packed, so a ref being packed is seen in one or the
	// other.
	heads := filepath.Join(bare, "refs", "heads")
	err := filepath.WalkDir(heads, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while walking, or no loose refs at all
			}
			return err
		}
		if d.IsDir() || strings.HasSuffix(path, ".lock") {
			return nil
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if sha := strings.TrimSpace(string(data)); isObjectID(sha) {
			rel, _ := filepath.Rel(heads, path)
			tips[filepath.ToSlash(rel)] = sha
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	packed, err := os.ReadFile(filepath.Join(bare, "packed-refs"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, line := range strings.Split(string(packed), "\n") {
		sha, ref, ok := strings.Cut(strings.TrimSpace(line), " ")
		name, isHead := strings.CutPrefix(ref, "refs/heads/")
		if !ok || !isHead || !isObjectID(sha) {
			continue // the header, a peeled tag (^...), another namespace
		}
		if _, loose := tips[name]; !loose {
			tips[name] = sha
		}
	}
	return tips, nil
}

// isObjectID reports whether s is a full hexadecimal object id (SHA-1 or
// SHA-256).
func isObjectID(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// hasCommitsBetween reports whether head has a commit that base lacks,
// that is whether head is neither base nor one of its ancestors. A pull
// request's head is nearly always a few commits on top of its base: head's
// history is walked (in this process) for base, a few commits deep, and
// only when base is not there does git count (commitsBetween).
func hasCommitsBetween(ctx context.Context, bare, baseSHA, headSHA string) (bool, error) {
	if baseSHA == headSHA {
		return false, nil
	}
	if descends(bare, baseSHA, headSHA, baseWalk) {
		return true, nil // head is base plus at least one commit
	}
	n, err := commitsBetween(ctx, bare, baseSHA, headSHA)
	return n > 0, err
}

// baseWalk is how many of head's commits descends reads at most.
const baseWalk = 32

// descends reports whether base is among the first limit commits of
// head's history (head excluded); false also when it cannot tell (an
// object it cannot read, an object format it does not know).
func descends(bare, baseSHA, headSHA string, limit int) bool {
	if len(baseSHA) != 40 || len(headSHA) != 40 { // go-git reads SHA-1 repositories
		return false
	}
	st := filesystem.NewStorage(osfs.New(bare), cache.NewObjectLRU(cache.MiByte))
	defer st.Close()
	base := plumbing.NewHash(baseSHA)
	queue := []plumbing.Hash{plumbing.NewHash(headSHA)}
	seen := map[plumbing.Hash]bool{}
	for len(queue) > 0 && len(seen) < limit {
		h := queue[0]
		queue = queue[1:]
		if seen[h] {
			continue
		}
		seen[h] = true
		c, err := object.GetCommit(st, h)
		if err != nil {
			return false
		}
		for _, p := range c.ParentHashes {
			if p == base {
				return true
			}
			queue = append(queue, p)
		}
	}
	return false
}

// commitsBetween counts the commits on head that base lacks.
func commitsBetween(ctx context.Context, bare, baseSHA, headSHA string) (int, error) {
	out, err := gitOutput(ctx, bare, nil, "rev-list", "--count", baseSHA+".."+headSHA)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(out)))
}

// Branch returns the commit at the tip of branch in owner/name, or "" when
// there is no such branch.
func (f *Forge) Branch(owner, name, branch string) (string, error) {
	if !f.repoExists(owner, name) {
		return "", fmt.Errorf("%w: %s/%s", ErrRepoNotFound, owner, name)
	}
	out, err := gitOutput(context.Background(), f.RepoDir(owner, name), nil, "rev-parse", "--verify", "--quiet", "refs/heads/"+branch)
	if err != nil {
		return "", nil
	}
	return strings.TrimSpace(string(out)), nil
}
