package localforge

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
)

const testToken = "s3cret-token"

// requireGit skips when git is missing; CI installs it, so a skip there is
// a broken CI image.
func requireGit(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is not installed (make test installs it with apt-get):", err)
	}
}

// startForge runs a forge on dir behind a real HTTP server and points its
// BaseURL at that server.
func startForge(t *testing.T, cfg Config) (*Forge, *httptest.Server) {
	t.Helper()
	requireGit(t)
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Token == "" {
		cfg.Token = testToken
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	f.SetBaseURL(srv.URL)
	return f, srv
}

// createRepo seeds owner/name on branch main.
func createRepo(t *testing.T, f *Forge, owner, name string) {
	t.Helper()
	files := map[string][]byte{"README.md": []byte("# " + name + "\n"), ".leviathan/backlog.yaml": []byte("tasks: []\n")}
	if err := f.CreateRepo(context.Background(), owner, name, "main", files); err != nil {
		t.Fatalf("CreateRepo: %v", err)
	}
}

// git runs git in dir with no user or system config, so the developer's
// settings cannot change what the test sees.
func git(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	out, err := tryGit(dir, env, args...)
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

func tryGit(dir string, env []string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=test@example.com",
		"GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=test@example.com")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// authEnv hands git the credentials as an extra header through the
// environment, so the token never appears in a URL or on a command line.
func authEnv(user, pass string) []string {
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	return []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.extraHeader",
		"GIT_CONFIG_VALUE_0=Authorization: Basic " + basic}
}

func TestNewValidatesConfig(t *testing.T) {
	requireGit(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want error
	}{
		{"no dir", Config{Token: "x"}, ErrInvalidConfig},
		{"no token", Config{Dir: t.TempDir()}, ErrInvalidConfig},
		{"negative rate limit", Config{Dir: t.TempDir(), Token: "x", RateLimit: -1}, ErrInvalidConfig},
		{"valid", Config{Dir: t.TempDir(), Token: "x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); !errors.Is(err, tc.want) {
				t.Fatalf("New: got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCreateRepoErrors(t *testing.T) {
	f, _ := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	ctx := context.Background()
	for _, tc := range []struct {
		name, owner, repo string
		files             map[string][]byte
		want              error
	}{
		{"exists", "acme", "widgets", nil, ErrRepoExists},
		{"dot-dot owner", "..", "widgets", nil, ErrInvalidName},
		{"slash in name", "acme", "a/b", nil, ErrInvalidName},
		{"file escapes repo", "acme", "escape", map[string][]byte{"../x": nil}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.CreateRepo(ctx, tc.owner, tc.repo, "main", tc.files)
			if tc.want == nil {
				if err == nil {
					t.Fatal("CreateRepo: want an error")
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("CreateRepo: got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := f.Pulls("acme", "nope"); !errors.Is(err, ErrRepoNotFound) {
		t.Fatalf("Pulls of a missing repo: got %v, want ErrRepoNotFound", err)
	}
	if got, want := f.CloneURL("acme", "widgets"), *f.baseURL.Load()+"/git/acme/widgets.git"; got != want {
		t.Fatalf("CloneURL = %q, want %q", got, want)
	}
}

func TestPageAndHealth(t *testing.T) {
	f, srv := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	addBranch(t, f, "acme", "widgets", "feature")
	gh := newClient(t, srv.URL, testToken)
	openPull(t, gh, "acme", "widgets", "feature", "<script>alert(1)</script> Add task")

	for _, tc := range []struct {
		path     string
		status   int
		contains []string
	}{
		{"/healthz", 200, []string{"ok"}},
		{"/", 200, []string{"acme/widgets", "&lt;script&gt;", "/acme/widgets/pull/1", "feature", srv.URL + "/git/acme/widgets.git"}},
		{"/acme/widgets", 200, []string{"#1"}},
		{"/acme/widgets/pull/1", 200, []string{"Add task", "open"}},
		{"/acme/widgets/pull/2", 404, nil},
		{"/acme/nope", 404, nil},
		{"/a/b/c", 404, nil},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			for _, s := range tc.contains {
				if !strings.Contains(string(body), s) {
					t.Errorf("page lacks %q", s)
				}
			}
			if strings.Contains(string(body), testToken) || strings.Contains(string(body), "<script>") {
				t.Error("page shows the token or unescaped input")
			}
		})
	}
}
