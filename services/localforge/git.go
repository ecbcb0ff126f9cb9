package localforge

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// repoName is what an owner or repository name may look like. It keeps
// request paths from escaping the repository root.
var repoName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)

// gitHandler serves the bare repositories under root over smart HTTP
// through the real `git http-backend`, behind basic auth.
type gitHandler struct {
	root    string
	backend string // path of git-http-backend
	check   func(user, pass string) bool
	log     *slog.Logger

	mu     sync.Mutex
	pushes map[string]int  // receive-packs per repository directory, since its last gc check
	gcing  map[string]bool // repositories whose gc check runs now
}

func newGitHandler(root string, check func(user, pass string) bool, log *slog.Logger) (*gitHandler, error) {
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return nil, fmt.Errorf("localforge: git not found: %w", err)
	}
	backend := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		return nil, fmt.Errorf("localforge: git-http-backend: %w", err)
	}
	return &gitHandler{root: root, backend: backend, check: check, log: log, pushes: map[string]int{}, gcing: map[string]bool{}}, nil
}

// ServeHTTP expects paths of the form /<owner>/<repo>.git/<git service path>
// (the /git prefix is stripped by the caller).
func (h *gitHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	if len(parts) < 3 || !validName(parts[0]) || !strings.HasSuffix(parts[1], ".git") ||
		!validName(strings.TrimSuffix(parts[1], ".git")) {
		http.NotFound(w, r)
		return
	}
	user, pass, ok := r.BasicAuth()
	if !ok || !h.check(user, pass) {
		w.Header().Set("WWW-Authenticate", `Basic realm="localforge"`)
		http.Error(w, "authentication required", http.StatusUnauthorized)
		return
	}
	if _, err := os.Stat(filepath.Join(h.root, parts[0], parts[1])); err != nil {
		http.NotFound(w, r)
		return
	}
	cgiH := &cgi.Handler{
		Path: h.backend,
		Dir:  h.root,
		Env: []string{
			"GIT_PROJECT_ROOT=" + h.root,
			"GIT_HTTP_EXPORT_ALL=1",
			// The user is authenticated above; http-backend enables
			// receive-pack only when REMOTE_USER is set.
			"REMOTE_USER=" + user,
			"GIT_CONFIG_NOSYSTEM=1",
			"HOME=" + h.root,
		},
	}
	cgiH.Env = append(cgiH.Env, pushConfig...)
	// Pass protocol v2 negotiation through to upload-pack.
	if p := r.Header.Get("Git-Protocol"); p != "" {
		cgiH.Env = append(cgiH.Env, "GIT_PROTOCOL="+p)
	}
	push := strings.HasSuffix(parts[2], "git-receive-pack") && r.Method == http.MethodPost
	if push {
		// A push whose client was killed mid-update can leave a ref lock
		// behind; git would refuse every later update of that ref.
		for _, l := range clearStaleLocks(filepath.Join(h.root, parts[0], parts[1]), staleLockAge) {
			h.log.Warn("removed a stale git lock", "file", l)
		}
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = "/" + strings.Join(parts, "/")
	cgiH.ServeHTTP(w, r2)
	if push {
		h.pushed(filepath.Join(h.root, parts[0], parts[1]))
	}
}

// pushConfig is git configuration for every git process of a request
// (GIT_CONFIG_COUNT, which git-http-backend passes on to receive-pack). It
// spares each push two of its seven git processes:
//   - receive.autogc off: receive-pack would run `git gc --auto` (and that
//     `git maintenance run --auto`) after every push, to find there is
//     nothing to do; pushed checks every gcEvery pushes instead, after the
//     push has been answered;
//   - core.alternateRefsCommand: the connectivity check of a push lists
//     the refs of the pushed objects' alternate with a `git for-each-ref`,
//     and that alternate is the repository itself (the push's quarantine
//     borrows its objects), whose refs the check reads already (--all).
//     true(1) lists none; the check stays as strict (it can only walk
//     further).
var pushConfig = []string{
	"GIT_CONFIG_COUNT=2",
	"GIT_CONFIG_KEY_0=receive.autogc", "GIT_CONFIG_VALUE_0=false",
	"GIT_CONFIG_KEY_1=core.alternateRefsCommand", "GIT_CONFIG_VALUE_1=true",
}

// gcEvery is how many pushes to a repository go between two `git gc
// --auto` runs (which pack its loose objects once there are more than
// gc.auto, 6,700 by default).
const gcEvery = 64

// pushed counts a push to the repository at dir and every gcEvery pushes
// starts `git gc --auto` on it in the background, one at a time.
func (h *gitHandler) pushed(dir string) {
	h.mu.Lock()
	h.pushes[dir]++
	if h.pushes[dir] < gcEvery || h.gcing[dir] {
		h.mu.Unlock()
		return
	}
	h.pushes[dir], h.gcing[dir] = 0, true
	h.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if err := runGit(ctx, dir, "gc", "--auto", "--quiet"); err != nil {
			h.log.Warn("git gc --auto failed", "repo", dir, "err", err)
		}
		h.mu.Lock()
		delete(h.gcing, dir)
		h.mu.Unlock()
	}()
}

// basicAuthCheck returns a constant-time check of a username and password.
func basicAuthCheck(wantUser, wantPass string) func(user, pass string) bool {
	return func(user, pass string) bool {
		u := subtle.ConstantTimeCompare([]byte(user), []byte(wantUser))
		p := subtle.ConstantTimeCompare([]byte(pass), []byte(wantPass))
		return u&p == 1
	}
}

// initBare creates a bare repository configured for partial clone and
// want-by-id, so every fetch strategy of the git path works against it.
func initBare(ctx context.Context, dir, branch string) error {
	if err := runGit(ctx, "", "init", "--bare", "--quiet", "--initial-branch="+branch, dir); err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{"http.receivepack", "true"},
		{"uploadpack.allowFilter", "true"},
		{"uploadpack.allowAnySHA1InWant", "true"},
		{"receive.denyNonFastForwards", "false"},
	} {
		if err := runGit(ctx, dir, "config", kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// runGit runs git in dir with a clean, non-interactive environment.
func runGit(ctx context.Context, dir string, args ...string) error {
	_, err := gitOutput(ctx, dir, nil, args...)
	return err
}

func gitOutput(ctx context.Context, dir string, env []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out, fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(string(ee.Stderr)))
		}
		return out, fmt.Errorf("git %s: %w", args[0], err)
	}
	return out, nil
}

// staleLockAge is how old a ref lock must be to count as left behind: a
// live receive-pack holds one for milliseconds.
const staleLockAge = 30 * time.Second

// clearStaleLocks removes the lock files a killed git process left in a
// bare repository (refs/**.lock, packed-refs.lock, HEAD.lock), older than
// minAge: git refuses to update a ref whose lock exists, forever. It
// reports what it removed. (A real forge never shows its clients one.)
func clearStaleLocks(repo string, minAge time.Duration) []string {
	var removed []string
	now := time.Now()
	check := func(path string, info fs.FileInfo) {
		if strings.HasSuffix(path, ".lock") && info.Mode().IsRegular() && now.Sub(info.ModTime()) >= minAge {
			if os.Remove(path) == nil {
				removed = append(removed, path)
			}
		}
	}
	for _, name := range []string{"packed-refs.lock", "HEAD.lock"} {
		if info, err := os.Lstat(filepath.Join(repo, name)); err == nil {
			check(filepath.Join(repo, name), info)
		}
	}
	_ = filepath.WalkDir(filepath.Join(repo, "refs"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				check(path, info)
			}
		}
		return nil
	})
	return removed
}
