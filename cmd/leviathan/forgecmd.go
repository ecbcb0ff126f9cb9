package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// devForgeTokenFile is where `leviathan dev` keeps localforge's token.
var devForgeTokenFile = filepath.Join(".leviathan-dev", "forge.token")

// cmdForge is `leviathan forge repo create <owner>/<name>`: a repository
// in localforge, made through its API (POST /api/v3/orgs/{owner}/repos).
func cmdForge(ctx context.Context, args []string, env environment, stdout, stderr io.Writer) error {
	const usage = "Usage: leviathan forge repo create <owner>/<name> [--from DIR] [--backlog] [flags]"
	if len(args) > 0 && isHelp(args[len(args)-1]) && len(args) <= 2 {
		fmt.Fprintln(stdout, usage)
		return nil
	}
	if len(args) < 2 || args[0] != "repo" || args[1] != "create" {
		return &exitError{code: 2, msg: usage}
	}
	args = args[2:]
	flags := flag.NewFlagSet("forge repo create", flag.ContinueOnError)
	flags.SetOutput(stderr)
	url := flags.String("forge-url", "http://127.0.0.1:3000", "localforge URL (leviathan dev's --forge-addr)")
	tokenFile := flags.String("token-file", "", "file holding localforge's token (default: env LEVIATHAN_FORGE_TOKEN, else "+devForgeTokenFile+")")
	from := flags.String("from", "", "directory whose files make the first commit (its .git and dot-directories are skipped)")
	backlog := flags.Bool("backlog", false, "add an empty Leviathan backlog ("+events.BacklogPath+") unless --from has one")
	branch := flags.String("branch", "main", "the default branch")
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprintln(stdout, usage)
		flags.SetOutput(stdout)
		flags.PrintDefaults()
		return nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return &exitError{code: 2, msg: usage}
	}
	owner, name, ok := strings.Cut(args[0], "/")
	if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
		return &exitError{code: 2, msg: fmt.Sprintf("forge repo create: %q is not <owner>/<name>", args[0])}
	}
	if err := flags.Parse(args[1:]); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	token := env.ForgeToken
	if *tokenFile != "" || token == "" {
		file := *tokenFile
		if file == "" {
			file = devForgeTokenFile
		}
		b, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) && *tokenFile == "" {
			return &exitError{code: 2, msg: "no localforge token: set LEVIATHAN_FORGE_TOKEN or --token-file (leviathan dev writes it to " + devForgeTokenFile + " in its data directory)"}
		} else if err != nil {
			return fmt.Errorf("localforge token: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	req := localforge.RepoRequest{Name: name, DefaultBranch: *branch, Files: map[string]string{}}
	if *from != "" {
		n, err := readTree(*from, req.Files)
		if err != nil {
			return fmt.Errorf("forge repo create: --from: %w", err)
		}
		fmt.Fprintf(stderr, "read %d files from %s\n", n, *from)
	}
	if _, ok := req.Files[events.BacklogPath]; *backlog && !ok {
		req.Files[events.BacklogPath] = base64.StdEncoding.EncodeToString([]byte("tasks: []\n"))
	}
	body, _ := json.Marshal(req)
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	hreq, err := http.NewRequestWithContext(rctx, http.MethodPost, strings.TrimRight(*url, "/")+"/api/v3/orgs/"+owner+"/repos", bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Authorization", "Bearer "+token)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return fmt.Errorf("forge repo create: %w", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		var e struct {
			Message string `json:"message"`
			Errors  []struct {
				Message string `json:"message"`
			} `json:"errors"`
		}
		_ = json.Unmarshal(raw, &e)
		msg := e.Message
		if len(e.Errors) > 0 {
			msg += " " + e.Errors[0].Message
		}
		if msg == "" {
			msg = strings.TrimSpace(string(raw))
		}
		return fmt.Errorf("forge repo create %s/%s: %s: %s", owner, name, resp.Status, msg)
	}
	var repo localforge.RepoView
	if err := json.Unmarshal(raw, &repo); err != nil {
		return fmt.Errorf("forge repo create: %w", err)
	}
	fmt.Fprintf(stdout, `created %s (branch %s)
  clone URL  %s
  git user   any non-empty name, with localforge's token as the password
  submit     leviathan submit --target %s --repo-url %s --branch %s --task-id T-1 --title "..." --wait
             (with --nats-url when NATS is not on 127.0.0.1:4222)
`, repo.FullName, repo.DefaultBranch, repo.CloneURL, name, repo.CloneURL, repo.DefaultBranch)
	return nil
}

func isHelp(s string) bool { return s == "-h" || s == "-help" || s == "--help" }

// readTree reads the regular files under dir into files (path → base64),
// skipping dot-directories (.git among them); at most 4,000 files and
// 32 MB in all.
func readTree(dir string, files map[string]string) (int, error) {
	const maxFiles, maxBytes = 4000, 32 << 20
	total := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && strings.HasPrefix(d.Name(), ".") && d.Name() != ".leviathan" && d.Name() != ".github" {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil // symlinks and the like are not copied
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		total += len(data)
		if len(files) >= maxFiles || total > maxBytes {
			return fmt.Errorf("more than %d files or %d MB", maxFiles, maxBytes>>20)
		}
		files[filepath.ToSlash(rel)] = base64.StdEncoding.EncodeToString(data)
		return nil
	})
	return len(files), err
}
