package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events/eventgen"
	"github.com/leviathan-dev/leviathan/services/projector"
)

// noRedirect is a client that shows redirects instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func postForm(t *testing.T, r *running, path string, form url.Values, origin string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", r.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func getPage(t *testing.T, r *running, cookie *http.Cookie) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", r.srv.URL+"/", nil)
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

func TestLoginSetsASessionCookie(t *testing.T) {
	res := setupStream(t)
	publish(t, res, eventgen.Stream(50))
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)

	status, body, h := getPage(t, r, nil)
	if status != 200 || !strings.Contains(body, `action="/login"`) || strings.Contains(body, "Recent attempts") {
		t.Fatalf("signed out: %d %s", status, body)
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script-src") {
		t.Fatalf("CSP %q", csp)
	}
	if resp := postForm(t, r, "/login", url.Values{"token": {"wrong"}}, ""); resp.StatusCode != 401 || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token: %d %v", resp.StatusCode, resp.Cookies())
	}
	if resp := postForm(t, r, "/login", url.Values{"token": {testToken}}, "https://evil.example"); resp.StatusCode != 403 {
		t.Fatalf("cross-origin login: %d", resp.StatusCode)
	}
	resp := postForm(t, r, "/login", url.Values{"token": {testToken}}, r.srv.URL)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" || len(resp.Cookies()) != 1 {
		t.Fatalf("login: %d %v", resp.StatusCode, resp.Header)
	}
	c := resp.Cookies()[0]
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.MaxAge <= 0 ||
		strings.Contains(c.Value, testToken) || strings.Contains(resp.Header.Get("Location"), testToken) {
		t.Fatalf("cookie %+v", c)
	}
	status, body, _ = getPage(t, r, &http.Cookie{Name: c.Name, Value: c.Value})
	if status != 200 || !strings.Contains(body, "Recent attempts") || !strings.Contains(body, "<svg") || strings.Contains(body, testToken) {
		t.Fatalf("signed in: %d", status)
	}
	// A forged or expired session is no session.
	exp, mac, _ := strings.Cut(c.Value, ".")
	other := "A"
	if mac[0] == 'A' {
		other = "B"
	}
	for _, v := range []string{exp + "." + other + mac[1:], "1." + mac, "", "garbage"} {
		if _, body, _ := getPage(t, r, &http.Cookie{Name: c.Name, Value: v}); !strings.Contains(body, `action="/login"`) {
			t.Errorf("session %q accepted", v)
		}
	}
	if resp := postForm(t, r, "/logout", nil, ""); resp.StatusCode != http.StatusSeeOther || resp.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("logout: %d %v", resp.StatusCode, resp.Cookies())
	}
	// The session cookie opens the page, not the API.
	req, _ := http.NewRequest("GET", r.srv.URL+"/v1/graph/summary", nil)
	req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != 401 {
		t.Fatalf("API with the cookie: %d", resp.StatusCode)
	}
}

// chromiumPath finds headless Chromium, which `make test` installs when it
// is missing (.ci/test-deps). Without it the test fails, unless
// LEVIATHAN_SKIP_BROWSER=1 says to skip it on purpose.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("LEVIATHAN_SKIP_BROWSER") == "1" {
		t.Skip("chromium is not installed and LEVIATHAN_SKIP_BROWSER=1")
	}
	t.Fatal("chromium is not installed: run `make test` (it installs it with apt-get), install it yourself, or set LEVIATHAN_SKIP_BROWSER=1 to skip this test")
	return ""
}

// TestPageInChromium signs in to the page in headless Chromium as a person
// would (types the token into the form and presses Enter), then checks
// what the page shows and takes a screenshot.
//
// Chromium is driven over the DevTools protocol on a pipe
// (--remote-debugging-pipe: file descriptors 3 and 4), so the token goes
// from the test to the browser's form without touching a URL, the
// command line, a file or a log. Set LEVIATHAN_SCREENSHOT to a file name to
// keep the picture.
func TestPageInChromium(t *testing.T) {
	bin := chromiumPath(t)
	res := setupStream(t)
	var evs = eventgen.Attempt(0, eventgen.Succeeded)
	evs = append(evs, eventgen.Attempt(1, eventgen.Succeeded)...)
	evs = append(evs, eventgen.Attempt(45, eventgen.Failed)...)
	evs = append(evs, eventgen.Attempt(48, eventgen.Unchanged)...)
	evs = append(evs, eventgen.Attempt(49, eventgen.Rejected)...)
	evs = append(evs, eventgen.Attempt(6, eventgen.Succeeded)...)
	evs = append(evs, eventgen.Python("attempt-py", "radix")...)
	publish(t, res, evs)
	r := startProjector(t, res, projector.Config{})
	r.waitCaughtUp(t, res)
	if status, _, _ := r.do(t, "POST", "/v1/attempts/a-0000006/invalidate", bearer, `{"reason":"proposed to the wrong team"}`); status != 200 {
		t.Fatal("invalidate")
	}

	b := startChromium(t, bin)
	b.navigate(t, r.srv.URL+"/")
	if b.eval(t, `document.getElementById("login") !== null`) != true {
		t.Fatal("no login form when signed out")
	}
	b.eval(t, `document.getElementById("token").focus()`)
	b.call(t, "Input.insertText", map[string]any{"text": testToken})
	b.loaded = false
	for _, typ := range []string{"keyDown", "keyUp"} {
		b.call(t, "Input.dispatchKeyEvent", map[string]any{"type": typ, "key": "Enter", "code": "Enter",
			"windowsVirtualKeyCode": 13, "text": "\r"})
	}
	b.waitLoad(t)

	dom, _ := b.eval(t, `document.documentElement.outerHTML`).(string)
	if strings.Contains(dom, testToken) {
		t.Fatal("the token is in the page")
	}
	if cookie := b.eval(t, `document.cookie`); cookie != "" {
		t.Fatalf("the session cookie is readable from script: %q", cookie)
	}
	for _, want := range []string{
		"Recent attempts", "a-0000000", "a-0000045", "attempt-py", // attempts, the Python one too
		"path_violation", "changed README.md, outside allowed_paths", // a failure reason
		"proposed to the wrong team", "invalidated", // an invalidation
		"field task.allowed_paths[0]",                          // a rejected request ("task.allowed_paths[0]: ...")
		`class="step k-ok"`, "pr.created", "attempt.succeeded", // the stage timeline
		`href="https://github.com/leviathan-dev/demo/pull/1"`,
	} {
		want = strings.TrimPrefix(want, "field ")
		if !strings.Contains(dom, want) {
			t.Errorf("page without %q", want)
		}
	}
	// The graph: one box per node of the newest attempts, edges between.
	nodes := b.eval(t, `document.querySelectorAll("#graph svg g.n").length`).(float64)
	edges := b.eval(t, `document.querySelectorAll("#graph svg path.e").length`).(float64)
	prs := b.eval(t, `document.querySelectorAll("#graph svg g.n-PullRequest").length`).(float64)
	if nodes < 15 || edges < 15 || prs != 4 {
		t.Errorf("graph: %v nodes, %v edges, %v pull requests", nodes, edges, prs)
	}
	// Laid out, not just present: the SVG has a size and the first
	// attempt row is visible.
	if w := b.eval(t, `document.querySelector("#graph svg").getBoundingClientRect().width`).(float64); w < 900 {
		t.Errorf("graph width %v", w)
	}

	shot := b.screenshot(t)
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatal(err)
	}
	colors := map[uint32]bool{}
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y += 3 {
		for x := bounds.Min.X; x < bounds.Max.X; x += 3 {
			r, g, b, _ := img.At(x, y).RGBA()
			colors[r>>12<<8|g>>12<<4|b>>12] = true
		}
	}
	if bounds.Dx() < 1200 || bounds.Dy() < 900 || len(colors) < 40 {
		t.Errorf("screenshot %v with %d colours: not the page", bounds, len(colors))
	}
	path := os.Getenv("LEVIATHAN_SCREENSHOT")
	if path == "" {
		path = filepath.Join(t.TempDir(), "control-plane.png")
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%v)", path, bounds.Size())
}

// browser is a headless Chromium driven over the DevTools protocol on a
// pipe: JSON messages separated by NUL bytes.
type browser struct {
	in      io.WriteCloser
	msgs    chan cdpMessage
	id      int
	session string
	loaded  bool
}

type cdpMessage struct {
	ID        int             `json:"id"`
	Method    string          `json:"method"`
	Result    json.RawMessage `json:"result"`
	Error     *struct{ Message string }
	SessionID string `json:"sessionId"`
}

func startChromium(t *testing.T, bin string) *browser {
	t.Helper()
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe",
		"--user-data-dir="+t.TempDir(), "--no-first-run", "--no-default-browser-check", "--disable-extensions",
		"--hide-scrollbars", "--window-size=1400,1000", "about:blank")
	cmd.ExtraFiles = []*os.File{cmdR, outW} // fd 3: commands in, fd 4: answers out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmdR.Close()
	outW.Close()
	b := &browser{in: cmdW, msgs: make(chan cdpMessage, 256)}
	go func() {
		defer close(b.msgs)
		rd := bufio.NewReaderSize(outR, 1<<20)
		for {
			raw, err := rd.ReadBytes(0)
			if err != nil {
				return
			}
			var m cdpMessage
			if json.Unmarshal(raw[:len(raw)-1], &m) == nil {
				b.msgs <- m
			}
		}
	}()
	t.Cleanup(func() {
		cmdW.Close()
		cancel()
		_ = cmd.Wait()
		outR.Close()
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", stderr.String())
		}
	})
	var created struct{ TargetID string }
	b.decode(t, b.callIn(t, "", "Target.createTarget", map[string]any{"url": "about:blank"}), &created)
	var attached struct{ SessionID string }
	b.decode(t, b.callIn(t, "", "Target.attachToTarget", map[string]any{"targetId": created.TargetID, "flatten": true}), &attached)
	b.session = attached.SessionID
	b.call(t, "Page.enable", nil)
	b.call(t, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false})
	return b
}

func (b *browser) decode(t *testing.T, raw json.RawMessage, v any) {
	t.Helper()
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
}

func (b *browser) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	return b.callIn(t, b.session, method, params)
}

// callIn sends a command and waits for its answer, noting page loads seen
// on the way.
func (b *browser) callIn(t *testing.T, session, method string, params any) json.RawMessage {
	t.Helper()
	b.id++
	msg := map[string]any{"id": b.id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	data, _ := json.Marshal(msg)
	if _, err := b.in.Write(append(data, 0)); err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	for {
		m, err := b.next()
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if m.ID == b.id {
			if m.Error != nil {
				t.Fatalf("%s: %s", method, m.Error.Message)
			}
			return m.Result
		}
	}
}

func (b *browser) next() (cdpMessage, error) {
	select {
	case m, ok := <-b.msgs:
		if !ok {
			return m, errors.New("chromium closed the pipe")
		}
		if m.Method == "Page.loadEventFired" {
			b.loaded = true
		}
		return m, nil
	case <-time.After(30 * time.Second):
		return cdpMessage{}, errors.New("no answer from chromium in 30 s")
	}
}

func (b *browser) waitLoad(t *testing.T) {
	t.Helper()
	for !b.loaded {
		if _, err := b.next(); err != nil {
			t.Fatalf("waiting for the page to load: %v", err)
		}
	}
}

func (b *browser) navigate(t *testing.T, u string) {
	t.Helper()
	b.loaded = false
	b.call(t, "Page.navigate", map[string]any{"url": u})
	b.waitLoad(t)
}

// eval evaluates an expression in the page and returns its value.
func (b *browser) eval(t *testing.T, expr string) any {
	t.Helper()
	var out struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails any `json:"exceptionDetails"`
	}
	b.decode(t, b.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}), &out)
	if out.ExceptionDetails != nil {
		t.Fatalf("%s: %v", expr, out.ExceptionDetails)
	}
	return out.Result.Value
}

func (b *browser) screenshot(t *testing.T) []byte {
	t.Helper()
	var out struct{ Data string }
	b.decode(t, b.call(t, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}), &out)
	png, err := base64.StdEncoding.DecodeString(out.Data)
	if err != nil {
		t.Fatal(fmt.Errorf("screenshot: %w", err))
	}
	return png
}
