package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// forgeServer is localforge on 127.0.0.1, serving the generated
// repositories through `git http-backend`, with a count of every response
// byte it sends.
type forgeServer struct {
	forge  *localforge.Forge
	http   *http.Server
	base   string // http://127.0.0.1:port, the prefix of every clone URL
	token  string
	served atomic.Int64 // response body bytes, all requests
	trace  io.Writer    // when set, gets a line per request
}

// repoConfig is set on every served repository at start, so a change here
// needs no regeneration. The first three are what localforge sets on the
// repositories it creates (every fetch strategy and pushes work); automatic
// gc is off so that no push repacks the large repository in the middle of a
// measurement.
var repoConfig = [][2]string{
	{"http.receivepack", "true"},
	{"uploadpack.allowFilter", "true"},
	{"uploadpack.allowAnySHA1InWant", "true"},
	{"gc.auto", "0"},
	{"receive.autogc", "false"},
}

// startForge serves dir (a localforge Dir) with a fresh random token.
func startForge(ctx context.Context, dir string, specs []repoSpec) (*forgeServer, error) {
	token := randomHex(16)
	f, err := localforge.New(localforge.Config{Dir: dir, Token: token})
	if err != nil {
		return nil, err
	}
	s := &forgeServer{forge: f, token: token}
	for _, spec := range specs {
		for _, kv := range repoConfig {
			if _, err := gitOutput(ctx, s.repoDir(spec.Name), nil, nil, "config", kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.base = "http://" + ln.Addr().String()
	f.SetBaseURL(s.base)
	s.http = &http.Server{Handler: s.count(f.Handler()), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "gitbench: server:", err)
		}
	}()
	return s, nil
}

func (s *forgeServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(ctx)
}

func (s *forgeServer) cloneURL(repo string) string { return s.forge.CloneURL(benchOwner, repo) }

// cloneURLVia is repo's clone URL with the server's address replaced by
// base: the URL through a proxy in front of the server.
func (s *forgeServer) cloneURLVia(base, repo string) string {
	return base + strings.TrimPrefix(s.cloneURL(repo), s.base)
}

func (s *forgeServer) repoDir(repo string) string { return s.forge.RepoDir(benchOwner, repo) }

// deleteBranch removes a branch a measurement pushed. Its objects stay
// until the prune at the end of the run.
func (s *forgeServer) deleteBranch(repo, branch string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := gitOutput(ctx, s.repoDir(repo), nil, nil, "update-ref", "-d", "refs/heads/"+branch)
	return err
}

// checkBranch verifies what an attempt pushed: a commit on main's tip that
// changes the backlog alone, and a backlog that holds the task.
func (s *forgeServer) checkBranch(ctx context.Context, repo, branch, taskID string) error {
	dir := s.repoDir(repo)
	ref := "refs/heads/" + branch
	out, err := gitOutput(ctx, dir, nil, nil, "rev-parse", ref+"^", "refs/heads/main")
	if err != nil {
		return err
	}
	if p := strings.Fields(string(out)); len(p) != 2 || p[0] != p[1] {
		return fmt.Errorf("%s: the parent is not main's tip", branch)
	}
	out, err = gitOutput(ctx, dir, nil, nil, "diff-tree", "-r", "--name-only", "refs/heads/main", ref)
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(out)); got != events.BacklogPath {
		return fmt.Errorf("%s: changed %q, want only %s", branch, got, events.BacklogPath)
	}
	out, err = gitOutput(ctx, dir, nil, nil, "cat-file", "blob", ref+":"+events.BacklogPath)
	if err != nil {
		return err
	}
	if !strings.Contains(string(out), "id: "+taskID+"\n") {
		return fmt.Errorf("%s: the backlog lacks task %s", branch, taskID)
	}
	return nil
}

// count wraps h so that every response byte is added to s.served. The bytes
// are counted before they are written, so once a client has read a
// response, all of it is in the count.
func (s *forgeServer) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, n: &s.served, status: http.StatusOK}
		start := time.Now()
		h.ServeHTTP(cw, r)
		if s.trace != nil {
			fmt.Fprintf(s.trace, "    %s %s%s: %d, %d bytes, %.1f ms\n", r.Method, r.URL.Path, query(r), cw.status, cw.bytes, float64(time.Since(start).Microseconds())/1000)
		}
	})
}

type countingWriter struct {
	http.ResponseWriter
	n      *atomic.Int64
	bytes  int64 // this response's
	status int
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	c.bytes += int64(len(p))
	return c.ResponseWriter.Write(p)
}

func query(r *http.Request) string {
	if r.URL.RawQuery == "" {
		return ""
	}
	return "?" + r.URL.RawQuery
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// gitEnv is the environment of every git command: the caller's without
// any GIT_* variable, no system or global configuration (the operator's
// settings must not change what is measured), never a prompt, and a fixed
// identity, plus extra.
func gitEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GIT_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=Leviathan", "GIT_AUTHOR_EMAIL=leviathan@example.com",
		"GIT_COMMITTER_NAME=Leviathan", "GIT_COMMITTER_EMAIL=leviathan@example.com",
	)
	return append(env, extra...)
}

// gitCmd is `git args...` run in dir, which may be a bare repository: git
// finds it from there.
func gitCmd(ctx context.Context, dir string, extraEnv []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = gitEnv(extraEnv)
	return cmd
}

// gitOutput runs git and returns its standard output; a failure carries
// its standard error.
func gitOutput(ctx context.Context, dir string, extraEnv []string, stdin []byte, args ...string) ([]byte, error) {
	cmd := gitCmd(ctx, dir, extraEnv, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}
