package localforge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-github/v60/github"
)

func postJSON(t *testing.T, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

// TestCreateRepoOverTheAPI: a repository made with POST /orgs/{o}/repos
// can be cloned with the forge token at once, holds the files sent (or a
// README), and is refused a second time as GitHub refuses it.
func TestCreateRepoOverTheAPI(t *testing.T) {
	_, srv := startForge(t, Config{})
	files := map[string]string{
		".leviathan/backlog.yaml": base64.StdEncoding.EncodeToString([]byte("tasks: []\n")),
		"docs/guide.md":           base64.StdEncoding.EncodeToString([]byte("# Guide\n")),
	}
	body, _ := json.Marshal(RepoRequest{Name: "atlas", Files: files})
	status, repo := postJSON(t, srv.URL+"/api/v3/orgs/acme/repos", testToken, string(body))
	if status != http.StatusCreated || repo["full_name"] != "acme/atlas" || repo["default_branch"] != "main" ||
		repo["clone_url"] != srv.URL+"/git/acme/atlas.git" {
		t.Fatalf("create: %d %v", status, repo)
	}
	work := t.TempDir()
	git(t, work, authEnv("any-user", testToken), "clone", "--quiet", repo["clone_url"].(string), "c")
	if got := git(t, work+"/c", nil, "ls-files"); got != ".leviathan/backlog.yaml\ndocs/guide.md" {
		t.Fatalf("files %q", got)
	}

	// No files: a README, as auto_init makes; another branch.
	status, repo = postJSON(t, srv.URL+"/api/v3/orgs/acme/repos", testToken, `{"name":"empty","default_branch":"trunk","description":"d"}`)
	if status != http.StatusCreated || repo["default_branch"] != "trunk" {
		t.Fatalf("create without files: %d %v", status, repo)
	}
	git(t, work, authEnv("x", testToken), "clone", "--quiet", "--branch", "trunk", repo["clone_url"].(string), "e")
	if got := git(t, work+"/e", nil, "show", "HEAD:README.md"); got != "# empty\n\nd" {
		t.Fatalf("README %q", got)
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v3/repos/acme/empty", nil)
	req.Header.Set("Authorization", "token "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var got RepoView
	_ = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if resp.StatusCode != 200 || got.DefaultBranch != "trunk" || got.FullName != "acme/empty" {
		t.Fatalf("get: %d %+v", resp.StatusCode, got)
	}

	for _, c := range []struct {
		body, token string
		status      int
		field       string
	}{
		{`{"name":"atlas"}`, testToken, 422, "name"},
		{`{"name":"a/b"}`, testToken, 422, "name"},
		{`{"name":".."}`, testToken, 422, "name"},
		{`{"name":"x","default_branch":"a..b"}`, testToken, 422, "default_branch"},
		{`{"name":"x","files":{"../up":"eA=="}}`, testToken, 422, "files"},
		{`{"name":"x","files":{".git/config":"eA=="}}`, testToken, 422, "files"},
		{`{"name":"x","files":{"a":"not base64!"}}`, testToken, 422, "files"},
		{`{"name":`, testToken, 400, ""},
		{`{"name":"y"}`, "wrong", 401, ""},
	} {
		status, out := postJSON(t, srv.URL+"/api/v3/orgs/acme/repos", c.token, c.body)
		if status != c.status {
			t.Errorf("%s: %d %v, want %d", c.body, status, out, c.status)
			continue
		}
		if c.field != "" {
			errs, _ := out["errors"].([]any)
			if len(errs) != 1 || errs[0].(map[string]any)["field"] != c.field {
				t.Errorf("%s: %v, want an error on %s", c.body, out, c.field)
			}
		}
	}
}

// TestPullPageRendersBodyAndDiff: a pull request's page shows its body as
// markdown, without the hidden marker, escaped, and the diff.
func TestPullPageRendersBodyAndDiff(t *testing.T) {
	f, srv := startForge(t, Config{})
	createRepo(t, f, "acme", "widgets")
	work := t.TempDir()
	auth := authEnv("x", testToken)
	git(t, work, auth, "clone", "--quiet", srv.URL+"/git/acme/widgets.git", "w")
	if err := os.WriteFile(work+"/w/.leviathan/backlog.yaml", []byte("tasks:\n  - id: T-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, work+"/w", nil, "checkout", "--quiet", "-b", "feature")
	git(t, work+"/w", nil, "commit", "--quiet", "-am", "Propose T-1")
	git(t, work+"/w", auth, "push", "--quiet", "origin", "feature")
	gh := newClient(t, srv.URL, testToken)
	_, _, err := gh.PullRequests.Create(context.Background(), "acme", "widgets", &github.NewPullRequest{
		Title: github.String("Add T-1"), Head: github.String("feature"), Base: github.String("main"),
		Body: github.String("## Task T-1\n\n**Priority:** high <b>x</b>\n\n- `a.yaml`\n- two\n\n<!-- leviathan:task=T-1 attempt=a-1 -->\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/acme/widgets/pull/1")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"<h4>Task T-1</h4>", "<strong>Priority:</strong> high &lt;b&gt;x&lt;/b&gt;", "<li><code>a.yaml</code></li>",
		`<span class="add">&#43;  - id: T-1</span>`, `<span class="del">-tasks: []</span>`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("page lacks %q\n%s", want, page)
		}
	}
	if strings.Contains(string(page), "leviathan:task") || strings.Contains(string(page), "<b>") {
		t.Errorf("page shows the marker or unescaped markup:\n%s", page)
	}
}

// TestStaleRefLocksAreCleared: a ref lock a killed push left behind does
// not block the ref forever: a push clears it once it is old, and a
// restart clears every one.
func TestStaleRefLocksAreCleared(t *testing.T) {
	dir := t.TempDir()
	f, srv := startForge(t, Config{Dir: dir})
	createRepo(t, f, "acme", "widgets")
	lock := f.RepoDir("acme", "widgets") + "/refs/heads/feature.lock"
	work := t.TempDir()
	auth := authEnv("x", testToken)
	git(t, work, auth, "clone", "--quiet", srv.URL+"/git/acme/widgets.git", "w")
	git(t, work+"/w", nil, "checkout", "--quiet", "-b", "feature")
	git(t, work+"/w", nil, "commit", "--quiet", "--allow-empty", "-m", "work")

	// A fresh lock is someone's update in progress: the push waits for it
	// (here: fails), it is not taken away.
	if err := os.WriteFile(lock, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := tryGit(work+"/w", auth, "push", "--quiet", "origin", "feature"); err == nil {
		t.Fatalf("push through a fresh lock:\n%s", out)
	}
	// An old one was left by a killed update: cleared, the push goes through.
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(lock, old, old); err != nil {
		t.Fatal(err)
	}
	git(t, work+"/w", auth, "push", "--quiet", "origin", "feature")

	// At start every lock is stale: no git process runs yet.
	if err := os.WriteFile(f.RepoDir("acme", "widgets")+"/refs/heads/other.lock", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Dir: dir, Token: testToken}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.RepoDir("acme", "widgets") + "/refs/heads/other.lock"); !os.IsNotExist(err) {
		t.Fatalf("the lock is still there after a restart: %v", err)
	}
}
