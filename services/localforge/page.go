package localforge

import (
	"html/template"
	"net/http"
	"strconv"
	"strings"
)

// pageTmpl is the whole UI: one self-contained page, no external assets.
// html/template escapes every title and body, which come from API callers.
var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{padding:.25rem .75rem;border-bottom:1px solid #ddd;text-align:left}
code{background:#f4f4f4;padding:0 .25rem}.open{color:#1a7f37}.closed{color:#8250df}
.body{max-width:60rem}.diff{background:#f6f8fa;padding:.5rem;overflow-x:auto;font:12px/1.4 ui-monospace,monospace}
.diff span{display:block;white-space:pre}.add{background:#e6ffec}.del{background:#ffebe9}.hunk{color:#0969da}.meta{color:#57606a;font-weight:bold}
</style></head><body>
<h1><a href="/">localforge</a>{{if ne .Title "localforge"}} · {{.Title}}{{end}}</h1>
{{range .Repos}}
<h2 id="{{.Owner}}/{{.Name}}"><a href="/{{.Owner}}/{{.Name}}">{{.Owner}}/{{.Name}}</a></h2>
<p>Clone: <code>{{.CloneURL}}</code></p>
{{if .Pulls}}<table><tr><th>#</th><th>Title</th><th>Branches</th><th>State</th><th>Head</th><th>Created</th></tr>
{{range .Pulls}}<tr><td><a href="{{.Link}}">#{{.Number}}</a></td><td>{{.Title}}{{if .Draft}} (draft){{end}}</td>
<td><code>{{.Head}}</code> → <code>{{.Base}}</code></td><td class="{{.State}}">{{.State}}</td>
<td><code>{{printf "%.10s" .HeadSHA}}</code></td><td>{{.CreatedAt.Format "2006-01-02 15:04:05Z07:00"}}</td></tr>
{{if $.Single}}<tr><td></td><td colspan="5"><div class="body">{{.Rendered}}</div>
{{if .Diff}}<h3>Files changed</h3><div class="diff">{{range .Diff}}<span class="{{.Kind}}">{{.Text}}</span>{{end}}</div>{{end}}</td></tr>{{end}}
{{end}}</table>{{else}}<p>No pull requests.</p>{{end}}
{{else}}<p>No repositories.</p>{{end}}
</body></html>
`))

type pageData struct {
	Title  string
	Single bool // one PR shown, with its body
	Repos  []pageRepo
}

type pageRepo struct {
	Owner, Name, CloneURL string
	Pulls                 []pagePull
}

type pagePull struct {
	PullRequest
	Link     string
	Rendered template.HTML // the body (one PR's page only)
	Diff     []diffLine
}

// servePage renders "/" (every repository), "/<owner>/<repo>" and
// "/<owner>/<repo>/pull/<n>" (the html_url of a PR).
func (f *Forge) servePage(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	data := pageData{Title: "localforge"}
	number := 0
	var repos []repoRef
	switch {
	case r.URL.Path == "/":
		var err error
		if repos, err = f.listRepos(); err != nil {
			f.log.Error("list repositories", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
	case len(parts) == 2 && f.repoExists(parts[0], parts[1]):
		repos, data.Title = []repoRef{{parts[0], parts[1]}}, parts[0]+"/"+parts[1]
	case len(parts) == 4 && parts[2] == "pull" && f.repoExists(parts[0], parts[1]):
		n, err := strconv.Atoi(parts[3])
		if err != nil || n <= 0 {
			http.NotFound(w, r)
			return
		}
		repos, number, data.Single = []repoRef{{parts[0], parts[1]}}, n, true
		data.Title = parts[0] + "/" + parts[1] + " #" + parts[3]
	default:
		http.NotFound(w, r)
		return
	}
	for _, repo := range repos {
		prs, err := f.Pulls(repo.Owner, repo.Name)
		if err != nil {
			continue // removed while we listed
		}
		pr := pageRepo{Owner: repo.Owner, Name: repo.Name, CloneURL: f.cloneURLFor(r, repo.Owner, repo.Name)}
		for _, p := range prs {
			if number == 0 || p.Number == number {
				link := "/" + repo.Owner + "/" + repo.Name + "/pull/" + strconv.Itoa(p.Number)
				pp := pagePull{PullRequest: p, Link: link}
				if number != 0 {
					pp.Rendered, pp.Diff = renderMarkdown(p.Body), f.pullDiff(r.Context(), repo.Owner, repo.Name, p)
				}
				pr.Pulls = append(pr.Pulls, pp)
			}
		}
		if number != 0 && len(pr.Pulls) == 0 {
			http.NotFound(w, r)
			return
		}
		data.Repos = append(data.Repos, pr)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	// Nothing on the page loads from anywhere; say so to the browser.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	if err := pageTmpl.Execute(w, data); err != nil {
		f.log.Warn("render page", "err", err)
	}
}

// cloneURLFor is CloneURL, falling back to the request's host when no
// BaseURL is configured.
func (f *Forge) cloneURLFor(r *http.Request, owner, name string) string {
	return f.base(r) + "/git/" + owner + "/" + name + ".git"
}
