package events_test

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// The vectors were made by upstream's own hashing (testdata/chain_vectors.py
// runs Event.compute_hash's code with Python's json and hashlib): our chain
// must give the same hashes for the same events.
func TestChainHashMatchesUpstream(t *testing.T) {
	data, err := os.ReadFile("testdata/chain_vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors []struct {
		Event       json.RawMessage `json:"event"`
		Hash        string          `json:"hash"`
		PayloadJSON string          `json:"payload_json"`
	}
	if err := json.Unmarshal(data, &vectors); err != nil {
		t.Fatal(err)
	}
	var prev *[sha256.Size]byte
	for i, v := range vectors {
		c, err := events.CanonicalEnvelope(v.Event)
		if err != nil {
			t.Fatalf("vector %d: %v", i, err)
		}
		h := events.ChainHash(c, prev)
		if got := events.HashHex(h); got != v.Hash {
			t.Errorf("vector %d: hash %s, upstream %s\ncanonical %s<prev>%s", i, got, v.Hash, c.Head, c.Tail)
		}
		if v.PayloadJSON != "" {
			var e struct {
				ID, Type, Actor, Timestamp string
			}
			var raw map[string]any
			if err := json.Unmarshal(v.Event, &raw); err != nil {
				t.Fatal(err)
			}
			e.ID, e.Type, e.Actor, e.Timestamp = raw["event_id"].(string), raw["event_type"].(string), raw["actor_id"].(string), raw["timestamp"].(string)
			c2, err := events.CanonicalEvent(e.ID, e.Type, e.Actor, e.Timestamp, []byte(v.PayloadJSON))
			if err != nil {
				t.Fatal(err)
			}
			if got := events.HashHex(events.ChainHash(c2, prev)); got != v.Hash {
				t.Errorf("vector %d from %s: hash %s, upstream %s", i, v.PayloadJSON, got, v.Hash)
			}
		}
		prev = &h
	}
}

func TestCanonicalRefusesBadJSON(t *testing.T) {
	for _, p := range []string{``, `{`, `{"a":}`, `{"a":1,}`, `[1 2]`, `{"a":01}`, `{"a":"\x01"}`, `{"a":1} x`, `{"a":tru}`,
		strings.Repeat("[", 300) + strings.Repeat("]", 300)} {
		if _, err := events.CanonicalEvent("id", "t", "a", "2026-01-01T00:00:00Z", []byte(p)); err == nil {
			t.Errorf("%q: no error", p)
		}
	}
}

func TestIsoFormat(t *testing.T) {
	for in, want := range map[string]string{
		"2026-01-15T10:00:00Z":                "2026-01-15T10:00:00+00:00",
		"2026-01-15T10:00:00.5Z":              "2026-01-15T10:00:00.500000+00:00",
		"2026-01-15T10:00:00.123456789-05:30": "2026-01-15T10:00:00.123456-05:30",
		"2026-01-15T10:00:00.000000":          "2026-01-15T10:00:00",
		"2026-01-15 10:00:00.25":              "2026-01-15T10:00:00.250000",
		"2026-01-15T10:00:00.000000900Z":      "2026-01-15T10:00:00+00:00",
		"2026-01-15T10:00:00.1234567Z":        "2026-01-15T10:00:00.123456+00:00",
		"2026-01-15T10:00:00+00:00":           "2026-01-15T10:00:00+00:00",
		"not a time":                          "not a time",
	} {
		if got := events.IsoFormat(in); got != want {
			t.Errorf("IsoFormat(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkBeginEnvelope is the projector's per-event cost of the chain
// (the part its decode workers run), for a typical event.
func BenchmarkBeginEnvelope(b *testing.B) {
	env, err := events.New(events.PRCreated, "pr-7f3a", events.Ref{AttemptID: "a-20261130-034108-9f2c", TaskID: "T-42", TargetID: "atlas"},
		events.PROpened{Ref: events.Ref{AttemptID: "a-20261130-034108-9f2c", TaskID: "T-42", TargetID: "atlas"}, PRNumber: 17,
			PRURL: "https://github.com/acme/atlas/pull/17", BranchName: "agent/backlog-propose-a-20261130-034108-9f2c",
			CommitSHA: "0123456789abcdef0123456789abcdef01234567", Title: "Leviathan: Propose backlog entry", State: "open"},
		time.Date(2026, 11, 30, 3, 41, 8, 123456789, time.UTC))
	if err != nil {
		b.Fatal(err)
	}
	data, _ := env.Marshal()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		p, err := events.BeginEnvelope(data)
		if err != nil {
			b.Fatal(err)
		}
		p.Finish(nil)
	}
}

// BenchmarkNew is what publishing an event costs before the network: the
// payload marshalled, in canonical form, and the envelope.
func BenchmarkNew(b *testing.B) {
	ref := events.Ref{AttemptID: "a-20261130-034108-9f2c", TaskID: "T-42", TargetID: "atlas"}
	payload := events.PROpened{Ref: ref, PRNumber: 17, PRURL: "https://github.com/acme/atlas/pull/17",
		BranchName: "agent/backlog-propose-a-20261130-034108-9f2c", CommitSHA: "0123456789abcdef0123456789abcdef01234567",
		Title: "Leviathan: Propose backlog entry", State: "open"}
	at := time.Date(2026, 11, 30, 3, 41, 8, 123456789, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		env, err := events.New(events.PRCreated, "pr-7f3a", ref, payload, at)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := env.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
}
