package gitx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
)

func TestRemoteNeverShowsPassword(t *testing.T) {
	r := Remote{URL: "https://git.example.com/acme/repo.git?x=1", Username: "bot", Password: testToken}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("fetching", "remote", r)
	for _, s := range []string{
		r.String(), fmt.Sprint(r), fmt.Sprintf("%+v", r), fmt.Sprintf("%#v", r), fmt.Sprintf("%v", &r), logged.String(),
	} {
		if strings.Contains(s, testToken) {
			t.Errorf("password shown in %q", s)
		}
		if !strings.Contains(s, "git.example.com/acme/repo.git") {
			t.Errorf("URL missing from %q", s)
		}
	}
	if got := (Remote{URL: "https://h/r.git", Password: "p4ssw0rd"}).LogValue().String(); !strings.Contains(got, "x-access-token") {
		t.Errorf("default username missing from %s", got)
	}
}

func TestRemoteRejectsCredentialsInURL(t *testing.T) {
	for _, u := range []string{
		"https://user:" + testToken + "@git.example.com/acme/repo.git",
		"https://" + testToken + "@git.example.com/acme/repo.git",
	} {
		r := Remote{URL: u}
		_, ferr := Fetch(context.Background(), r, "main", backlogPath, FetchOptions{})
		_, perr := Push(context.Background(), r, "agent/x", &NewCommit{Hash: [20]byte{1}})
		for _, err := range []error{ferr, perr} {
			if !errors.Is(err, ErrInvalidRemote) || !strings.Contains(err.Error(), "must not carry credentials") {
				t.Errorf("%v: want a refusal of credentials in the URL", err)
			}
			if err != nil && strings.Contains(err.Error(), testToken) {
				t.Errorf("error shows the password: %v", err)
			}
		}
	}
	for _, u := range []string{"ftp://h/r.git", "git@github.com:acme/repo.git", "https:///r.git", "%zz"} {
		if _, err := Fetch(context.Background(), Remote{URL: u}, "main", backlogPath, FetchOptions{}); !errors.Is(err, ErrInvalidRemote) {
			t.Errorf("Fetch(%q) accepted the URL", u)
		}
	}
}

// TestRedactSafetyNet: even a message we do not control (a server echoing
// the Authorization header) is cleaned before it leaves the package.
func TestRedactSafetyNet(t *testing.T) {
	inner := fmt.Errorf("server said: bad token %s: %w", testToken, ErrAuth)
	err := redact(inner, testToken)
	if strings.Contains(err.Error(), testToken) || !errors.Is(err, ErrAuth) {
		t.Errorf("redact = %v", err)
	}
	if redact(nil, testToken) != nil {
		t.Errorf("redact(nil) is not nil")
	}
}

// TestCredentialsOnlyInHeader: the password reaches the server as basic
// auth and nowhere in the URL.
func TestCredentialsOnlyInHeader(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []string
	)
	tf := startForge(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			user, pass, ok := r.BasicAuth()
			mu.Lock()
			seen = append(seen, fmt.Sprintf("%s ok=%v user=%s pass-match=%v", r.URL.String(), ok, user, pass == testToken))
			mu.Unlock()
			if strings.Contains(r.URL.String(), testToken) {
				t.Errorf("password in request URL %s", r.URL)
			}
			next.ServeHTTP(w, r)
		})
	})
	r, _ := tf.repo(t, "hdr", smallRepo())
	r.Username = "" // the default username is used
	if _, err := Fetch(context.Background(), r, "main", backlogPath, FetchOptions{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, s := range seen {
		if !strings.Contains(s, "ok=true user=x-access-token pass-match=true") {
			t.Errorf("request without the expected basic auth: %s", s)
		}
	}
}
