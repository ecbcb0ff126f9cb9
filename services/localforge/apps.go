package localforge

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// App is a GitHub App the forge knows: it may mint installation tokens by
// presenting a JWT signed with the private key of PublicKey.
type App struct {
	// ID is the app id, the JWT's "iss" claim.
	ID int64
	// PublicKey verifies the app's RS256 JWTs.
	PublicKey *rsa.PublicKey
	// Installations are the installation ids the app may mint tokens for;
	// empty means any.
	Installations []int64
}

// defaultInstallationTokenTTL is how long GitHub's installation tokens live.
const defaultInstallationTokenTTL = time.Hour

// maxJWTLifetime is GitHub's limit on exp - now for an app JWT, plus the
// clock skew GitHub tolerates.
const (
	maxJWTLifetime = 10 * time.Minute
	jwtClockSkew   = time.Minute
)

// appRegistry holds the apps and the installation tokens they minted. It
// stores a hash of each token, never the token itself.
type appRegistry struct {
	mu     sync.Mutex
	apps   map[int64]App
	tokens map[[sha256.Size]byte]time.Time // token hash → expiry
}

// RegisterApp lets app mint installation tokens (replacing an app with the
// same id).
func (f *Forge) RegisterApp(app App) error {
	if app.ID <= 0 || app.PublicKey == nil {
		return fmt.Errorf("%w: an app needs an ID and a PublicKey", ErrInvalidConfig)
	}
	f.apps.mu.Lock()
	defer f.apps.mu.Unlock()
	if f.apps.apps == nil {
		f.apps.apps = map[int64]App{}
	}
	f.apps.apps[app.ID] = app
	return nil
}

// validInstallationToken reports whether s is an unexpired token this forge
// minted.
func (f *Forge) validInstallationToken(s string, now time.Time) bool {
	if !strings.HasPrefix(s, "ghs_") {
		return false
	}
	sum := sha256.Sum256([]byte(s))
	f.apps.mu.Lock()
	defer f.apps.mu.Unlock()
	exp, ok := f.apps.tokens[sum]
	return ok && now.Before(exp)
}

// accessTokenPath matches POST /api/v3/app/installations/{id}/access_tokens
// and returns the installation id.
func accessTokenPath(r *http.Request) (int64, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/api/v3/app/installations/")
	if !ok || r.Method != http.MethodPost {
		return 0, false
	}
	id, ok := strings.CutSuffix(rest, "/access_tokens")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(id, 10, 64)
	return n, err == nil && n > 0
}

// serveAccessToken mints an installation token for a request authenticated
// with the app's JWT, as GitHub's "Create an installation access token for
// an app" does. Faults apply after the JWT is checked.
func (f *Forge) serveAccessToken(w http.ResponseWriter, r *http.Request, installation int64, next func(http.Handler)) {
	now := time.Now()
	app, err := f.verifyAppJWT(bearer(r), now)
	if err != nil {
		f.log.Info("app JWT refused", "reason", err)
		writeError(w, http.StatusUnauthorized, apiError{Message: "A JSON web token could not be decoded"})
		return
	}
	if len(app.Installations) > 0 && !slices.Contains(app.Installations, installation) {
		writeNotFound(w)
		return
	}
	next(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, expires := f.mintToken(time.Now())
		f.log.Info("installation token issued", "app", app.ID, "installation", installation, "expires_at", expires)
		writeJSON(w, http.StatusCreated, map[string]any{
			"token":      token,
			"expires_at": expires.UTC().Format(time.RFC3339),
			"permissions": map[string]string{
				"contents": "write", "pull_requests": "write", "metadata": "read",
			},
			"repository_selection": "all",
		})
	}))
}

// mintToken issues a new installation token and forgets expired ones.
func (f *Forge) mintToken(now time.Time) (string, time.Time) {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, 36)
	for i := range b {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		b[i] = alphabet[n.Int64()]
	}
	token := "ghs_" + string(b)
	// GitHub reports expiry to the second; so does the forge, rounding
	// down so a client never believes a token lives longer than it does.
	expires := now.Add(f.tokenTTL).Truncate(time.Second)
	f.apps.mu.Lock()
	defer f.apps.mu.Unlock()
	if f.apps.tokens == nil {
		f.apps.tokens = map[[sha256.Size]byte]time.Time{}
	}
	for k, exp := range f.apps.tokens {
		if !now.Before(exp) {
			delete(f.apps.tokens, k)
		}
	}
	f.apps.tokens[sha256.Sum256([]byte(token))] = expires
	return token, expires
}

// Errors of app JWT verification; they are logged, never sent.
var (
	errJWTMalformed = errors.New("malformed JWT")
	errJWTAlg       = errors.New("JWT algorithm is not RS256")
	errJWTIssuer    = errors.New("JWT issuer is not a registered app")
	errJWTSignature = errors.New("JWT signature does not verify")
	errJWTTime      = errors.New("JWT is expired, not yet valid, or lives longer than 10 minutes")
)

// verifyAppJWT checks an RS256 JWT as GitHub does: iss names a registered
// app whose public key verifies the signature; iat is not in the future
// (beyond the skew GitHub allows); exp is in the future and at most ten
// minutes away.
func (f *Forge) verifyAppJWT(token string, now time.Time) (App, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return App{}, errJWTMalformed
	}
	var header struct {
		Alg string `json:"alg"`
	}
	var claims struct {
		Iss json.RawMessage `json:"iss"`
		Iat *int64          `json:"iat"`
		Exp *int64          `json:"exp"`
	}
	if err := decodeSegment(parts[0], &header); err != nil {
		return App{}, err
	}
	if header.Alg != "RS256" {
		return App{}, errJWTAlg
	}
	if err := decodeSegment(parts[1], &claims); err != nil {
		return App{}, err
	}
	// GitHub accepts the app id as a string or a number.
	iss := strings.Trim(string(claims.Iss), `"`)
	id, err := strconv.ParseInt(iss, 10, 64)
	if err != nil {
		return App{}, errJWTIssuer
	}
	f.apps.mu.Lock()
	app, ok := f.apps.apps[id]
	f.apps.mu.Unlock()
	if !ok {
		return App{}, errJWTIssuer
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return App{}, errJWTMalformed
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(app.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
		return App{}, errJWTSignature
	}
	if claims.Iat == nil || claims.Exp == nil {
		return App{}, errJWTTime
	}
	iat, exp := time.Unix(*claims.Iat, 0), time.Unix(*claims.Exp, 0)
	if iat.After(now.Add(jwtClockSkew)) || !exp.After(now) || exp.After(now.Add(maxJWTLifetime+jwtClockSkew)) {
		return App{}, errJWTTime
	}
	return app, nil
}

func decodeSegment(seg string, v any) error {
	data, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return errJWTMalformed
	}
	if err := json.Unmarshal(data, v); err != nil {
		return errJWTMalformed
	}
	return nil
}
