package projector

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
)

// API serves the control plane over a projector.
type API struct {
	p     *Projector
	token string
}

// NewAPI returns the control plane API. token is the bearer token every
// /v1 route requires.
func NewAPI(p *Projector, token string) *API {
	return &API{p: p, token: token}
}

// Handler routes the API.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !a.p.Ready() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "catching up", "applied": a.p.Applied()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "applied": a.p.Applied()})
	})
	mux.Handle("GET /v1/graph/summary", a.auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.p.Graph().Summary())
	}))
	mux.Handle("/v1/", a.auth(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"detail": "Not Found"})
	}))
	return mux
}

// auth requires the bearer token, compared in constant time.
func (a *API) auth(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || got == "" {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Missing bearer token"})
			return
		}
		if a.token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"detail": "Invalid token"})
			return
		}
		next(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
