package forge_test

import (
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
