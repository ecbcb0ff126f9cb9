package graph

import (
	"bytes"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestIDSet(t *testing.T) {
	s := newIDSet(0)
	seen := map[uuid.UUID]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	ids := []uuid.UUID{{}, {}} // the zero UUID too, twice
	for range 50_000 {
		var u uuid.UUID
		for i := range u {
			u[i] = byte(rng.UintN(4)) // few values: many collide in part
		}
		ids = append(ids, u)
	}
	for i, u := range ids {
		if got, want := s.add(u), !seen[u]; got != want {
			t.Fatalf("add #%d %v = %v, want %v", i, u, got, want)
		}
		seen[u] = true
		if i == 20_000 {
			s.reserve(100_000)
		}
	}
	if s.len() != len(seen) {
		t.Fatalf("len %d, want %d", s.len(), len(seen))
	}
	got := s.appendTo(nil)
	want := make([]uuid.UUID, 0, len(seen))
	for u := range seen {
		want = append(want, u)
	}
	cmp := func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) }
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	if !slices.Equal(got, want) {
		t.Fatal("appendTo does not list the set")
	}
}

// parseUUIDReference is the byte-by-byte parser parseUUID replaced.
func parseUUIDReference(id []byte) (uuid.UUID, bool) {
	var u uuid.UUID
	if len(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
		return u, false
	}
	hex := func(c byte) (byte, bool) {
		switch {
		case c >= '0' && c <= '9':
			return c - '0', true
		case c >= 'a' && c <= 'f':
			return c - 'a' + 10, true
		}
		return 0, false
	}
	j := 0
	for i := 0; i < 36; i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i--
			continue
		}
		hi, ok1 := hex(id[i])
		lo, ok2 := hex(id[i+1])
		if !ok1 || !ok2 {
			return u, false
		}
		u[j] = hi<<4 | lo
		j++
	}
	return u, true
}

func TestParseUUID(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	ids := []string{"891483a5-ac32-5c87-bbd6-6f63d4c12b0c", "891483A5-ac32-5c87-bbd6-6f63d4c12b0c",
		"00000000-0000-0000-0000-000000000000", "891483a5-ac32-5c87-bbd6-6f63d4c12b0", "seq-12", ""}
	const alphabet = "0123456789abcdefABCDEFgz-\x00\xff"
	for range 100_000 {
		b := []byte(uuid.New().String())
		for range rng.IntN(3) {
			b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		}
		ids = append(ids, string(b))
	}
	for _, id := range ids {
		u, ok := parseUUID([]byte(id))
		wu, wok := parseUUIDReference([]byte(id))
		if ok != wok || ok && u != wu {
			t.Fatalf("parseUUID(%q) = %v %v, want %v %v", id, u, ok, wu, wok)
		}
	}
}

// pullIdentityReference is the url.Parse-based pullIdentity replaced.
func pullIdentityReference(r *record) (repo string, number int64) {
	number = r.prNumber
	if len(r.prURL) > 0 {
		if u, err := url.Parse(string(r.prURL)); err == nil && u.Host != "" {
			parts := strings.Split(strings.Trim(u.Path, "/"), "/")
			if n := len(parts); n >= 4 && (parts[n-2] == "pull" || parts[n-2] == "pulls") {
				if number == 0 {
					number, _ = strconv.ParseInt(parts[n-1], 10, 64)
				}
				repo = u.Host + "/" + strings.Join(parts[:n-2], "/")
			}
		}
	}
	if number == 0 {
		if len(r.prURL) > 0 {
			return string(r.prURL), 0 // the URL is the identity
		}
		return "", 0
	}
	if repo == "" {
		switch {
		case len(r.repo) > 0:
			repo = string(r.repo)
		case len(r.target) > 0:
			repo = string(r.target)
		default:
			return "", 0
		}
	}
	return repo, number
}

func TestPullIdentity(t *testing.T) {
	urls := []string{"", "https://github.com/o/r/pull/4", "http://github.com/o/r/pulls/4/", "https://github.com//o/r/pull/7",
		"https://github.com/o/pull/4", "https://h/a/b/c/pull/12", "https://h:8080/o/r/pull/3", "https://u@h/o/r/pull/3",
		"https://h/o%2Fx/r/pull/3", "https://h/o/r/pull/3?x=1#f", "HTTPS://h/o/r/pull/3", "ftp://h/o/r/pull/3",
		"https:///o/r/pull/3", "https://h", "https://h/", "/o/r/pull/3", "https://h/o/r/pull/x", "https://h/o/r/pull/",
		"https://h/o/r/pulls/99999999999999999999", "https://h é/o/r/pull/1", "https://h/ö/r/pull/1", "https://h/o r/x/pull/1",
		"https://[::1]/o/r/pull/1", "https://h/o/r/pull/1\x00", "https://h/./../pull/1", "https://h~_-.x/o/r/pull/1",
	}
	const alphabet = "hsp:/.%@?#~_-0123456789abAZ é[]\\"
	rng := rand.New(rand.NewPCG(5, 6))
	for range 50_000 {
		b := []byte("https://github.com/leviathan-dev/atlas/pull/4")
		for range rng.IntN(4) {
			b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		}
		urls = append(urls, string(b))
	}
	for _, u := range urls {
		for _, r := range []record{
			{prURL: []byte(u)},
			{prURL: []byte(u), prNumber: 5},
			{prURL: []byte(u), repo: []byte("o/r"), target: []byte("t")},
			{prURL: []byte(u), prNumber: 6, target: []byte("t")},
		} {
			repo, number := pullIdentity(&r, nil)
			wrepo, wnumber := pullIdentityReference(&r)
			if string(repo) != wrepo || number != wnumber {
				t.Fatalf("pullIdentity(%q, %d) = %q %d, want %q %d", u, r.prNumber, repo, number, wrepo, wnumber)
			}
		}
	}
}

// TestNoneThrough: the leader's answer on whether messages remain.
