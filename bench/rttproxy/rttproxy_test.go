package rttproxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestAddsRoundTripsAndCounts(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	defer srv.Close()
	const rtt = 40 * time.Millisecond
	p, err := Start(Config{Target: srv.URL, RTT: rtt, Classify: GitOrAPI})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	client := &http.Client{Transport: &http.Transport{}}
	get := func(path string) {
		t.Helper()
		resp, err := client.Get(p.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != path {
			t.Fatalf("GET %s answered %q", path, body)
		}
	}
	start := time.Now()
	get("/o/r.git/info/refs") // a new connection: 2 handshake round trips and the request's
	get("/api/v3/repos/o/r")  // the same connection: one
	if took := time.Since(start); took < 4*rtt {
		t.Fatalf("two requests on one new connection took %v, want at least %v", took, 4*rtt)
	}
	c := p.Counts()
	if c["git"] != (Count{Requests: 1, Conns: 1, RoundTrips: 3}) || c["api"] != (Count{Requests: 1, RoundTrips: 1}) {
		t.Fatalf("counts %+v", c)
	}
	p.Reset()
	if c := p.Counts(); len(c) != 0 {
		t.Fatalf("after Reset: %+v", c)
	}
}
