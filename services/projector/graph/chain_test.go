package graph

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
)

// items decodes envelopes as stream messages at sequences from first on.
func items(t *testing.T, envs []events.Envelope, first uint64) []Item {
	t.Helper()
	out := make([]Item, len(envs))
	for i, e := range envs {
		data, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out[i].Decode(first+uint64(i), events.Subject(e.AttemptID, e.EventType), data, time.Now())
	}
	return out
}

func TestChainLinksEveryNewEventInOrder(t *testing.T) {
	envs := append(eventgen.Attempt(1, eventgen.Succeeded), eventgen.Attempt(2, eventgen.Failed)...)
	g := New()
	its := items(t, envs, 1)
	g.ApplyItems(its, nil)
	// A duplicate (the same event again) is not chained.
	g.ApplyItems(items(t, envs[:1], uint64(len(envs)+1)), nil)

	links := g.Links(0, 1000)
	if len(links) != len(envs) {
		t.Fatalf("%d links for %d events", len(links), len(envs))
	}
	var prev *Hash
	for i, e := range envs {
		data, _ := e.Marshal()
		c, err := events.CanonicalEnvelope(data)
		if err != nil {
			t.Fatal(err)
		}
		want := events.ChainHash(c, prev)
		if links[i].Seq != uint64(i+1) || links[i].Hash != want {
			t.Fatalf("link %d: %+v, want seq %d hash %x", i, links[i], i+1, want)
		}
		prev = &links[i].Hash
	}
	if h, ok := g.HashAt(3); !ok || h != links[2].Hash {
		t.Fatal("HashAt(3) is not the third link")
	}
	if _, ok := g.HashAt(uint64(len(envs) + 1)); ok {
		t.Fatal("the duplicate has a hash")
	}

	// A replay gives the same links; a snapshot keeps them, and the graph
	// restored from it goes on with the same chain.
	again := New()
	again.ApplyItems(items(t, envs[:5], 1), nil)
	snap, _ := again.MarshalSnapshot(1)
	restored, _, err := UnmarshalSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	restored.ApplyItems(items(t, envs[5:], 6), nil)
	if b := FirstBreak(links, restored.Links(0, 1000), 0, ^uint64(0)); b != nil {
		t.Fatalf("restored chain: %v", b)
	}

	// A replay that starts after aged-out messages goes on from the hash
	// recorded before them.
	late := New()
	late.StartChain(links[3].Hash)
	late.ApplyItems(items(t, envs[4:], 5), nil)
	if b := FirstBreak(links, late.Links(0, 1000), 5, ^uint64(0)); b != nil {
		t.Fatalf("replay from seq 5: %v", b)
	}
	if b := FirstBreak(links, late.Links(0, 1000), 0, ^uint64(0)); b == nil || b.Seq != 1 || b.Replayed != nil {
		t.Fatalf("from seq 1 the replay lacks seq 1: %v", b)
	}
}

func TestFirstBreakNamesTheFirstDifference(t *testing.T) {
	h := func(b byte) Hash { return Hash{b} }
	rec := []Link{{1, h(1)}, {2, h(2)}, {4, h(4)}, {5, h(5)}}
	for _, c := range []struct {
		name     string
		replayed []Link
		upTo     uint64
		seq      uint64
		recorded bool
		replay   bool
	}{
		{"same", []Link{{1, h(1)}, {2, h(2)}, {4, h(4)}, {5, h(5)}, {6, h(6)}}, 5, 0, false, false},
		{"deleted", []Link{{1, h(1)}, {4, h(4)}, {5, h(5)}}, 5, 2, true, false},
		{"never chained", []Link{{1, h(1)}, {2, h(2)}, {3, h(3)}, {4, h(4)}, {5, h(5)}}, 5, 3, false, true},
		{"changed", []Link{{1, h(1)}, {2, h(2)}, {4, h(9)}, {5, h(5)}}, 5, 4, true, true},
		{"replay short", []Link{{1, h(1)}, {2, h(2)}, {4, h(4)}}, 5, 5, true, false},
	} {
		b := FirstBreak(rec, c.replayed, 0, c.upTo)
		if c.seq == 0 {
			if b != nil {
				t.Errorf("%s: %v", c.name, b)
			}
			continue
		}
		if b == nil || b.Seq != c.seq || (b.Recorded != nil) != c.recorded || (b.Replayed != nil) != c.replay || b.String() == "" {
			t.Errorf("%s: %+v, want seq %d", c.name, b, c.seq)
		}
	}
}

func TestRequestWithCredentialIsNotChained(t *testing.T) {
	body := []byte(`{"target":{"name":"t","repo_url":"https://x-access-token:ghp_0123456789abcdef0123456789abcdef0123@github.com/o/r.git"},"task":{"id":"T-1","title":"x"}}`)
	clean := []byte(`{"target":{"name":"t","repo_url":"https://github.com/o/r.git"},"task":{"id":"T-1","title":"x"}}`)
	g := New()
	its := make([]Item, 2)
	its[0].Decode(1, events.Subject("a-1", events.AttemptRequested), body, time.Now())
	its[1].Decode(2, events.Subject("a-2", events.AttemptRequested), clean, time.Now())
	g.ApplyItems(its, nil)
	links := g.Links(0, 10)
	if len(links) != 1 || links[0].Seq != 2 {
		t.Fatalf("links %+v: want only the request without a credential", links)
	}
}

func TestTopologySurvivesASnapshot(t *testing.T) {
	at := time.Date(2026, 1, 28, 12, 0, 0, 0, time.UTC)
	var envs []events.Envelope
	for i, typ := range []events.Type{TopoIndexed, TopoArea, TopoArea, TopoSubsystem, TopoDependency, TopoIndexed} {
		envs = append(envs, events.Envelope{EventID: fmt.Sprint("t-", i), EventType: typ, Timestamp: at.Add(time.Duration(i) * time.Second),
			TargetID: "radix", Payload: json.RawMessage(`{"target_id":"radix"}`)})
	}
	g := New()
	its := make([]Item, len(envs))
	for i, e := range envs {
		data, _ := e.Marshal()
		its[i].Decode(uint64(i+1), events.RecordSubject(e.EventType), data, at)
	}
	g.ApplyItems(its, nil)
	want := Topology{Indexed: 6, Areas: []uint64{2, 3}, Subsystems: []uint64{4}, Dependencies: []uint64{5}}
	if got, ok := g.TopologyOf("radix"); !ok || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("topology %+v, want %+v", got, want)
	}
	snap, _ := g.MarshalSnapshot(1)
	r, _, err := UnmarshalSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := r.TopologyOf("radix"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("restored topology %+v", got)
	}
}

// TestChainAcrossChunks checks the chain's chunked storage where chunks
// meet: every link is found by sequence and listed in order, from any
// point, and a snapshot keeps them all.
func TestChainAcrossChunks(t *testing.T) {
	var envs []events.Envelope
	for i := 0; len(envs) < 2*linkChunk+100; i++ {
		envs = append(envs, eventgen.Attempt(i, eventgen.Succeeded)...)
	}
	g := New()
	its := items(t, envs, 1)
	for i := range its { // every other sequence: links are found by seq, not index
		its[i].rec.seq = 2 * uint64(i+1)
	}
	g.ApplyItems(its, nil)
	n := len(envs)
	if head, count, ok := g.ChainHead(); !ok || count != n || head.Seq != 2*uint64(n) {
		t.Fatalf("head %+v, %d links, %v; want %d links, the last at %d", head, count, ok, n, 2*n)
	}
	all := g.Links(0, n+10)
	if len(all) != n {
		t.Fatalf("%d links of %d", len(all), n)
	}
	for i, l := range all {
		if l.Seq != 2*uint64(i+1) {
			t.Fatalf("link %d at seq %d", i, l.Seq)
		}
		if h, ok := g.HashAt(l.Seq); !ok || h != l.Hash {
			t.Fatalf("HashAt(%d) is not link %d", l.Seq, i)
		}
		if _, ok := g.HashAt(l.Seq - 1); ok {
			t.Fatalf("HashAt(%d) found a link at a sequence without one", l.Seq-1)
		}
	}
	for _, i := range []int{linkChunk - 2, linkChunk - 1, linkChunk, 2*linkChunk - 1} {
		got := g.Links(all[i].Seq-1, 3)
		if len(got) != 3 || got[0] != all[i] || got[2] != all[i+2] {
			t.Fatalf("Links after %d: %+v, want links %d.. of the chain", all[i].Seq-1, got, i)
		}
	}
	snap, _ := g.MarshalSnapshot(0)
	back, _, err := UnmarshalSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	if b := FirstBreak(all, back.Links(0, n+10), 0, 2*uint64(n)); b != nil {
		t.Fatalf("the snapshot's chain breaks at %d: %s", b.Seq, b)
	}
}

// TestAPanicSkipsOneEvent: an event whose projection panics is skipped
// with the panic as its error, the sequence moves past it, and the next
// event applies.
func TestAPanicSkipsOneEvent(t *testing.T) {
	body := []byte(`{"target":{"name":"t","repo_url":"https://github.com/o/r.git"},"task":{"id":"T-1","title":"x"}}`)
	g := New()
	its := make([]Item, 2)
	its[0].Decode(1, events.Subject("a-1", events.AttemptRequested), body, time.Now())
	its[1].Decode(2, events.Subject("a-2", events.AttemptRequested), body, time.Now())
	attempts := g.byAttempt
	g.byAttempt = nil // a new attempt's projection writes to a nil map
	if applied, dups := g.ApplyItems(its[:1], nil); applied != 0 || dups != 0 || its[0].Err() == nil ||
		!strings.Contains(its[0].Err().Error(), "panicked") || g.Seq() != 1 {
		t.Fatalf("a panicking event: applied %d, duplicates %d, err %v, seq %d", applied, dups, its[0].Err(), g.Seq())
	}
	g.byAttempt = attempts
	if applied, _ := g.ApplyItems(its[1:], nil); applied != 1 || its[1].Err() != nil || g.Seq() != 2 {
		t.Fatalf("the next event: applied %d, err %v, seq %d", applied, its[1].Err(), g.Seq())
	}
}
