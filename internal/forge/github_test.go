package forge_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/internal/forge"
)

// The github driver's tests that need a GitHub API to talk to, the
// conformance suite among them, run in localforge's test package
// (services/localforge/github_test.go): packages under internal/ import
// no service.

func TestConfigDefaults(t *testing.T) {
	// The production defaults are what DESIGN.md §7 and GitHub ask for.
	if forge.DefaultMinInterval < time.Second || forge.DefaultRateLimitBackoff < time.Minute {
		t.Fatalf("defaults: interval %v, backoff %v", forge.DefaultMinInterval, forge.DefaultRateLimitBackoff)
	}
	for _, cfg := range []forge.GitHubConfig{
		{},
		{Token: "a", Tokens: forge.StaticToken("b")},
		{Token: "a", MinInterval: -time.Second},
	} {
		if _, err := forge.NewGitHub(cfg); err == nil {
			t.Errorf("NewGitHub(%+v) accepted", cfg)
		}
	}
	if _, err := forge.NewAppTokens(forge.AppConfig{AppID: 1, InstallationID: 2, PrivateKey: []byte("not a key")}); err == nil ||
		strings.Contains(err.Error(), "not a key") {
		t.Fatalf("bad key: %v", err)
	}
	if s := forge.StaticToken("sekrit-value"); strings.Contains(s.String(), "sekrit") {
		t.Fatal("StaticToken prints its value")
	}
}

// TestAnswerTimeoutCoversTheBody: a forge that sends its headers at once
// and then drips the body must not hold a call past the request timeout.
func TestAnswerTimeoutCoversTheBody(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("["))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	d, err := forge.NewGitHub(forge.GitHubConfig{Tokens: forge.StaticToken("t"), BaseURL: srv.URL + "/api/v3/",
		RequestTimeout: 300 * time.Millisecond, MinInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = d.OpenPRs(context.Background(), srv.URL+"/o/r.git")
	var re *forge.RetryError
	if !errors.As(err, &re) {
		t.Fatalf("OpenPRs = %v (%T), want a *forge.RetryError", err, err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("gave up after %v, want about 300ms", took)
	}
}
