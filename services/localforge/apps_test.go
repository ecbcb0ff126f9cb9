package localforge

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testKey is generated once: RSA key generation is slow under -race.
var testKey = func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}()

// signJWT makes an RS256 JWT with the given claims.
func signJWT(t *testing.T, key *rsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signing := enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(claims)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// mint asks for an installation token with jwt; it returns the status and
// the decoded answer.
func mint(t *testing.T, srvURL string, installation int64, jwt string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/v3/app/installations/%d/access_tokens", srvURL, installation), nil)
	req.Header.Set("Authorization", "Bearer "+jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestInstallationTokens(t *testing.T) {
	f, srv := startForge(t, Config{
		Apps:                 []App{{ID: 42, PublicKey: &testKey.PublicKey, Installations: []int64{7}}},
		InstallationTokenTTL: 2 * time.Second,
	})
	createRepo(t, f, "acme", "widgets")
	now := time.Now()
	good := map[string]any{"iss": "42", "iat": now.Add(-30 * time.Second).Unix(), "exp": now.Add(2 * time.Minute).Unix()}

	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	with := func(k string, v any) map[string]any {
		c := map[string]any{}
		for kk, vv := range good {
			c[kk] = vv
		}
		c[k] = v
		return c
	}
	for _, tc := range []struct {
		name string
		jwt  string
		inst int64
		want int
	}{
		{"wrong key", signJWT(t, other, good), 7, http.StatusUnauthorized},
		{"unknown app", signJWT(t, testKey, with("iss", "43")), 7, http.StatusUnauthorized},
		{"expired", signJWT(t, testKey, with("exp", now.Add(-time.Second).Unix())), 7, http.StatusUnauthorized},
		{"too long", signJWT(t, testKey, with("exp", now.Add(time.Hour).Unix())), 7, http.StatusUnauthorized},
		{"issued in the future", signJWT(t, testKey, with("iat", now.Add(time.Hour).Unix())), 7, http.StatusUnauthorized},
		{"no exp", signJWT(t, testKey, map[string]any{"iss": 42, "iat": now.Unix()}), 7, http.StatusUnauthorized},
		{"garbage", "a.b.c", 7, http.StatusUnauthorized},
		{"the forge token is not a JWT", testToken, 7, http.StatusUnauthorized},
		{"other installation", signJWT(t, testKey, good), 8, http.StatusNotFound},
		{"numeric iss", signJWT(t, testKey, with("iss", 42)), 7, http.StatusCreated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, out := mint(t, srv.URL, tc.inst, tc.jwt); code != tc.want {
				t.Fatalf("status %d (%v), want %d", code, out, tc.want)
			}
		})
	}

	code, out := mint(t, srv.URL, 7, signJWT(t, testKey, good))
	token, _ := out["token"].(string)
	expires, _ := time.Parse(time.RFC3339, fmt.Sprint(out["expires_at"]))
	if code != http.StatusCreated || !strings.HasPrefix(token, "ghs_") || expires.Before(now) || expires.After(now.Add(3*time.Second)) {
		t.Fatalf("mint: %d %v", code, out)
	}
	// The token works for the API and for git, and is not the forge
	// token: it cannot reach the admin endpoint.
	gh := newClient(t, srv.URL, token)
	if _, _, err := gh.PullRequests.List(context.Background(), "acme", "widgets", nil); err != nil {
		t.Fatalf("API with an installation token: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "clone")
	git(t, "", authEnv("x-access-token", token), "clone", "--quiet", f.CloneURL("acme", "widgets"), dir)
	if code, _ := adminDo(t, srv.URL, "GET", "/_admin/faults", "", token); code != http.StatusUnauthorized {
		t.Fatalf("admin with an installation token: %d", code)
	}
	// After expiry it works for nothing.
	time.Sleep(time.Until(expires) + 100*time.Millisecond)
	if _, _, err := gh.PullRequests.List(context.Background(), "acme", "widgets", nil); err == nil {
		t.Fatal("API accepted an expired installation token")
	}
	if out, err := tryGit("", authEnv("x-access-token", token), "ls-remote", f.CloneURL("acme", "widgets")); err == nil {
		t.Fatalf("git accepted an expired installation token: %s", out)
	}
}
