package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/services/backlogedit"
)

// tokenEnv carries the forge token to the worker: not on the command line,
// where ps would show it.
const tokenEnv = "GITBENCH_TOKEN"

// workerRequest asks the worker for one attempt's git work.
type workerRequest struct {
	Branch string      `json:"branch"`
	Task   events.Task `json:"task"`
}

// workerReply is the worker's answer, one JSON line per request.
type workerReply struct {
	Seconds      float64 `json:"seconds"`
	BytesFetched int64   `json:"bytes_fetched"`
	Strategy     string  `json:"strategy"`
	Objects      int     `json:"objects"` // pushed
	PeakRSSKB    int64   `json:"peak_rss_kb"`
	Error        string  `json:"error,omitempty"`
}

// runWorker is `gitbench worker -url URL -strategy S [-close-idle]`: it reads requests,
// one JSON line each, from stdin until EOF, and answers each on stdout. It
// stays up between requests, as a service does, so what is timed is the
// git work alone, not process start.
func runWorker(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("gitbench worker", flag.ContinueOnError)
	url := fs.String("url", "", "clone URL")
	strategy := fs.String("strategy", "", "gitx fetch strategy")
	closeIdle := fs.Bool("close-idle", false, "close idle HTTP connections before each attempt, so that each opens its own")
	if err := fs.Parse(args); err != nil {
		return err
	}
	remote := gitx.Remote{URL: *url, Username: "x-access-token", Password: getenv(tokenEnv)}
	in := bufio.NewScanner(stdin)
	enc := json.NewEncoder(stdout)
	for in.Scan() {
		var req workerRequest
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			return fmt.Errorf("worker: bad request: %w", err)
		}
		if *closeIdle {
			// gitx uses http.DefaultTransport when the Remote has no
			// client: its pool would carry a connection from one
			// attempt to the next. Not timed.
			if t, ok := http.DefaultTransport.(*http.Transport); ok {
				t.CloseIdleConnections()
			}
		}
		rep := attempt(ctx, remote, gitx.Strategy(*strategy), req)
		if err := enc.Encode(rep); err != nil {
			return err
		}
	}
	return in.Err()
}

// attempt is the services' git work of one attempt, in the order the
// pipeline does it (clone → backlog-edit → push stages): fetch the
// snapshot, open it, read the backlog, append the task, commit, push.
func attempt(ctx context.Context, remote gitx.Remote, strategy gitx.Strategy, req workerRequest) workerReply {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	fail := func(err error) workerReply { return workerReply{Error: err.Error()} }

	snap, err := gitx.Fetch(ctx, remote, "main", events.BacklogPath, gitx.FetchOptions{Strategy: strategy})
	if err != nil {
		return fail(err)
	}
	repo, err := gitx.OpenPack(snap.Pack)
	if err != nil {
		return fail(err)
	}
	old, _, err := repo.ReadFile(snap.Commit, events.BacklogPath)
	if err != nil {
		return fail(err)
	}
	content, err := backlogedit.Append(old, req.Task)
	if err != nil {
		return fail(err)
	}
	c, err := repo.Commit(snap.Commit, events.BacklogPath, content, gitx.CommitMeta{
		Message: "Leviathan: Propose task " + req.Task.ID,
		Author:  object.Signature{Name: "Leviathan", Email: "leviathan@example.com", When: time.Now()},
	})
	if err != nil {
		return fail(err)
	}
	res, err := gitx.Push(ctx, remote, req.Branch, c)
	if err != nil {
		return fail(err)
	}
	if res.UpToDate {
		return fail(errors.New("push: branch already there (not a fresh branch)"))
	}
	elapsed := time.Since(start)
	hwm, err := peakRSSKB()
	if err != nil {
		return fail(err)
	}
	return workerReply{
		Seconds:      elapsed.Seconds(),
		BytesFetched: snap.BytesFetched,
		Strategy:     string(snap.Strategy),
		Objects:      len(c.Objects),
		PeakRSSKB:    hwm,
	}
}

// peakRSSKB is this process's VmHWM (in KB): the high-water mark of its
// own memory since it started.
//
// Not ru_maxrss, which the parent could read after wait: on Linux that is at
// least the RSS of the process that spawned this one (exec records the
// high-water mark of the memory it replaces, and Go starts children with
// vfork, sharing the parent's memory until exec), so it would report the
// benchmark's own size whenever the worker is smaller.
func peakRSSKB() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

// workerProc is the parent's handle on a worker process.
type workerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startWorker(ctx context.Context, exe, url, strategy, token string, closeIdle bool) (*workerProc, error) {
	args := []string{"worker", "-url", url, "-strategy", strategy}
	if closeIdle {
		args = append(args, "-close-idle")
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), tokenEnv+"="+token)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &workerProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}, nil
}

// do runs one attempt in the worker and waits for its answer.
func (w *workerProc) do(req workerRequest) (workerReply, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return workerReply{}, err
	}
	if _, err := w.stdin.Write(append(b, '\n')); err != nil {
		return workerReply{}, fmt.Errorf("worker: %w", err)
	}
	line, err := w.out.ReadBytes('\n')
	if err != nil {
		return workerReply{}, fmt.Errorf("worker: reading reply: %w", err)
	}
	var rep workerReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return workerReply{}, fmt.Errorf("worker: bad reply %q: %w", line, err)
	}
	if rep.Error != "" {
		return rep, errors.New(rep.Error)
	}
	return rep, nil
}

// finish ends the worker.
func (w *workerProc) finish() error {
	w.stdin.Close()
	if err := w.cmd.Wait(); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

// kill stops a worker that is not to be finished normally.
func (w *workerProc) kill() {
	_ = w.cmd.Process.Kill()
	_ = w.cmd.Wait()
}

// maxRSSKB is ru_maxrss of a finished process: on Linux in KB, the maximum
// over the process and the descendants it waited for, and over the memory
// of whatever process it was started from (see peakRSSKB).
func maxRSSKB(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return int64(ru.Maxrss)
	}
	return 0
}
