package stack

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/leviathan-dev/leviathan/internal/egress"
	"github.com/leviathan-dev/leviathan/internal/forge"
	"github.com/leviathan-dev/leviathan/internal/gitx"
	"github.com/leviathan-dev/leviathan/services/localforge"
)

// ForgeConfig is how a process authenticates to the forge beyond a plain
// token, and how politely it calls it. The zero value means: personal
// access token (ServiceConfig.ForgeToken), production pacing.
type ForgeConfig struct {
	// AppID and InstallationID select GitHub App authentication: the pr
	// service mints installation tokens with the app's private key, and
	// clone and push use the same tokens for git (as x-access-token),
	// unless a git token is configured explicitly.
	AppID, InstallationID int64
	// AppPrivateKeyPath is the app's PEM private key file (a mounted
	// Secret); AppPrivateKey, when set, is used instead.
	AppPrivateKeyPath string
	AppPrivateKey     []byte
	// MinInterval between mutating forge calls with one token (default 1 s).
	MinInterval time.Duration
	// RateLimitBackoff after a rate limit that names no wait (default 60 s).
	RateLimitBackoff time.Duration
	// RequestTimeout of one forge API call (default 30 s).
	RequestTimeout time.Duration
}

// IsApp reports whether GitHub App authentication is configured.
func (c ForgeConfig) IsApp() bool { return c.AppID != 0 || c.InstallationID != 0 }

func (c ForgeConfig) validate() error {
	if c.IsApp() && (c.AppID <= 0 || c.InstallationID <= 0 || (c.AppPrivateKeyPath == "" && len(c.AppPrivateKey) == 0)) {
		return errors.New("github app: app id, installation id and private key path are all required")
	}
	return nil
}

// appTokens builds the installation token source for the API root apiURL.
func (c ForgeConfig) appTokens(apiURL string, pol *egress.Policy) (*forge.AppTokens, error) {
	key := c.AppPrivateKey
	if len(key) == 0 {
		var err error
		if key, err = os.ReadFile(c.AppPrivateKeyPath); err != nil {
			return nil, fmt.Errorf("github app private key: %w", err)
		}
	}
	return forge.NewAppTokens(forge.AppConfig{AppID: c.AppID, InstallationID: c.InstallationID, PrivateKey: key, BaseURL: apiURL, HTTPClient: pol.Client()})
}

// clients builds the forge driver (when withDriver) and the git
// credentials of a process: one token source shared by both, so the API
// and git always use the same, current token. An explicit git token
// (basic auth) takes precedence for git. turns (may be nil) shares the
// token's mutating calls with the other replicas; forgeIdentity names them.
// Every connection goes through pol, and credentials only where it says.
func (c ForgeConfig) clients(token, apiURL string, git gitx.Remote, withDriver bool, turns func(identity string) forge.Turns, pol *egress.Policy) (forge.Driver, gitx.Remote, error) {
	if err := c.validate(); err != nil {
		return nil, git, err
	}
	git.HTTPClient, git.CredentialsFor = pol.Client(), pol.Credentials
	var ts forge.TokenSource
	switch {
	case c.IsApp():
		app, err := c.appTokens(apiURL, pol)
		if err != nil {
			return nil, git, err
		}
		ts = app
		if git.Password == "" {
			hc := forge.GitHTTPClient(app, pol.Transport(), pol.Credentials)
			hc.CheckRedirect = egress.CheckRedirect
			git = gitx.Remote{HTTPClient: hc, CredentialsFor: pol.Credentials}
		}
	case token != "":
		ts = forge.StaticToken(token)
	}
	if !withDriver {
		return nil, git, nil
	}
	if ts == nil {
		return nil, git, errors.New("pr: no forge credentials (set LEVIATHAN_FORGE_TOKEN or a GitHub App)")
	}
	gc := forge.GitHubConfig{
		Tokens: ts, BaseURL: apiURL, HTTPClient: pol.Client(), Credentials: pol.Credentials, MinInterval: c.MinInterval,
		RateLimitBackoff: c.RateLimitBackoff, RequestTimeout: c.RequestTimeout,
	}
	if turns != nil {
		gc.Turns = turns(c.forgeIdentity(apiURL))
	}
	d, err := forge.NewGitHub(gc)
	return d, git, err
}

// forgeIdentity names the forge account whose calls the replicas pace
// together, without the credential: the API host and the GitHub App
// installation, or "token" for a personal access token (replicas share
// one).
func (c ForgeConfig) forgeIdentity(apiURL string) string {
	host := "api.github.com"
	if u, err := url.Parse(apiURL); err == nil && u.Host != "" {
		host = u.Host
	}
	if c.IsApp() {
		return fmt.Sprintf("forge/%s/app-%d/installation-%d", host, c.AppID, c.InstallationID)
	}
	return "forge/" + host + "/token"
}

// registerApp tells the embedded localforge about the stack's GitHub App,
// so the App path runs end to end on a laptop and in tests.
func (c ForgeConfig) registerApp(f *localforge.Forge) error {
	if !c.IsApp() {
		return nil
	}
	key := c.AppPrivateKey
	if len(key) == 0 {
		var err error
		if key, err = os.ReadFile(c.AppPrivateKeyPath); err != nil {
			return fmt.Errorf("github app private key: %w", err)
		}
	}
	block, _ := pem.Decode(key)
	if block == nil {
		return errors.New("github app private key: not PEM")
	}
	priv, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		return fmt.Errorf("github app private key: %w", err)
	}
	return f.RegisterApp(localforge.App{ID: c.AppID, PublicKey: &priv.PublicKey, Installations: []int64{c.InstallationID}})
}
