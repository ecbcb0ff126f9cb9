package api

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/leviathan-dev/leviathan/services/projector/graph"
)

// The page is rendered on the server from embedded templates and CSS: no
// script, no external asset. Its Content-Security-Policy forbids scripts
// altogether.
//
// Signing in: the token is typed once into a form that POSTs to /login.
// The server checks it (constant time) and answers with a session cookie
// that is HttpOnly, SameSite=Strict, Secure over TLS, and holds not the
// token but an expiry and an HMAC of it keyed by the token: a stolen
// cookie is worth 12 hours of reading the page, not the API, and changing
// the token ends every session. The token never appears in a URL, a
// redirect or a log line.

//go:embed web
var webFS embed.FS

var (
	pageTmpl  = template.Must(template.ParseFS(webFS, "web/page.html"))
	loginTmpl = template.Must(template.ParseFS(webFS, "web/login.html"))
)

const (
	sessionCookie = "leviathan_session"
	sessionTTL    = 12 * time.Hour
	pageAttempts  = 20 // rows of the attempts table
	pageGraph     = 8  // attempts drawn in the graph
	pageFailures  = 10
)

// securityHeaders are sent with every page.
func securityHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
}

func (a *API) pageRoutes(mux *http.ServeMux) {
	mux.Handle("/{$}", methods{"GET": a.page})
	mux.Handle("/login", methods{"POST": a.login})
	mux.Handle("/logout", methods{"POST": a.logout})
	css, _ := webFS.ReadFile("web/style.css")
	mux.Handle("/static/style.css", methods{"GET": func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		w.Header().Set("Cache-Control", "max-age=300")
		_, _ = w.Write(css)
	}})
}

// session is the cookie value for a session ending at exp.
func (a *API) session(exp int64) string {
	mac := hmac.New(sha256.New, []byte(a.cfg.Token))
	fmt.Fprintf(mac, "leviathan-session|%d", exp)
	return strconv.FormatInt(exp, 10) + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (a *API) signedIn(r *http.Request) bool {
	c, err := r.Cookie(sessionCookie)
	if err != nil || a.cfg.Token == "" {
		return false
	}
	expS, _, ok := strings.Cut(c.Value, ".")
	exp, err := strconv.ParseInt(expS, 10, 64)
	if !ok || err != nil || time.Now().Unix() > exp {
		return false
	}
	return hmac.Equal([]byte(c.Value), []byte(a.session(exp)))
}

// sameOrigin rejects a cross-site form post. SameSite=Strict already keeps
// the cookie off such a request; this also refuses login CSRF.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || origin == "null" {
		return origin == ""
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host == r.Host
}

func (a *API) login(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	if !sameOrigin(r) {
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil || !a.validToken(r.PostFormValue("token")) {
		a.logger.Info("control plane: failed sign-in", "remote", r.RemoteAddr)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_ = loginTmpl.Execute(w, map[string]string{"Error": "That token is not valid.", "TokenFile": a.cfg.TokenFile})
		return
	}
	exp := time.Now().Add(sessionTTL).Unix()
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: a.session(exp), Path: "/", MaxAge: int(sessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (a *API) logout(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	if !sameOrigin(r) {
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (a *API) page(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if !a.signedIn(r) {
		_ = loginTmpl.Execute(w, map[string]string{"TokenFile": a.cfg.TokenFile})
		return
	}
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, a.pageData()); err != nil {
		a.logger.Error("control plane: page", "err", err)
		http.Error(w, "cannot render the page", http.StatusInternalServerError)
		return
	}
	_, _ = buf.WriteTo(w)
}

type pageData struct {
	Ready    bool
	Applied  uint64
	Counts   graph.Counts
	Pic      svgPicture
	Attempts []pageAttempt
	Failures []pageFailure
}

type pageAttempt struct {
	graph.AttemptItem
	Started  string
	Timeline []pageStep
	PRURL    string
	PRNumber int64
}

type pageStep struct {
	Type, Offset, Kind, At, Actor string
}

type pageFailure struct {
	graph.FailureItem
	When string
}

func (a *API) pageData() pageData {
	g := a.p.Graph()
	d := pageData{Ready: a.p.Ready(), Applied: g.Seq(), Counts: g.Counts(), Pic: layout(g.Picture(pageGraph))}
	for _, it := range g.RecentAttempts(pageAttempts) {
		pa := pageAttempt{AttemptItem: it, Started: it.Timestamp.Format("2006-01-02 15:04:05 UTC")}
		if it.PRURL != nil {
			pa.PRURL, pa.PRNumber = *it.PRURL, *it.PRNumber
		}
		for _, s := range it.Steps {
			pa.Timeline = append(pa.Timeline, pageStep{
				Type: s.EventType, Offset: offset(s.Timestamp.Sub(it.Timestamp.Time)), Kind: stepKind(s.EventType),
				At: s.Timestamp.Format(time.RFC3339Nano), Actor: s.ActorID,
			})
		}
		d.Attempts = append(d.Attempts, pa)
	}
	for _, f := range g.Failures("", pageFailures) {
		d.Failures = append(d.Failures, pageFailure{FailureItem: f, When: f.Timestamp.Format("2006-01-02 15:04:05")})
	}
	return d
}

// offset is a step's time since the attempt's first event.
func offset(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return fmt.Sprintf("+%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("+%.1fs", d.Seconds())
	}
	return "+" + d.Round(time.Second).String()
}

func stepKind(t string) string {
	switch t {
	case "attempt.succeeded", "pr.created":
		return "k-ok"
	case "attempt.failed", "attempt.rejected":
		return "k-bad"
	case "attempt.invalidated", "backlog.unchanged":
		return "k-warn"
	case "attempt.started":
		return "k-run"
	}
	return ""
}

// svgPicture is a graph.Picture laid out for drawing.
type svgPicture struct {
	Width, Height int
	Columns       []svgColumn
	Nodes         []svgNode
	Edges         []svgEdge
	Attempts      []struct{}
}

type svgColumn struct {
	X     int
	Title string
}

type svgNode struct {
	ID, Type, Label, Status string
	X, Y, W, H, TX, TY      int
}

type svgEdge struct {
	Type, Path, Marker string
}

// Geometry of the drawing: five columns of boxes, left to right Target,
// Task, Attempt, Commit, PullRequest, so DEPENDS_ON edges point left and
// PRODUCED edges right.
const (
	colWidth  = 230
	boxWidth  = 196
	boxHeight = 28
	rowHeight = 40
	topMargin = 36
	margin    = 12
)

var columnTitles = [5]string{graph.NodeTarget, graph.NodeTask, graph.NodeAttempt, graph.NodeCommit, graph.NodePullRequest}

func layout(pic graph.Picture) svgPicture {
	out := svgPicture{Attempts: make([]struct{}, len(pic.Columns[2]))}
	pos := map[string]svgNode{}
	rows := 0
	for c, col := range pic.Columns {
		x := margin + c*colWidth
		out.Columns = append(out.Columns, svgColumn{X: x, Title: columnTitles[c]})
		rows = max(rows, len(col))
		for i, n := range col {
			y := topMargin + i*rowHeight
			sn := svgNode{ID: n.ID, Type: columnTitles[c], Label: ellipsis(n.Label, 28), Status: n.Status,
				X: x, Y: y, W: boxWidth, H: boxHeight, TX: x + 8, TY: y + 18}
			pos[n.ID] = sn
			out.Nodes = append(out.Nodes, sn)
		}
	}
	if len(out.Nodes) == 0 {
		return svgPicture{}
	}
	for _, e := range pic.Edges {
		from, ok1 := pos[e.From]
		to, ok2 := pos[e.To]
		if !ok1 || !ok2 {
			continue
		}
		y1, y2 := from.Y+boxHeight/2, to.Y+boxHeight/2
		var x1, x2 int
		if to.X < from.X { // pointing left
			x1, x2 = from.X, to.X+boxWidth
		} else {
			x1, x2 = from.X+boxWidth, to.X
		}
		mid := (x1 + x2) / 2
		marker := "arrow"
		if e.Type == graph.EdgeProduced {
			marker = "arrow-PRODUCED"
		}
		out.Edges = append(out.Edges, svgEdge{Type: e.Type, Marker: marker,
			Path: fmt.Sprintf("M%d,%d C%d,%d %d,%d %d,%d", x1, y1, mid, y1, mid, y2, x2, y2)})
	}
	out.Width = 2*margin + 4*colWidth + boxWidth
	out.Height = topMargin + rows*rowHeight
	return out
}

func ellipsis(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
