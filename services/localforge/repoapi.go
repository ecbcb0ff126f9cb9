package localforge

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"path"
	"strings"
)

// Creating repositories over the API, as GitHub's
// POST /orgs/{org}/repos does (https://docs.github.com/en/rest/repos/repos#create-an-organization-repository):
// the body's name, auto_init and default_branch (GitHub's
// auto_init makes a README; here, so does a body with no files, since a
// repository needs a first commit to be cloned from). One extension of
// localforge's own: files, path to base64 content, the first commit's
// files — what `leviathan forge repo create --from DIR` sends.

// maxCreateBody bounds a create request (its files included).
const maxCreateBody = 64 << 20

// RepoRequest is the body of POST /api/v3/orgs/{owner}/repos.
type RepoRequest struct {
	Name          string `json:"name"`
	Description   string `json:"description,omitempty"`
	AutoInit      bool   `json:"auto_init,omitempty"`
	DefaultBranch string `json:"default_branch,omitempty"`
	// Files (localforge only) maps slash-separated paths to their
	// base64 content.
	Files map[string]string `json:"files,omitempty"`
}

// RepoView is GitHub's repository JSON, the fields a client reads.
type RepoView struct {
	apiRepo
	DefaultBranch string `json:"default_branch"`
}

func (f *Forge) repoView(r *http.Request, owner, name, branch string) RepoView {
	base := f.base(r)
	return RepoView{apiRepo: apiRepo{
		ID: stableID(owner + "/" + name), Name: name, FullName: owner + "/" + name,
		Owner:   apiUser{Login: owner, ID: stableID(owner), Type: "Organization"},
		Private: true, HTMLURL: base + "/" + owner + "/" + name, URL: base + "/api/v3/repos/" + owner + "/" + name,
		CloneURL: f.cloneURLFor(r, owner, name),
	}, DefaultBranch: branch}
}

func (f *Forge) createRepo(w http.ResponseWriter, r *http.Request) {
	owner := r.PathValue("owner")
	var req RepoRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCreateBody))
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, apiError{Message: "Problems parsing JSON"})
		return
	}
	invalid := func(field, msg string) {
		writeError(w, http.StatusUnprocessableEntity, apiError{Message: "Repository creation failed.",
			Errors:           []fieldError{{Resource: "Repository", Code: "custom", Field: field, Message: msg}},
			DocumentationURL: docsURL + "/repos/repos#create-an-organization-repository"})
	}
	if !validName(owner) {
		writeNotFound(w)
		return
	}
	if !validName(req.Name) {
		invalid("name", "name must be letters, digits, '.', '-' and '_'")
		return
	}
	branch := req.DefaultBranch
	if branch == "" {
		branch = "main"
	}
	if !validBranch(branch) {
		invalid("default_branch", "default_branch is not a valid branch name")
		return
	}
	files := map[string][]byte{}
	for p, content := range req.Files {
		data, err := base64.StdEncoding.DecodeString(content)
		if err != nil {
			invalid("files", "files["+p+"] is not base64")
			return
		}
		if clean := path.Clean(p); p == "" || clean != p || !isLocalSlashPath(p) {
			invalid("files", "files["+p+"] is not a relative path inside the repository")
			return
		}
		files[p] = data
	}
	if len(files) == 0 || req.AutoInit {
		if _, ok := files["README.md"]; !ok {
			readme := "# " + req.Name + "\n"
			if req.Description != "" {
				readme += "\n" + req.Description + "\n"
			}
			files["README.md"] = []byte(readme)
		}
	}
	err := f.CreateRepo(r.Context(), owner, req.Name, branch, files)
	switch {
	case errors.Is(err, ErrRepoExists):
		invalid("name", "name already exists on this account")
		return
	case err != nil:
		f.internalError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, f.repoView(r, owner, req.Name, branch))
}

func (f *Forge) getRepo(w http.ResponseWriter, r *http.Request) {
	owner, name := r.PathValue("owner"), r.PathValue("repo")
	if !f.repoExists(owner, name) {
		writeNotFound(w)
		return
	}
	branch := "main"
	if head, err := gitOutput(r.Context(), f.RepoDir(owner, name), nil, "symbolic-ref", "--short", "HEAD"); err == nil {
		branch = strings.TrimSpace(string(head))
	}
	writeJSON(w, http.StatusOK, f.repoView(r, owner, name, branch))
}

// isLocalSlashPath: no leading '/', no '..' element, no '.git' element.
func isLocalSlashPath(p string) bool {
	if strings.HasPrefix(p, "/") {
		return false
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." || el == "." || el == "" || el == ".git" {
			return false
		}
	}
	return true
}

// validBranch is a conservative check of a branch name.
func validBranch(b string) bool {
	if b == "" || strings.HasPrefix(b, "-") || strings.HasPrefix(b, "/") || strings.HasSuffix(b, "/") ||
		strings.HasSuffix(b, ".lock") || strings.Contains(b, "..") || strings.Contains(b, "//") || strings.Contains(b, "@{") {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c == 0x7f || strings.ContainsRune("~^:?*[\\", c) {
			return false
		}
	}
	return true
}
