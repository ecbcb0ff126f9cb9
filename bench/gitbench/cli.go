package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/backlogedit"
)

// cliRunner does an attempt's git work with the git CLI: a depth-1 clone
// without checkout (optionally blob:none), then the new backlog blob, the
// trees on its path and the commit written with plumbing, and a push.
//
// There is no index: in a blob:none clone without checkout, `git commit`
// and even `git write-tree` lazily fetch every blob of the index (they
// check that each entry's object exists), which would turn the blob:none
// baseline into a full download. ls-tree + mktree --missing + commit-tree
// touch only the path, so each baseline is the best the CLI can do.
type cliRunner struct {
	url    string
	filter bool // --filter=blob:none
	env    []string
	// timeBin, when set, is GNU time, through which each command runs
	// to measure its peak RSS: the probe attempt, which is not timed.
	// Without it rssKB is each command's own ru_maxrss, an upper bound
	// (see peakRSSKB).
	timeBin string
}

func newCLIRunner(url, token string, filter bool) *cliRunner {
	// The token goes in a header from the environment: never in the URL,
	// the command line or the output.
	auth := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))
	return &cliRunner{url: url, filter: filter, env: []string{
		"GIT_CONFIG_COUNT=1",
		"GIT_CONFIG_KEY_0=http.extraHeader",
		"GIT_CONFIG_VALUE_0=Authorization: Basic " + auth,
	}}
}

// cliReply is what one CLI attempt measured.
type cliReply struct {
	seconds float64 // the whole sequence of commands
	rssKB   int64   // the largest peak RSS of its commands
}

// attempt runs the sequence in a fresh temporary directory, removed after.
func (c *cliRunner) attempt(ctx context.Context, branch string, task events.Task) (cliReply, error) {
	tmp, err := os.MkdirTemp("", "gitbench-cli-")
	if err != nil {
		return cliReply{}, err
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "clone")
	var rep cliReply
	rssFile := filepath.Join(tmp, "rss")
	git := func(stdin []byte, args ...string) ([]byte, error) {
		cmd := gitCmd(ctx, dir, c.env, args...)
		if c.timeBin != "" {
			// GNU time forks git from its own small process and
			// writes the child's ru_maxrss (KB) to rssFile.
			cmd = exec.CommandContext(ctx, c.timeBin, append([]string{"-f", "%M", "-o", rssFile, "git"}, args...)...)
			cmd.Dir, cmd.Env = dir, gitEnv(c.env)
		}
		if args[0] == "clone" {
			cmd.Dir = tmp
		}
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("git %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
		}
		kb := maxRSSKB(cmd.ProcessState)
		if c.timeBin != "" {
			if kb, err = readTimeRSS(rssFile); err != nil {
				return nil, err
			}
		}
		rep.rssKB = max(rep.rssKB, kb)
		return out, nil
	}

	start := time.Now()
	clone := []string{"clone", "--quiet", "--depth", "1", "--no-checkout"}
	if c.filter {
		clone = append(clone, "--filter=blob:none")
	}
	if _, err := git(nil, append(clone, c.url, dir)...); err != nil {
		return rep, err
	}
	// With blob:none this fetches the one blob, lazily.
	old, err := git(nil, "show", "HEAD:"+events.BacklogPath)
	if err != nil {
		return rep, err
	}
	content, err := backlogedit.Append(old, task)
	if err != nil {
		return rep, err
	}
	blob, err := git(content, "hash-object", "-w", "--stdin")
	if err != nil {
		return rep, err
	}
	// Rewrite the trees on the path bottom-up: each is its listing with
	// one entry replaced.
	elems := strings.Split(events.BacklogPath, "/")
	hash := strings.TrimSpace(string(blob))
	for i := len(elems) - 1; i >= 0; i-- {
		listing, err := git(nil, "ls-tree", "-z", "HEAD:"+strings.Join(elems[:i], "/"))
		if err != nil {
			return rep, err
		}
		tree, err := replaceEntry(listing, elems[i], hash)
		if err != nil {
			return rep, err
		}
		out, err := git(tree, "mktree", "-z", "--missing")
		if err != nil {
			return rep, err
		}
		hash = strings.TrimSpace(string(out))
	}
	commit, err := git(nil, "commit-tree", hash, "-p", "HEAD", "-m", "Leviathan: Propose task "+task.ID)
	if err != nil {
		return rep, err
	}
	if _, err := git(nil, "push", "--quiet", "origin", strings.TrimSpace(string(commit))+":refs/heads/"+branch); err != nil {
		return rep, err
	}
	rep.seconds = time.Since(start).Seconds()
	return rep, nil
}

// replaceEntry returns the `ls-tree -z` listing with the object of entry
// name set to hash, its mode and type kept.
func replaceEntry(listing []byte, name, hash string) ([]byte, error) {
	var out []byte
	found := false
	for _, rec := range bytes.Split(bytes.TrimSuffix(listing, []byte{0}), []byte{0}) {
		// "<mode> <type> <object>\t<name>"
		meta, entry, ok := bytes.Cut(rec, []byte{'\t'})
		fields := bytes.Fields(meta)
		if !ok || len(fields) != 3 {
			return nil, fmt.Errorf("unexpected ls-tree record %q", rec)
		}
		if string(entry) == name {
			rec = fmt.Appendf(nil, "%s %s %s\t%s", fields[0], fields[1], hash, entry)
			found = true
		}
		out = append(append(out, rec...), 0)
	}
	if !found {
		return nil, fmt.Errorf("%s: not in the tree", name)
	}
	return out, nil
}

// readTimeRSS reads what `time -f %M -o file` wrote: the last line is the
// number (GNU time puts a note about a failed command before it).
func readTimeRSS(file string) (int64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	kb, err := strconv.ParseInt(strings.TrimSpace(lines[len(lines)-1]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("time -f %%M wrote %q", b)
	}
	return kb, nil
}

// findGNUTime returns the path of a GNU time that works with -f %M -o, or
// "" if there is none.
func findGNUTime(ctx context.Context) string {
	for _, p := range []string{"/usr/bin/time", "/bin/time"} {
		tmp, err := os.CreateTemp("", "gitbench-time-")
		if err != nil {
			return ""
		}
		tmp.Close()
		err = exec.CommandContext(ctx, p, "-f", "%M", "-o", tmp.Name(), "true").Run()
		kb, rerr := readTimeRSS(tmp.Name())
		os.Remove(tmp.Name())
		if err == nil && rerr == nil && kb > 0 {
			return p
		}
	}
	return ""
}
