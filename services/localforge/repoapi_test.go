package localforge

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
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
