// Package egress decides where the services' outbound connections and
// credentials may go (DESIGN.md §11): which repository URLs an attempt may
// name, which hosts a credential may be sent to, and which addresses a
// connection may reach once a name is resolved.
//
// Every byte of a request is hostile: a repo_url is allowed only on the
// forge's own host or a host the operator listed, a credential only goes
// to the forge's own hosts over TLS (or plain HTTP to a forge on loopback
// or one the operator listed with http://), and every dial checks the
// resolved address, so a name that resolves to a loopback, private or
// metadata address (DNS rebinding) is refused unless the operator said
// that host lives there.
package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
)

// GitHubAPI is the API root of github.com, the forge when none is set.
const GitHubAPI = "https://api.github.com/"

// Config is where the operator says connections may go.
type Config struct {
	// ForgeAPIURL is the forge's REST API root (LEVIATHAN_FORGE_API_URL):
	// empty for github.com, https://ghe.example/api/v3/ for GitHub
	// Enterprise, http://127.0.0.1:3000/api/v3/ for a laptop localforge.
	// Its host and its git host (the API host without a leading "api.")
	// are the only hosts credentials are sent to. Plain http is allowed
	// for them only when the host is a loopback address or localhost.
	ForgeAPIURL string
	// Allowed are other hosts repository URLs may name
	// (LEVIATHAN_ALLOWED_HOSTS): "host" (https on 443), "host:port"
	// (https), or "http://host:port" (plain http: for a development forge
	// inside a cluster, never for the internet). Credentials do not go to
	// them unless they are the forge's own.
	Allowed []string
	// Private are host names that may resolve to loopback or private
	// addresses (LEVIATHAN_PRIVATE_HOSTS): a forge inside the cluster or
	// on the company network. Link-local (cloud metadata), multicast and
	// unspecified addresses are refused for every host.
	Private []string
	// Lookup resolves a host name; the system resolver when nil. Tests
	// give their own to play a rebinding DNS server.
	Lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	// ConnectTimeout bounds one TCP connect (default 10 s).
	ConnectTimeout time.Duration
	// Dial makes the connection to a checked address; a net.Dialer when
	// nil. Tests give one that can only reach loopback, so that a wrong
	// policy cannot reach another host.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// ReadTimeout is the longest a connection waits for its next byte
	// (default 60 s; git servers send keep-alives every few seconds while
	// they work): a server that stops answering mid-body frees its caller
	// before the stage's deadline.
	ReadTimeout time.Duration
}

// hostRule is what the policy allows for one host:port.
type hostRule struct {
	repo       bool // repository URLs may name it
	credential bool // credentials may be sent to it
	http       bool // plain http is allowed
}

// Policy is a compiled Config. The zero value is not usable; build one
// with New.
type Policy struct {
	hosts   map[string]hostRule // by canonical host:port
	private map[string]bool     // host names that may be private
	forge   string              // the forge's git host, for messages
	lookup  func(ctx context.Context, host string) ([]netip.Addr, error)
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	idle    time.Duration // ReadTimeout
}

// New compiles cfg.
func New(cfg Config) (*Policy, error) {
	p := &Policy{hosts: map[string]hostRule{}, private: map[string]bool{}, lookup: cfg.Lookup}
	if p.lookup == nil {
		p.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	p.dial = cfg.Dial
	if p.dial == nil {
		d := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
		if d.Timeout <= 0 {
			d.Timeout = 10 * time.Second
		}
		p.dial = d.DialContext
	}
	p.idle = cfg.ReadTimeout
	if p.idle <= 0 {
		p.idle = 60 * time.Second
	}

	api := cfg.ForgeAPIURL
	if api == "" {
		api = GitHubAPI
	}
	u, err := url.Parse(api)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return nil, errors.New("egress: the forge API URL must be an http(s) URL without credentials")
	}
	if strings.HasSuffix(u.Hostname(), ".") {
		return nil, errors.New("egress: the forge API URL's host must not end in a dot")
	}
	apiHost := canonical(u.Scheme, u.Host)
	gitHost := apiHost
	if name, ok := strings.CutPrefix(u.Hostname(), "api."); ok {
		gitHost = canonical(u.Scheme, joinPort(name, u.Port()))
	}
	plain := u.Scheme == "http" && isLoopbackName(u.Hostname())
	if isLoopbackName(u.Hostname()) {
		// A forge on this machine (localhost): its name resolves to
		// loopback, where it lives.
		p.private[strings.ToLower(u.Hostname())] = true
	}
	p.forge = gitHost
	p.add(apiHost, hostRule{credential: true, http: plain})
	p.add(gitHost, hostRule{repo: true, credential: true, http: plain})
	for _, entry := range cfg.Allowed {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		scheme, hostport := "https", entry
		if s, rest, ok := strings.Cut(entry, "://"); ok {
			scheme, hostport = strings.ToLower(s), rest
		}
		if (scheme != "http" && scheme != "https") || hostport == "" || strings.ContainsAny(hostport, "/@?#") {
			return nil, fmt.Errorf("egress: allowed host %q: want host, host:port or http://host:port", entry)
		}
		if h, _, err := net.SplitHostPort(hostport); err == nil && h == "" || strings.HasPrefix(hostport, ":") {
			return nil, fmt.Errorf("egress: allowed host %q has no host", entry)
		}
		p.add(canonical(scheme, hostport), hostRule{repo: true, http: scheme == "http"})
	}
	if u.Scheme == "http" && !p.hosts[apiHost].http {
		return nil, fmt.Errorf("egress: the forge API URL %s is plain http on a host that is not loopback: use https, or list http://%s in LEVIATHAN_ALLOWED_HOSTS", (&url.URL{Scheme: u.Scheme, Host: u.Host}).String(), u.Host)
	}
	for _, h := range cfg.Private {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			p.private[strings.TrimSuffix(h, ".")] = true
		}
	}
	return p, nil
}

// add merges r into the rule of hostport.
func (p *Policy) add(hostport string, r hostRule) {
	old := p.hosts[hostport]
	p.hosts[hostport] = hostRule{repo: old.repo || r.repo, credential: old.credential || r.credential, http: old.http || r.http}
}

// canonical is host:port lowercased, with the scheme's default port.
func canonical(scheme, hostport string) string {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, ""
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if port == "" {
		port = "443"
		if scheme == "http" {
			port = "80"
		}
	}
	return net.JoinHostPort(host, port)
}

func joinPort(host, port string) string {
	if port == "" {
		return host
	}
	return net.JoinHostPort(host, port)
}

// isLoopbackName reports whether host is localhost or a loopback address.
func isLoopbackName(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && a.Unmap().IsLoopback()
}

// Refused says why a repository URL or a connection is not allowed.
type Refused struct {
	Reason string
	// Credential marks a URL that carries a credential: whoever stored
	// it must erase it.
	Credential bool
}

func (e *Refused) Error() string { return e.Reason }

func refused(format string, args ...any) *Refused {
	return &Refused{Reason: fmt.Sprintf(format, args...)}
}

// CheckRepoURL returns nil when raw is a repository URL an attempt may
// name, or a *Refused naming the rule it breaks. The reason never repeats
// the URL's user info or query.
func (p *Policy) CheckRepoURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return refused("not a URL")
	}
	scheme := strings.ToLower(u.Scheme)
	switch {
	case u.User != nil:
		return &Refused{Reason: "must not contain credentials (user info)", Credential: true}
	case scheme != "https" && scheme != "http":
		return refused("scheme %q is not allowed: use https", u.Scheme)
	case u.Host == "":
		return refused("has no host")
	case u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return refused("must not have a query or fragment")
	case u.Opaque != "" || strings.Trim(u.Path, "/") == "":
		return refused("has no repository path")
	case strings.HasSuffix(u.Hostname(), "."):
		// "127.0.0.1." is a DNS name, not the address it spells, and
		// "github.com." is github.com under another spelling: neither is
		// needed, and both would slip past a rule.
		return refused("host %s must not end in a dot", u.Host)
	}
	hostport := canonical(scheme, u.Host)
	rule, ok := p.hosts[hostport]
	host := u.Hostname()
	if _, err := netip.ParseAddr(host); err == nil && !ok {
		return refused("IP address hosts are not allowed (allowed: %s and LEVIATHAN_ALLOWED_HOSTS)", p.forgeName())
	}
	if !ok || !rule.repo {
		return refused("host %s is not allowed (allowed: %s and LEVIATHAN_ALLOWED_HOSTS)", u.Host, p.forgeName())
	}
	if scheme == "http" && !rule.http {
		return refused("plain http is not allowed for %s: use https (http only to a loopback forge)", u.Host)
	}
	return nil
}

// forgeName is the forge's git host for messages, without the default port.
func (p *Policy) forgeName() string {
	h, port, _ := net.SplitHostPort(p.forge)
	if port == "443" {
		return h
	}
	return p.forge
}

// Credentials reports whether a credential may be sent with a request to
// u: only to the forge's own hosts, over https, or plain http where the
// policy allows it for that host (a loopback forge, or one the operator
// listed with http://).
func (p *Policy) Credentials(u *url.URL) bool {
	if u == nil {
		return false
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "https" && scheme != "http" || strings.HasSuffix(u.Hostname(), ".") {
		return false
	}
	rule, ok := p.hosts[canonical(scheme, u.Host)]
	return ok && rule.credential && (scheme == "https" || rule.http)
}

// CheckRedirect is an http.Client's CheckRedirect that follows a redirect
// only on the same host and port, and without a downgrade to plain http: a
// forge that moved a repository keeps it on its own host.
func CheckRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("egress: too many redirects")
	}
	prev := via[len(via)-1].URL
	if canonical(prev.Scheme, prev.Host) != canonical(req.URL.Scheme, req.URL.Host) ||
		(strings.EqualFold(prev.Scheme, "https") && !strings.EqualFold(req.URL.Scheme, "https")) {
		return fmt.Errorf("egress: refused a redirect from %s to another host or scheme", prev.Host)
	}
	return nil
}

// DialContext connects like net.Dialer.DialContext, but only to addresses
// the policy allows for the host named in addr: public addresses for any
// host; loopback and private ones only for a host listed as private, or
// an IP address configured as the forge or an allowed host; link-local,
// multicast and unspecified ones never. The name is resolved once and the
// checked address is dialed, so a second answer cannot differ.
func (p *Policy) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("egress: %w", err)
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = p.lookup(ctx, host); err != nil {
		return nil, fmt.Errorf("egress: resolve %s: %w", host, err)
	}
	var allowed []netip.Addr
	for _, a := range addrs {
		if p.addrAllowed(host, port, a) {
			allowed = append(allowed, a)
		}
	}
	if len(allowed) == 0 {
		return nil, &Refused{Reason: fmt.Sprintf("connection to %s refused: it resolves only to loopback, private, link-local or other non-public addresses (list the host in LEVIATHAN_PRIVATE_HOSTS if it lives there)", host)}
	}
	var firstErr error
	for _, a := range allowed {
		c, err := p.dial(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return &idleConn{Conn: c, idle: p.idle}, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

// idleConn is a connection closed after idle without traffic: every read
// and every write moves its read deadline to idle from then, so a long
// upload or a connection taken from the pool starts its wait afresh, and
// only silence from the other side while a request waits runs it out.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(b []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.idle)); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	return n, err
}

// addrAllowed decides one resolved address of host.
func (p *Policy) addrAllowed(host, port string, a netip.Addr) bool {
	a = a.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(),
		a.IsInterfaceLocalMulticast(), a.IsMulticast():
		return false
	case public(a):
		return true
	}
	name := strings.ToLower(strings.Trim(host, "[]"))
	if ip, err := netip.ParseAddr(name); err == nil {
		// An IP address the operator configured (the forge at
		// 127.0.0.1:3000), dialed as itself.
		if ip.Unmap() != a {
			return false
		}
		if p.private[name] {
			return true
		}
		for _, scheme := range []string{"https", "http"} {
			if _, ok := p.hosts[canonical(scheme, net.JoinHostPort(name, port))]; ok {
				return true
			}
		}
		return false
	}
	name = strings.TrimSuffix(name, ".")
	if _, err := netip.ParseAddr(name); err == nil {
		return false // a name that spells an address ("127.0.0.1."), resolved to anything
	}
	return p.private[name]
}

// nonPublic are ranges that are not the internet's beyond what netip
// classifies: carrier-grade NAT, "this network", the reserved class E and
// broadcast, benchmarking, and NAT64 (which can embed any IPv4 address).
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("64:ff9b::/96"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	netip.MustParsePrefix("2002::/16"), // 6to4 embeds IPv4 too
}

// public reports whether a is a global unicast address on the internet.
func public(a netip.Addr) bool {
	if a.IsLoopback() || a.IsPrivate() || !a.IsGlobalUnicast() {
		return false
	}
	return !slices.ContainsFunc(nonPublic, func(p netip.Prefix) bool { return p.Contains(a) })
}

// Transport is an HTTP transport that dials through the policy, with
// bounded connect, TLS and header waits, and no proxy from the
// environment (a proxy would be dialed instead of the checked host).
func (p *Policy) Transport() *http.Transport {
	return &http.Transport{
		DialContext:           p.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          32,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       min(30*time.Second, p.idle/2), // before an idle one meets its read timeout
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// Client is an HTTP client over Transport that follows redirects only on
// the same host (CheckRedirect).
func (p *Policy) Client() *http.Client {
	return &http.Client{Transport: p.Transport(), CheckRedirect: CheckRedirect}
}
