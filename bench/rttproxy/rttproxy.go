// Package rttproxy is an HTTP proxy that adds a network round-trip time in
// front of a server on loopback, and counts what crosses it: the
// benchmarks' stand-in for a forge 30–50 ms away.
//
// The model is the one that decides an attempt's time at WAN latency:
// every HTTP request costs one round trip before the server sees it, and
// every new connection costs Handshake round trips more (1 for TCP, 2 for
// TCP and TLS 1.3, as with https to GitHub). Bandwidth is not limited and
// bodies stream through unbuffered. Requests are counted by the class
// Classify gives them, so a caller can tell git's round trips from the
// API's.
package rttproxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards to one server with added latency.
type Proxy struct {
	rtt       time.Duration
	handshake int
	classify  func(*http.Request) string
	srv       *http.Server
	ln        net.Listener

	mu    sync.Mutex
	reqs  map[string]int64 // by class
	conns map[string]int64 // by the class of their first request
}

type connKey struct{}

// Config says where to forward and how far away to be.
type Config struct {
	Target string        // the server's base URL, http://127.0.0.1:port
	RTT    time.Duration // one round trip
	// Handshake is how many round trips a new connection costs before its
	// first request (1: TCP; 2: TCP and TLS 1.3). 0 means 2.
	Handshake int
	// Classify names a request's class for the counts; nil counts every
	// request as "http".
	Classify func(*http.Request) string
}

// Start listens on 127.0.0.1 and forwards to cfg.Target.
func Start(cfg Config) (*Proxy, error) {
	target, err := url.Parse(cfg.Target)
	if err != nil || target.Host == "" {
		return nil, errors.New("rttproxy: target must be a URL such as http://127.0.0.1:8080")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{rtt: cfg.RTT, handshake: cfg.Handshake, classify: cfg.Classify, reqs: map[string]int64{}, conns: map[string]int64{}, ln: ln}
	if p.handshake == 0 {
		p.handshake = 2
	}
	if p.classify == nil {
		p.classify = func(*http.Request) string { return "http" }
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host // the server builds URLs from the name the client used
		},
		FlushInterval: -1, // git streams its packs
		Transport:     &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true},
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			class := p.classify(r)
			p.mu.Lock()
			p.reqs[class]++
			if first := r.Context().Value(connKey{}).(*atomic.Bool); !first.Swap(true) {
				p.conns[class]++
			}
			p.mu.Unlock()
			if !sleep(r.Context(), p.rtt) {
				return
			}
			rp.ServeHTTP(w, r)
		}),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, new(atomic.Bool))
		},
	}
	go func() { _ = p.srv.Serve(&slowAccept{Listener: ln, delay: time.Duration(p.handshake) * p.rtt}) }()
	return p, nil
}

// URL is the proxy's base URL: give it to clients instead of the target's.
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() }

// Count is what one class of requests sent across the proxy.
type Count struct {
	Requests int64 // HTTP requests
	Conns    int64 // new connections (counted for the class of their first request)
	// RoundTrips is what they cost: one per request and the handshake's
	// per connection. Made one after the other, they take RoundTrips × RTT.
	RoundTrips int64
}

// Counts returns the counts by class since the last Reset.
func (p *Proxy) Counts() map[string]Count {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]Count{}
	for class, n := range p.reqs {
		c := p.conns[class]
		out[class] = Count{Requests: n, Conns: c, RoundTrips: n + c*int64(p.handshake)}
	}
	return out
}

// Reset sets every count to zero.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reqs, p.conns = map[string]int64{}, map[string]int64{}
}

// Close stops the proxy.
func (p *Proxy) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return p.srv.Shutdown(ctx)
}

// slowAccept makes each new connection wait its handshake before its first
// byte is read: the client's connect and TLS round trips.
type slowAccept struct {
	net.Listener
	delay time.Duration
}

func (l *slowAccept) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lateConn{Conn: c, until: time.Now().Add(l.delay)}, nil
}

type lateConn struct {
	net.Conn
	once  sync.Once
	until time.Time
}

func (c *lateConn) Read(b []byte) (int, error) {
	c.once.Do(func() { time.Sleep(time.Until(c.until)) })
	return c.Conn.Read(b)
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// GitOrAPI classifies a forge's requests: "git" for the smart HTTP
// protocol (info/refs, upload-pack, receive-pack), "api" for the rest.
func GitOrAPI(r *http.Request) string {
	p := r.URL.Path
	if strings.HasSuffix(p, "/info/refs") || strings.HasSuffix(p, "/git-upload-pack") || strings.HasSuffix(p, "/git-receive-pack") {
		return "git"
	}
	return "api"
}
