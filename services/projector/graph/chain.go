package graph

import (
	"crypto/sha256"
	"math"
	"sort"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// The hash chain (events/chain.go): every event the graph applies, in
// stream order, is chained to the one applied before it, as upstream's
// event store chains its log. Not chained: duplicates (an event id seen
// before; they change nothing), messages that are not events, and a
// request that carries a credential, which clone erases from the stream
// once it has rejected it: the chain must not depend on whether the
// erasure has happened yet. The graph keeps every link (the sequence and
// the hash, 40 bytes an event) and its snapshot carries them, so a
// restart goes on with the same chain and `leviathan verify` can compare
// it, link by link, with a replay of the stream.

// Hash is a chain hash.
type Hash = [sha256.Size]byte

// Link is one chained event: its stream sequence and its hash.
type Link struct {
	Seq  uint64
	Hash Hash
}

// linkChunk is how many links a chunk of the chain holds (160 KB). The
// chain grows a chunk at a time: a link, once added, is never copied
// again, and no chunk but the last has room to spare.
const linkChunk = 4096

// chain is the graph's links, in sequence order.
type chain struct {
	chunks [][]Link
	n      int
}

func (c *chain) len() int { return c.n }

func (c *chain) at(i int) *Link { return &c.chunks[i/linkChunk][i%linkChunk] }

func (c *chain) add(l Link) {
	if len(c.chunks) == 0 || len(c.chunks[len(c.chunks)-1]) == linkChunk {
		var next []Link // the first chunk grows as a slice does (small graphs)
		if len(c.chunks) > 0 {
			next = make([]Link, 0, linkChunk)
		}
		c.chunks = append(c.chunks, next)
	}
	last := &c.chunks[len(c.chunks)-1]
	*last = append(*last, l)
	c.n++
}

// search is the index of the first link with a sequence at or above seq
// (len when none).
func (c *chain) search(seq uint64) int {
	return sort.Search(c.n, func(i int) bool { return c.at(i).Seq >= seq })
}

// slice copies up to limit links from index i on.
func (c *chain) slice(i, limit int) []Link {
	j := min(c.n, i+max(limit, 0))
	out := make([]Link, 0, max(j-i, 0))
	for ; i < j; i++ {
		out = append(out, *c.at(i))
	}
	return out
}

// canonicalize prepares r for the chain (record.chain), from the message
// data it was decoded from; bare says data is a bare request body and at
// its time.
func (r *record) canonicalize(data []byte, bare bool, at time.Time) {
	r.chain, r.pending = false, events.Pending{}
	if events.Type(r.typ) == events.AttemptRequested {
		if _, what := events.FindCredential(data); what != "" {
			return
		}
	}
	if bare {
		c, err := events.CanonicalEvent(string(r.id), string(r.typ), string(r.actor), at.UTC().Format(time.RFC3339Nano), data)
		if err == nil {
			r.pending = c.Begin()
		}
	} else {
		r.pending, _ = events.BeginEnvelope(data)
	}
	r.chain = r.pending.Valid()
}

// link chains r (applyLocked, under the write lock).
func (g *Graph) link(r *record) {
	if !r.chain {
		return
	}
	var prev *Hash
	if n := g.links.len(); n > 0 {
		prev = &g.links.at(n - 1).Hash
	} else if g.chainStart != nil {
		prev = g.chainStart
	}
	g.links.add(Link{Seq: r.seq, Hash: r.pending.Finish(prev)})
	r.pending = events.Pending{}
}

// StartChain makes the first event the graph chains link to prev instead
// of being the first of the chain: for a replay of a stream whose first
// messages have aged out, prev is the hash recorded before them.
func (g *Graph) StartChain(prev Hash) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.chainStart = &prev
}

// ChainHead is the newest link; ok is false while nothing is chained.
func (g *Graph) ChainHead() (l Link, n int, ok bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if n = g.links.len(); n == 0 {
		return Link{}, 0, false
	}
	return *g.links.at(n - 1), n, true
}

// Links returns up to limit links with a sequence above after, oldest
// first.
func (g *Graph) Links(after uint64, limit int) []Link {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if after == math.MaxUint64 {
		return nil
	}
	return g.links.slice(g.links.search(after+1), limit)
}

// HashAt is the chain hash of the event at stream sequence seq.
func (g *Graph) HashAt(seq uint64) (Hash, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.hashAtLocked(seq)
}

func (g *Graph) hashAtLocked(seq uint64) (Hash, bool) {
	if i := g.links.search(seq); i < g.links.len() && g.links.at(i).Seq == seq {
		return g.links.at(i).Hash, true
	}
	return Hash{}, false
}

// Break is where two chains of the same stream part: the first link, in
// sequence order, that one has and the other has not, or that both have
// with different hashes.
type Break struct {
	Seq uint64
	// Recorded and Replayed are the hashes at Seq; nil where that chain
	// has no link at Seq.
	Recorded, Replayed *Hash
}

// String says what is wrong at b.Seq.
func (b *Break) String() string {
	switch {
	case b.Replayed == nil:
		return "the event chained there is no longer in the stream (deleted)"
	case b.Recorded == nil:
		return "the stream has an event there that was never chained"
	default:
		return "the event there hashes to " + events.HashHex(*b.Replayed) + ", but " + events.HashHex(*b.Recorded) + " was recorded"
	}
}

// FirstBreak compares the links recorded (by a running projector) with
// those replayed from the stream, over sequences from through upTo, and
// returns the first break, or nil when they are the same.
func FirstBreak(recorded, replayed []Link, from, upTo uint64) *Break {
	in := func(ls []Link) []Link {
		i := sort.Search(len(ls), func(i int) bool { return ls[i].Seq >= from })
		j := sort.Search(len(ls), func(i int) bool { return ls[i].Seq > upTo })
		return ls[i:max(i, j)]
	}
	a, b := in(recorded), in(replayed)
	for i := 0; i < len(a) || i < len(b); i++ {
		switch {
		case i >= len(b) || i < len(a) && a[i].Seq < b[i].Seq:
			return &Break{Seq: a[i].Seq, Recorded: &a[i].Hash}
		case i >= len(a) || b[i].Seq < a[i].Seq:
			return &Break{Seq: b[i].Seq, Replayed: &b[i].Hash}
		case a[i].Hash != b[i].Hash:
			return &Break{Seq: a[i].Seq, Recorded: &a[i].Hash, Replayed: &b[i].Hash}
		}
	}
	return nil
}
