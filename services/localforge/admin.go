package localforge

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// journalSize bounds the request journal; older entries are dropped.
const journalSize = 2000

// RequestRecord is one API or git request as the forge saw it: what tests read to
// check that a client waited as long as it was told to.
type RequestRecord struct {
	Method string    `json:"method"`
	Path   string    `json:"path"`
	Status int       `json:"status"` // 0 when the connection was dropped
	Start  time.Time `json:"start"`
	// Answered is when the response began (its status was written):
	// no client can have its answer before. Zero for a dropped one.
	Answered time.Time `json:"answered,omitzero"`
	End      time.Time `json:"end"`
	// Fault reports that an injected fault answered (or delayed) it.
	Fault bool `json:"fault,omitempty"`
	// Credential is the kind of credential the request carried: "token"
	// (the forge token), "installation" (a minted installation token),
	// "jwt" (an app JWT), "invalid", or "" (none). Never the credential.
	Credential string `json:"credential,omitempty"`
}

// journal is a bounded log of API requests.
type journal struct {
	mu      sync.Mutex
	records []RequestRecord
}

func (j *journal) add(rec RequestRecord) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.records) >= journalSize {
		j.records = append(j.records[:0], j.records[len(j.records)-journalSize/2:]...)
	}
	j.records = append(j.records, rec)
}

// Requests returns the API and git requests served so far (the latest 2000 at
// most), oldest first. Requests still in flight are not listed.
func (f *Forge) Requests() []RequestRecord {
	f.journal.mu.Lock()
	defer f.journal.mu.Unlock()
	return append([]RequestRecord(nil), f.journal.records...)
}

// statusWriter captures the status of a response and still lets a fault
// hijack the connection.
type statusWriter struct {
	http.ResponseWriter
	status   int
	answered time.Time
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status, w.answered = status, time.Now()
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status, w.answered = http.StatusOK, time.Now()
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack is here for callers that type-assert http.Hijacker directly.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// record wraps the API so every request lands in the journal.
func (f *Forge) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		start := time.Now()
		faulted := false
		r = r.WithContext(withFaultFlag(r.Context(), &faulted))
		defer func() {
			f.journal.add(RequestRecord{Method: r.Method, Path: r.URL.Path, Status: sw.status,
				Start: start, Answered: sw.answered, End: time.Now(), Fault: faulted, Credential: f.credentialKind(r)})
		}()
		next.ServeHTTP(sw, r)
	})
}

// credentialKind names the kind of credential r carries, for the journal.
func (f *Forge) credentialKind(r *http.Request) string {
	cred := bearer(r)
	if _, pass, ok := r.BasicAuth(); ok {
		cred = pass
	}
	switch {
	case cred == "":
		return ""
	case f.isForgeToken(cred):
		return "token"
	case f.validInstallationToken(cred, time.Now()):
		return "installation"
	case strings.Count(cred, ".") == 2:
		return "jwt"
	default:
		return "invalid"
	}
}

// admin serves the test-control endpoints, guarded by the forge's own
// token (installation tokens are refused):
//
//	GET    /_admin/faults     the queued faults
//	POST   /_admin/faults     queue one fault (object) or several (array)
//	DELETE /_admin/faults     drop every queued fault
//	GET    /_admin/requests   the request journal
func (f *Forge) admin() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_admin/faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, f.Faults())
	})
	mux.HandleFunc("POST /_admin/faults", func(w http.ResponseWriter, r *http.Request) {
		var faults []Fault
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		raw := json.RawMessage{}
		if err := dec.Decode(&raw); err != nil {
			writeError(w, http.StatusBadRequest, apiError{Message: "Problems parsing JSON"})
			return
		}
		var err error
		if s := strings.TrimSpace(string(raw)); strings.HasPrefix(s, "[") {
			err = json.Unmarshal(raw, &faults)
		} else {
			var one Fault
			err = json.Unmarshal(raw, &one)
			faults = []Fault{one}
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, apiError{Message: "Invalid fault: " + err.Error()})
			return
		}
		for _, flt := range faults {
			if err := flt.validate(); err != nil {
				writeError(w, http.StatusUnprocessableEntity, apiError{Message: "Invalid fault: " + err.Error()})
				return
			}
		}
		for _, flt := range faults {
			f.InjectFault(flt)
		}
		writeJSON(w, http.StatusCreated, f.Faults())
	})
	mux.HandleFunc("DELETE /_admin/faults", func(w http.ResponseWriter, r *http.Request) {
		f.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_admin/requests", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, f.Requests())
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.isForgeToken(bearer(r)) {
			writeError(w, http.StatusUnauthorized, apiError{Message: "Bad credentials"})
			return
		}
		if _, pattern := mux.Handler(r); pattern == "" {
			writeNotFound(w)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// faultFlagKey carries a *bool through a request's context that the fault
// layer sets, so the journal can say which requests a fault answered.
type faultFlagKey struct{}

func withFaultFlag(ctx context.Context, p *bool) context.Context {
	return context.WithValue(ctx, faultFlagKey{}, p)
}

func markFaulted(r *http.Request) {
	if p, ok := r.Context().Value(faultFlagKey{}).(*bool); ok {
		*p = true
	}
}
