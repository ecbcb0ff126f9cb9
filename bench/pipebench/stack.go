package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// proc is one process of the stack.
type proc struct {
	name string
	bin  string
	args []string
	env  []string
	cmd  *exec.Cmd
	out  *tailBuffer
	// logDir, when set, gets a copy of the process's output in
	// <name>.log.
	logDir string
	log    *os.File
	// done is closed when the process has exited; onExit, when set, is
	// called then unless stop asked it to.
	done     chan struct{}
	waitErr  error
	stopping atomic.Bool
	onExit   func(*proc)
}

func (p *proc) start() error {
	p.out = &tailBuffer{}
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	var w io.Writer = p.out
	if p.logDir != "" {
		f, err := os.OpenFile(filepath.Join(p.logDir, p.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		p.log = f // closed by stop, after the copy of the output ends
		w = io.MultiWriter(p.out, f)
	}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the benchmark
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.done = make(chan struct{})
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
		if !p.stopping.Load() && p.onExit != nil {
			p.onExit(p)
		}
	}()
	return nil
}

// stop sends SIGTERM and waits (SIGKILL after 20 s).
func (p *proc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.stopping.Store(true)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
	if p.log != nil {
		_ = p.log.Close()
		p.log = nil
	}
}

// clkTck is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every
// Linux architecture's user interface.
const clkTck = 100

// cpu is the process's user+system CPU time so far, with that of its
// children that have ended (localforge's git processes), from its own
// counters (/proc/<pid>/stat utime, stime, cutime and cstime).
func (p *proc) cpu() (time.Duration, error) {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0, fmt.Errorf("%s is not running", p.name)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", p.cmd.Process.Pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", p.cmd.Process.Pid)
	}
	// After ')': state is f[0]; utime, stime, cutime and cstime are
	// fields 14 to 17 of the line, f[11] to f[14].
	var ticks int64
	for _, v := range f[11:15] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: unexpected format", p.cmd.Process.Pid)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clkTck, nil
}

// tailBuffer keeps the last 64 KB a process wrote, for error messages.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 64<<10 {
		t.b = append([]byte(nil), t.b[len(t.b)-32<<10:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// build compiles the leviathan command and nats-server (from the module's
// dependency) into dir.
func build(ctx context.Context, root, dir string) (leviathan, natsServer string, err error) {
	leviathan, natsServer = filepath.Join(dir, "leviathan"), filepath.Join(dir, "nats-server")
	for _, b := range [][2]string{{leviathan, "./cmd/leviathan"}, {natsServer, "github.com/nats-io/nats-server/v2"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b[0], b[1])
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
		}
	}
	return leviathan, natsServer, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitTCP(ctx context.Context, addr string, p *proc) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not listen on %s: %v\n%s", p.name, addr, err, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// createRepo makes owner/name on localforge through its API, with an empty
// backlog and a README: a small repository.
func createRepo(ctx context.Context, forgeURL, token, owner, name string) error {
	b64 := base64.StdEncoding.EncodeToString
	body, _ := json.Marshal(map[string]any{"name": name, "files": map[string]string{
		events.BacklogPath: b64([]byte("tasks: []\n")),
		"README.md":        b64([]byte("# " + name + "\n\nA target of the pipeline benchmark.\n")),
	}})
	req, err := http.NewRequestWithContext(ctx, "POST", forgeURL+"/api/v3/orgs/"+owner+"/repos", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("create repository %s/%s: HTTP %d: %s", owner, name, resp.StatusCode, msg)
	}
	return nil
}

// countPRs counts owner/name's open pull requests.
func countPRs(ctx context.Context, forgeURL, token, owner, name string) (int, error) {
	n := 0
	for page := 1; ; page++ {
		req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/api/v3/repos/%s/%s/pulls?state=open&per_page=100&page=%d", forgeURL, owner, name, page), nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		var prs []json.RawMessage
		err = json.NewDecoder(resp.Body).Decode(&prs)
		resp.Body.Close()
		if err != nil {
			return 0, err
		}
		n += len(prs)
		if len(prs) < 100 {
			return n, nil
		}
	}
}

var errTimeout = errors.New("attempts did not end in time")
