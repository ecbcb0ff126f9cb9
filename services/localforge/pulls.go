package localforge

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// login is the user every PR is attributed to: the forge has one token,
// so it has one user.
const login = "leviathan"

const docsURL = "https://docs.github.com/rest"

// Pulls returns the pull request records of owner/name by number, with
// the current branch tips for open PRs.
func (f *Forge) Pulls(owner, name string) ([]PullRequest, error) {
	if !f.repoExists(owner, name) {
		return nil, fmt.Errorf("%w: %s/%s", ErrRepoNotFound, owner, name)
	}
	f.mu.Lock()
	prs := f.pulls.list(owner, name)
	f.mu.Unlock()
	tips, err := branchTips(context.Background(), f.RepoDir(owner, name))
	if err != nil {
		return nil, err
	}
	for i := range prs {
		prs[i] = withTips(prs[i], tips)
	}
	return prs, nil
}

// withTips returns pr with the current branch tips if it is open.
func withTips(pr PullRequest, tips map[string]string) PullRequest {
	if pr.State == StateOpen {
		pr.HeadSHA = cmp.Or(tips[pr.Head], pr.HeadSHA)
		pr.BaseSHA = cmp.Or(tips[pr.Base], pr.BaseSHA)
	}
	return pr
}

// apiRoutes serves the GitHub REST subset the github driver uses. Paths
// are those go-github requests under a GitHub Enterprise base URL.
func (f *Forge) apiRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v3/repos/{owner}/{repo}/pulls", f.createPull)
	mux.HandleFunc("GET /api/v3/repos/{owner}/{repo}/pulls", f.listPulls)
	mux.HandleFunc("GET /api/v3/repos/{owner}/{repo}/pulls/{number}", f.getPull)
	mux.HandleFunc("PATCH /api/v3/repos/{owner}/{repo}/pulls/{number}", f.editPull)
	mux.HandleFunc("POST /api/v3/orgs/{owner}/repos", f.createRepo)
	mux.HandleFunc("GET /api/v3/repos/{owner}/{repo}", f.getRepo)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// GitHub answers unknown routes with its JSON 404, not text.
		if _, pattern := mux.Handler(r); pattern == "" {
			writeNotFound(w)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// repoTips resolves the repository named in the path and its branch tips,
// answering 404 itself when the repository does not exist.
func (f *Forge) repoTips(w http.ResponseWriter, r *http.Request) (owner, name string, tips map[string]string, ok bool) {
	owner, name = r.PathValue("owner"), r.PathValue("repo")
	if !f.repoExists(owner, name) {
		writeNotFound(w)
		return "", "", nil, false
	}
	tips, err := branchTips(r.Context(), f.RepoDir(owner, name))
	if err != nil {
		f.internalError(w, r, err)
		return "", "", nil, false
	}
	return owner, name, tips, true
}

// createPull implements POST /repos/{owner}/{repo}/pulls.
func (f *Forge) createPull(w http.ResponseWriter, r *http.Request) {
	owner, name, tips, ok := f.repoTips(w, r)
	if !ok {
		return
	}
	var in struct {
		Title, Head, Base, Body string
		Draft                   bool
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, apiError{Message: "Problems parsing JSON"})
		return
	}
	for _, m := range []struct{ field, value string }{{"title", in.Title}, {"head", in.Head}, {"base", in.Base}} {
		if m.value == "" {
			writeValidation(w, fieldError{Resource: "PullRequest", Code: "missing_field", Field: m.field})
			return
		}
	}
	// A head of another owner would name a fork, and this forge has none.
	head, headOK := in.Head, true
	if o, b, cut := strings.Cut(in.Head, ":"); cut {
		head, headOK = b, strings.EqualFold(o, owner)
	}
	headSHA, exists := tips[head]
	if !headOK || !exists {
		writeValidation(w, fieldError{Resource: "PullRequest", Code: "invalid", Field: "head"})
		return
	}
	baseSHA, exists := tips[in.Base]
	if !exists {
		writeValidation(w, fieldError{Resource: "PullRequest", Code: "invalid", Field: "base"})
		return
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	prs := f.pulls.list(owner, name)
	for _, pr := range prs {
		if pr.State == StateOpen && pr.Head == head && pr.Base == in.Base {
			writeValidation(w, fieldError{Resource: "PullRequest", Code: "custom",
				Message: "A pull request already exists for " + owner + ":" + head + "."})
			return
		}
	}
	// GitHub refuses a PR that would merge nothing.
	if ahead, err := hasCommitsBetween(r.Context(), f.RepoDir(owner, name), baseSHA, headSHA); err != nil {
		f.internalError(w, r, err)
		return
	} else if !ahead {
		writeValidation(w, fieldError{Resource: "PullRequest", Code: "custom",
			Message: "No commits between " + in.Base + " and " + head})
		return
	}
	now := time.Now().UTC().Truncate(time.Second) // GitHub timestamps have second precision
	pr := PullRequest{
		Number: f.pulls.nextNumber(owner, name), Title: in.Title, Body: in.Body,
		Head: head, Base: in.Base, HeadSHA: headSHA, BaseSHA: baseSHA,
		State: StateOpen, Draft: in.Draft, User: login, CreatedAt: now, UpdatedAt: now,
	}
	if err := f.pulls.put(owner, name, append(prs, pr)); err != nil {
		f.internalError(w, r, err)
		return
	}
	f.log.Info("pull request opened", "owner", owner, "repo", name, "number", pr.Number, "head", head, "base", in.Base)
	writeJSON(w, http.StatusCreated, f.toAPI(r, owner, name, pr))
}

// listPulls implements GET /repos/{owner}/{repo}/pulls with GitHub's
// filters (state, head "owner:branch", base), sorting and pagination.
func (f *Forge) listPulls(w http.ResponseWriter, r *http.Request) {
	owner, name, tips, ok := f.repoTips(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	state := cmp.Or(q.Get("state"), StateOpen)
	head := q.Get("head")
	if head != "" && !strings.Contains(head, ":") {
		head = owner + ":" + head
	}
	f.mu.Lock()
	all := f.pulls.list(owner, name)
	f.mu.Unlock()
	var prs []PullRequest
	for _, pr := range all {
		if (state == "all" || pr.State == state) &&
			(head == "" || strings.EqualFold(head, owner+":"+pr.Head)) &&
			(q.Get("base") == "" || q.Get("base") == pr.Base) {
			prs = append(prs, withTips(pr, tips))
		}
	}
	// GitHub sorts by creation, newest first, unless asked otherwise; the
	// default direction is asc for every other sort key.
	sortKey := cmp.Or(q.Get("sort"), "created")
	desc := q.Get("direction") == "desc" || (q.Get("direction") == "" && sortKey == "created")
	slices.SortStableFunc(prs, func(a, b PullRequest) int {
		c := cmp.Compare(a.Number, b.Number) // creation order
		if sortKey == "updated" {
			c = cmp.Or(a.UpdatedAt.Compare(b.UpdatedAt), c)
		}
		if desc {
			return -c
		}
		return c
	})
	perPage := min(max(atoiOr(q.Get("per_page"), 30), 1), 100)
	page := max(atoiOr(q.Get("page"), 1), 1)
	last := max((len(prs)+perPage-1)/perPage, 1)
	setLinks(w, f.base(r), r.URL, page, last)
	out := []apiPull{} // an empty page is [], never null
	lo := min((page-1)*perPage, len(prs))
	for _, pr := range prs[lo:min(lo+perPage, len(prs))] {
		out = append(out, f.toAPI(r, owner, name, pr))
	}
	writeConditional(w, r, out)
}

// writeConditional answers a list as GitHub does: with an ETag of the
// page, and 304 Not Modified, without a body, to a request whose
// If-None-Match names it (which the API's middleware does not count
// against the rate limit, as GitHub does not).
func writeConditional(w http.ResponseWriter, r *http.Request, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeJSON(w, http.StatusOK, v)
		return
	}
	body = append(body, '\n') // as writeJSON's encoder ends it
	sum := sha256.Sum256(body)
	etag := `W/"` + hex.EncodeToString(sum[:16]) + `"`
	w.Header().Set("ETag", etag)
	if etagListed(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// etagListed reports whether an If-None-Match header names etag, by the
// weak comparison (RFC 9110 13.1.2): "*" or any of its tags, W/ aside.
func etagListed(header, etag string) bool {
	if header == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	for tag := range strings.SplitSeq(header, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" || strings.TrimPrefix(tag, "W/") == want {
			return true
		}
	}
	return false
}

// getPull implements GET /repos/{owner}/{repo}/pulls/{number}.
func (f *Forge) getPull(w http.ResponseWriter, r *http.Request) {
	owner, name, tips, ok := f.repoTips(w, r)
	if !ok {
		return
	}
	f.mu.Lock()
	pr, i := findPull(f.pulls.list(owner, name), r.PathValue("number"))
	f.mu.Unlock()
	if i < 0 {
		writeNotFound(w)
		return
	}
	writeJSON(w, http.StatusOK, f.toAPI(r, owner, name, withTips(pr, tips)))
}

// editPull implements PATCH /repos/{owner}/{repo}/pulls/{number}: title,
// body, base and state, so tests can act as a human closing a PR.
func (f *Forge) editPull(w http.ResponseWriter, r *http.Request) {
	owner, name, tips, ok := f.repoTips(w, r)
	if !ok {
		return
	}
	var in struct{ Title, Body, State, Base *string }
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, apiError{Message: "Problems parsing JSON"})
		return
	}
	if in.State != nil && *in.State != StateOpen && *in.State != StateClosed {
		writeValidation(w, fieldError{Resource: "PullRequest", Code: "invalid", Field: "state"})
		return
	}
	if in.Base != nil && tips[*in.Base] == "" {
		writeValidation(w, fieldError{Resource: "PullRequest", Code: "invalid", Field: "base"})
		return
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	prs := f.pulls.list(owner, name)
	pr, i := findPull(prs, r.PathValue("number"))
	if i < 0 {
		writeNotFound(w)
		return
	}
	now := time.Now().UTC().Truncate(time.Second)
	pr.Title = deref(in.Title, pr.Title)
	pr.Body = deref(in.Body, pr.Body)
	pr.Base = deref(in.Base, pr.Base)
	if in.State != nil && *in.State != pr.State {
		pr.State = *in.State
		pr.ClosedAt = time.Time{}
		if pr.State == StateClosed {
			pr.ClosedAt = now
		}
	}
	if pr.State == StateOpen {
		for _, other := range prs {
			if other.Number != pr.Number && other.State == StateOpen && other.Head == pr.Head && other.Base == pr.Base {
				writeValidation(w, fieldError{Resource: "PullRequest", Code: "custom",
					Message: "A pull request already exists for " + owner + ":" + pr.Head + "."})
				return
			}
		}
	}
	// Record the tips as of this change; a closed PR keeps them for good.
	pr.HeadSHA = cmp.Or(tips[pr.Head], pr.HeadSHA)
	pr.BaseSHA = cmp.Or(tips[pr.Base], pr.BaseSHA)
	pr.UpdatedAt = now
	prs[i] = pr
	if err := f.pulls.put(owner, name, prs); err != nil {
		f.internalError(w, r, err)
		return
	}
	f.log.Info("pull request edited", "owner", owner, "repo", name, "number", pr.Number, "state", pr.State)
	writeJSON(w, http.StatusOK, f.toAPI(r, owner, name, pr))
}

// findPull returns the record numbered by the path segment, and its index
// (-1 when absent or not a number).
func findPull(prs []PullRequest, number string) (PullRequest, int) {
	n, err := strconv.Atoi(number)
	if err != nil {
		return PullRequest{}, -1
	}
	i, found := slices.BinarySearchFunc(prs, n, func(pr PullRequest, n int) int { return pr.Number - n })
	if !found {
		return PullRequest{}, -1
	}
	return prs[i], i
}

// GitHub's JSON shapes, restricted to the fields go-github users read.
type (
	apiUser struct {
		Login string `json:"login"`
		ID    int64  `json:"id"`
		Type  string `json:"type"`
	}
	apiRepo struct {
		ID       int64   `json:"id"`
		Name     string  `json:"name"`
		FullName string  `json:"full_name"`
		Owner    apiUser `json:"owner"`
		Private  bool    `json:"private"`
		HTMLURL  string  `json:"html_url"`
		URL      string  `json:"url"`
		CloneURL string  `json:"clone_url"`
	}
	apiBranch struct {
		Label string  `json:"label"`
		Ref   string  `json:"ref"`
		SHA   string  `json:"sha"`
		User  apiUser `json:"user"`
		Repo  apiRepo `json:"repo"`
	}
	apiPull struct {
		ID        int64      `json:"id"`
		Number    int        `json:"number"`
		URL       string     `json:"url"`
		HTMLURL   string     `json:"html_url"`
		DiffURL   string     `json:"diff_url"`
		PatchURL  string     `json:"patch_url"`
		IssueURL  string     `json:"issue_url"`
		State     string     `json:"state"`
		Locked    bool       `json:"locked"`
		Title     string     `json:"title"`
		Body      string     `json:"body"`
		User      apiUser    `json:"user"`
		Draft     bool       `json:"draft"`
		Merged    bool       `json:"merged"`
		Head      apiBranch  `json:"head"`
		Base      apiBranch  `json:"base"`
		CreatedAt time.Time  `json:"created_at"`
		UpdatedAt time.Time  `json:"updated_at"`
		ClosedAt  *time.Time `json:"closed_at"`
		MergedAt  *time.Time `json:"merged_at"`
	}
	apiError struct {
		Message          string       `json:"message"`
		Errors           []fieldError `json:"errors,omitempty"`
		DocumentationURL string       `json:"documentation_url"`
	}
	fieldError struct {
		Resource string `json:"resource"`
		Code     string `json:"code"`
		Field    string `json:"field,omitempty"`
		Message  string `json:"message,omitempty"`
	}
)

// toAPI renders a record as GitHub's pull request JSON.
func (f *Forge) toAPI(r *http.Request, owner, name string, pr PullRequest) apiPull {
	base := f.base(r)
	repoAPI := base + "/api/v3/repos/" + owner + "/" + name
	htmlURL := fmt.Sprintf("%s/%s/%s/pull/%d", base, owner, name, pr.Number)
	ownerUser := apiUser{Login: owner, ID: stableID(owner), Type: "User"}
	repo := apiRepo{
		ID: stableID(owner + "/" + name), Name: name, FullName: owner + "/" + name, Owner: ownerUser,
		Private: true, HTMLURL: base + "/" + owner + "/" + name, URL: repoAPI, CloneURL: f.cloneURLFor(r, owner, name),
	}
	out := apiPull{
		ID:     stableID(owner+"/"+name)<<20 | int64(pr.Number),
		Number: pr.Number, URL: fmt.Sprintf("%s/pulls/%d", repoAPI, pr.Number),
		HTMLURL: htmlURL, DiffURL: htmlURL + ".diff", PatchURL: htmlURL + ".patch",
		IssueURL: fmt.Sprintf("%s/issues/%d", repoAPI, pr.Number),
		State:    pr.State, Title: pr.Title, Body: pr.Body, Draft: pr.Draft,
		User:      apiUser{Login: pr.User, ID: stableID(pr.User), Type: "User"},
		Head:      apiBranch{Label: owner + ":" + pr.Head, Ref: pr.Head, SHA: pr.HeadSHA, User: ownerUser, Repo: repo},
		Base:      apiBranch{Label: owner + ":" + pr.Base, Ref: pr.Base, SHA: pr.BaseSHA, User: ownerUser, Repo: repo},
		CreatedAt: pr.CreatedAt, UpdatedAt: pr.UpdatedAt,
	}
	if !pr.ClosedAt.IsZero() {
		out.ClosedAt = &pr.ClosedAt
	}
	return out
}

// stableID derives a positive id from a name, so ids survive restarts
// without being stored.
func stableID(s string) int64 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return int64(h.Sum32() >> 1)
}

// setLinks writes GitHub's pagination Link header, which go-github turns
// into Response.NextPage and friends.
func setLinks(w http.ResponseWriter, base string, u *url.URL, page, last int) {
	link := func(p int, rel string) string {
		q := u.Query()
		q.Set("page", strconv.Itoa(p))
		return fmt.Sprintf(`<%s%s?%s>; rel="%s"`, base, u.Path, q.Encode(), rel)
	}
	var links []string
	if page < last {
		links = append(links, link(page+1, "next"), link(last, "last"))
	}
	if page > 1 {
		links = append(links, link(1, "first"), link(min(page-1, last), "prev"))
	}
	if len(links) > 0 {
		w.Header().Set("Link", strings.Join(links, ", "))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client has gone if this fails
}

func writeError(w http.ResponseWriter, status int, e apiError) {
	e.DocumentationURL = cmp.Or(e.DocumentationURL, docsURL)
	writeJSON(w, status, e)
}

func writeNotFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, apiError{Message: "Not Found"})
}

// writeValidation writes GitHub's 422 "Validation Failed" with one error.
func writeValidation(w http.ResponseWriter, e fieldError) {
	writeError(w, http.StatusUnprocessableEntity, apiError{
		Message: "Validation Failed", Errors: []fieldError{e},
		DocumentationURL: docsURL + "/pulls/pulls",
	})
}

// internalError logs err (which may name paths, never the token) and
// answers 500 without details.
func (f *Forge) internalError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	f.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, apiError{Message: "Server Error"})
}

func atoiOr(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return def
}

func deref(p *string, def string) string {
	if p != nil {
		return *p
	}
	return def
}
