package graph

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/google/uuid"

	"github.com/leviathan-dev/leviathan/events"
)

// The snapshot is the whole graph and the stream sequence it reflects, in a
// compact binary form of its own: strings once, everything else as
// varints and indices. The projector stores it in the Object Store and
// resumes from it, so a restart replays only what came after.
//
// Layout (all integers uvarint unless noted, strings as length + bytes):
//
//	magic "LVGRAPH\n", version, stream created (varint unix ns), seq, applied
//	symbols (from 1), targets, tasks, commits, pulls, attempt records,
//	attempt nodes (record indices in node order), each target's attempts,
//	failures, recent events, artifacts, topology, the hash chain (start, links),
//	seen event ids (sorted), other ids (sorted)
//
// References between nodes are positions in the creation-order slices,
// plus one where nil is possible. Applying the same events gives the same
// bytes, which the tests use to compare a resumed graph with a replayed one.
const (
	snapshotMagic = "LVGRAPH\n"
	// SnapshotVersion changes with any change of the layout or of what the
	// graph derives from events: a snapshot of another version is ignored
	// and the stream replayed from the start.
	SnapshotVersion = 7
)

// errSnapshotVersion is returned for a snapshot of another format version.
var errSnapshotVersion = errors.New("projector: snapshot of another format version")

// SnapshotMeta is what a snapshot says about where it came from.
type SnapshotMeta struct {
	// StreamCreated identifies the stream the snapshot was taken of
	// (its creation time in unix nanoseconds): a stream deleted and made
	// again starts over.
	StreamCreated int64
	// Seq is the last stream sequence the graph reflects.
	Seq uint64
}

// MarshalSnapshot encodes the graph. It holds the read lock while it copies
// the graph's state, then sorts the event ids (the costly part) without it.
func (g *Graph) MarshalSnapshot(streamCreated int64) ([]byte, SnapshotMeta) {
	g.mu.RLock()
	w := &writer{buf: make([]byte, 0, 1<<20)}
	w.buf = append(w.buf, snapshotMagic...)
	w.uint(SnapshotVersion)
	w.int(streamCreated)
	meta := SnapshotMeta{StreamCreated: streamCreated, Seq: g.seq}
	w.uint(g.seq)
	w.uint(g.applied)

	w.uint(uint64(len(g.syms.strs)))
	for _, s := range g.syms.strs[1:] {
		w.str(s)
	}
	w.uint(uint64(len(g.targets)))
	for _, t := range g.targets {
		w.uint(uint64(t.name))
		w.str(t.repoURL)
	}
	w.uint(uint64(len(g.tasks)))
	for _, t := range g.tasks {
		w.ref(t.target != nil, targetIdx(t.target))
		w.str(t.id)
		w.str(t.title)
	}
	w.uint(uint64(len(g.commits)))
	for _, c := range g.commits {
		w.ref(c.target != nil, targetIdx(c.target))
		w.str(c.sha)
		w.str(c.branch)
	}
	w.uint(uint64(len(g.pulls)))
	for _, p := range g.pulls {
		w.uint(uint64(p.repo))
		w.int(p.number)
		w.str(p.url)
		w.str(p.title)
		w.uint(uint64(p.state))
	}
	w.uint(uint64(len(g.records)))
	for _, a := range g.records {
		w.str(a.id)
		w.ref(a.target != nil, targetIdx(a.target))
		w.ref(a.task != nil, taskIdx(a.task))
		w.uint(uint64(a.status))
		w.int(a.created)
		w.int(a.updated)
		w.str(a.title)
		w.str(a.reason)
		w.uint(uint64(len(a.steps)))
		for _, s := range a.steps {
			w.uint(s.seq)
			w.int(s.ts)
			w.uint(uint64(s.typ))
			w.uint(uint64(s.actor))
		}
		w.uint(uint64(len(a.commits)))
		for _, c := range a.commits {
			w.uint(uint64(c.idx))
		}
		w.uint(uint64(len(a.pulls)))
		for _, p := range a.pulls {
			w.uint(uint64(p.idx))
		}
	}
	w.uint(uint64(len(g.nodes)))
	for _, a := range g.nodes {
		w.uint(uint64(a.idx))
	}
	for _, t := range g.targets {
		w.uint(uint64(len(t.attempts)))
		for _, a := range t.attempts {
			w.uint(uint64(a.idx))
		}
	}
	w.uint(uint64(len(g.failed)))
	for _, f := range g.failed {
		w.uint(uint64(f.attempt.idx))
		w.uint(f.seq)
		w.int(f.ts)
		w.uint(uint64(f.typ))
		w.uint(uint64(f.stage))
		w.uint(uint64(f.kind))
		w.str(f.summary)
		w.str(f.task)
	}
	w.uint(uint64(g.ringNext))
	w.uint(uint64(g.ringLen))
	for i := range g.ringLen {
		e := g.ring[i]
		if e.isUUID {
			w.uint(1)
			w.buf = append(w.buf, e.uid[:]...)
		} else {
			w.uint(0)
			w.str(e.str)
		}
		w.int(e.ts)
		w.uint(uint64(e.typ))
		w.uint(uint64(e.actor))
		w.uint(uint64(e.target))
		w.str(e.attempt)
		w.uint(e.seq)
	}
	w.uint(uint64(len(g.artifacts)))
	for _, a := range g.artifacts {
		w.str(a.id)
		w.str(a.sha)
		w.str(a.kind)
		w.str(a.path)
		w.int(a.size)
		w.ref(a.producer != nil, producerIdx(a.producer))
	}
	w.uint(uint64(len(g.topo)))
	for _, tgt := range slices.Sorted(maps.Keys(g.topo)) {
		tp := g.topo[tgt]
		w.uint(uint64(tgt))
		w.uint(tp.indexed)
		w.uint(tp.indexedTS)
		for _, seqs := range [][]uint64{tp.areas, tp.subsystems, tp.dependencies} {
			w.uint(uint64(len(seqs)))
			for _, s := range seqs {
				w.uint(s)
			}
		}
	}
	if g.chainStart != nil {
		w.uint(1)
		w.buf = append(w.buf, g.chainStart[:]...)
	} else {
		w.uint(0)
	}
	w.uint(uint64(g.links.len()))
	var prevSeq uint64
	for i := range g.links.len() {
		l := g.links.at(i)
		w.uint(l.Seq - prevSeq)
		w.buf = append(w.buf, l.Hash[:]...)
		prevSeq = l.Seq
	}
	ids := g.seen.appendTo(make([]uuid.UUID, 0, g.seen.len()))
	other := make([]string, 0, len(g.seenOther))
	for id := range g.seenOther {
		other = append(other, id)
	}
	g.mu.RUnlock()

	slices.SortFunc(ids, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
	slices.Sort(other)
	w.uint(uint64(len(ids)))
	for _, id := range ids {
		w.buf = append(w.buf, id[:]...)
	}
	w.uint(uint64(len(other)))
	for _, id := range other {
		w.str(id)
	}
	return w.buf, meta
}

func producerIdx(a *attempt) int32 {
	if a == nil {
		return 0
	}
	return a.idx
}

func targetIdx(t *target) int32 {
	if t == nil {
		return 0
	}
	return t.idx
}

func taskIdx(t *task) int32 {
	if t == nil {
		return 0
	}
	return t.idx
}

// UnmarshalSnapshot decodes a snapshot into a new graph. Every index is
// checked, so a damaged snapshot is an error (and the projector replays
// the stream), never a panic or a wrong graph.
func UnmarshalSnapshot(data []byte) (*Graph, SnapshotMeta, error) {
	var meta SnapshotMeta
	if !bytes.HasPrefix(data, []byte(snapshotMagic)) {
		return nil, meta, errors.New("projector: not a graph snapshot")
	}
	r := &reader{buf: data[len(snapshotMagic):]}
	if v := r.uint(); v != SnapshotVersion {
		return nil, meta, fmt.Errorf("%w (%d, want %d)", errSnapshotVersion, v, SnapshotVersion)
	}
	g := New()
	r.strs = &g.mem.strs
	meta.StreamCreated = r.int()
	meta.Seq = r.uint()
	g.seq = meta.Seq
	g.applied = r.uint()

	nsyms := r.count(1)
	for i := 1; i < nsyms && r.err == nil; i++ {
		s := r.str()
		if _, dup := g.syms.ids[s]; dup {
			r.fail("duplicate symbol")
		}
		g.syms.add(s)
	}
	symOf := func() sym {
		v := r.uint()
		if v >= uint64(len(g.syms.strs)) {
			r.fail("symbol out of range")
			return 0
		}
		return sym(v)
	}
	n := r.count(2)
	for i := 0; i < n && r.err == nil; i++ {
		t := &target{idx: int32(i), name: symOf(), repoURL: r.str()}
		g.targets = append(g.targets, t)
		g.byTarget[t.name] = t
	}
	targetRef := func() *target {
		i, ok := r.ref(len(g.targets))
		if !ok {
			return nil
		}
		return g.targets[i]
	}
	n = r.count(3)
	for i := 0; i < n && r.err == nil; i++ {
		t := g.mem.tasks.new()
		*t = task{idx: int32(i), target: targetRef(), id: r.str(), title: r.str()}
		g.tasks = append(g.tasks, t)
		g.byTask[taskKey{target: nameOf(t.target), id: t.id}] = t
		if t.target != nil {
			g.dependsOn++
		}
	}
	n = r.count(3)
	for i := 0; i < n && r.err == nil; i++ {
		c := g.mem.commits.new()
		*c = commit{idx: int32(i), target: targetRef(), sha: r.str(), branch: r.str()}
		g.commits = append(g.commits, c)
		g.byCommit[commitKey{target: nameOf(c.target), sha: c.sha}] = c
	}
	n = r.count(5)
	for i := 0; i < n && r.err == nil; i++ {
		p := g.mem.pulls.new()
		*p = pull{idx: int32(i), repo: symOf(), number: r.int(), url: r.str(), title: r.str(), state: symOf()}
		g.pulls = append(g.pulls, p)
		g.byPull[pullKey{repo: p.repo, number: p.number}] = p
	}
	n = r.count(10)
	for i := 0; i < n && r.err == nil; i++ {
		a := g.mem.attempts.new()
		*a = attempt{idx: int32(i), id: r.str(), target: targetRef()}
		if j, ok := r.ref(len(g.tasks)); ok {
			a.task = g.tasks[j]
			g.dependsOn++
		}
		a.status, a.created, a.updated, a.title, a.reason = symOf(), r.int(), r.int(), r.str(), r.str()
		ns := r.count(4)
		if ns > stepsKept {
			a.steps = make([]step, 0, ns)
		} else {
			a.steps = g.newSteps()
		}
		for k := 0; k < ns && r.err == nil; k++ {
			a.steps = append(a.steps, step{seq: r.uint(), ts: r.int(), typ: symOf(), actor: symOf()})
		}
		nc := r.count(1)
		for k := 0; k < nc && r.err == nil; k++ {
			if j, ok := r.index(len(g.commits)); ok {
				a.commits = append(a.commits, g.commits[j])
				g.produced++
			}
		}
		np := r.count(1)
		for k := 0; k < np && r.err == nil; k++ {
			if j, ok := r.index(len(g.pulls)); ok {
				a.pulls = append(a.pulls, g.pulls[j])
				g.produced++
			}
		}
		g.records = append(g.records, a)
		g.byAttempt[a.id] = a
	}
	n = r.count(1)
	for i := 0; i < n && r.err == nil; i++ {
		j, ok := r.index(len(g.records))
		if !ok {
			break
		}
		a := g.records[j]
		if a.node {
			r.fail("attempt node listed twice")
		}
		a.node = true
		g.nodes = append(g.nodes, a)
	}
	for _, t := range g.targets {
		n = r.count(1)
		for i := 0; i < n && r.err == nil; i++ {
			if j, ok := r.index(len(g.records)); ok {
				t.attempts = append(t.attempts, g.records[j])
			}
		}
	}
	n = r.count(8)
	for i := 0; i < n && r.err == nil; i++ {
		j, ok := r.index(len(g.records))
		if !ok {
			break
		}
		f := &failure{attempt: g.records[j], seq: r.uint(), ts: r.int(),
			typ: symOf(), stage: symOf(), kind: symOf(), summary: r.str(), task: r.str()}
		if g.syms.str(f.typ) != string(events.RequestDuplicate) {
			f.attempt.failure = f // the latest, as applying them set it; an ignored duplicate is none
		}
		g.failed = append(g.failed, f)
	}
	g.ringNext, g.ringLen = r.count(0), r.count(0)
	if g.ringNext >= RecentEventsKept || g.ringLen > RecentEventsKept || (g.ringLen < RecentEventsKept && g.ringNext != g.ringLen) {
		r.fail("recent events out of range")
	}
	for i := 0; i < g.ringLen && r.err == nil; i++ {
		var e recentEvent
		switch r.uint() {
		case 1:
			e.isUUID = true
			copy(e.uid[:], r.bytes(16))
		case 0:
			e.str = r.str()
		default:
			r.fail("bad event id")
		}
		e.ts, e.typ, e.actor, e.target, e.attempt, e.seq = r.int(), symOf(), symOf(), symOf(), r.str(), r.uint()
		g.ring[i] = e
	}
	n = r.count(5)
	for i := 0; i < n && r.err == nil; i++ {
		a := &artifact{id: r.str(), sha: r.str(), kind: r.str(), path: r.str(), size: r.int()}
		if j, ok := r.ref(len(g.records)); ok {
			a.producer = g.records[j]
			g.produced++
		}
		g.artifacts = append(g.artifacts, a)
		g.byArtifact[a.id] = a
	}
	if n := r.count(5); n > 0 {
		g.topo = make(map[sym]*topology, n)
		for i := 0; i < n && r.err == nil; i++ {
			tgt := symOf()
			tp := &topology{indexed: r.uint(), indexedTS: r.uint()}
			for _, seqs := range []*[]uint64{&tp.areas, &tp.subsystems, &tp.dependencies} {
				m := r.count(1)
				for j := 0; j < m && r.err == nil; j++ {
					*seqs = append(*seqs, r.uint())
				}
			}
			g.topo[tgt] = tp
		}
	}
	switch r.uint() {
	case 0:
	case 1:
		var h Hash
		copy(h[:], r.bytes(len(h)))
		g.chainStart = &h
	default:
		r.fail("bad chain start")
	}
	n = r.count(1 + len(Hash{}))
	var prevSeq uint64
	for i := 0; i < n && r.err == nil; i++ {
		l := Link{Seq: prevSeq + r.uint()}
		copy(l.Hash[:], r.bytes(len(l.Hash)))
		g.links.add(l)
		prevSeq = l.Seq
	}
	n = r.count(16)
	g.seen.reserve(n)
	for i := 0; i < n && r.err == nil; i++ {
		var id uuid.UUID
		copy(id[:], r.bytes(16))
		g.seen.add(id)
	}
	n = r.count(1)
	for i := 0; i < n && r.err == nil; i++ {
		g.seenOther[r.str()] = struct{}{}
	}
	if r.err == nil && len(r.buf) != 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return nil, meta, r.err
	}
	for _, a := range g.records {
		g.countStatus(a.status, 1)
	}
	return g, meta, nil
}

func nameOf(t *target) sym {
	if t == nil {
		return 0
	}
	return t.name
}

type writer struct{ buf []byte }

func (w *writer) uint(v uint64) { w.buf = binary.AppendUvarint(w.buf, v) }
func (w *writer) int(v int64)   { w.buf = binary.AppendVarint(w.buf, v) }
func (w *writer) str(s string) {
	w.uint(uint64(len(s)))
	w.buf = append(w.buf, s...)
}

// ref writes an optional index as index+1, 0 for none.
func (w *writer) ref(ok bool, i int32) {
	if !ok {
		w.uint(0)
		return
	}
	w.uint(uint64(i) + 1)
}

// reader decodes what writer wrote. After the first error every read
// returns a zero value, so decoding code checks r.err once per loop.
type reader struct {
	buf  []byte
	err  error
	strs *strArena // where str keeps what it reads (nil: strings of their own)
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("projector: damaged snapshot: %s", what)
	}
	r.buf = nil
}

func (r *reader) uint() uint64 {
	v, n := binary.Uvarint(r.buf)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.buf = r.buf[n:]
	return v
}

func (r *reader) int() int64 {
	v, n := binary.Varint(r.buf)
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.buf = r.buf[n:]
	return v
}

// count reads a length whose items take at least minSize bytes each, so a
// damaged length cannot make the decoder allocate without bound.
func (r *reader) count(minSize int) int {
	v := r.uint()
	if minSize > 0 && v > uint64(len(r.buf)/minSize)+1 || v > 1<<40 {
		r.fail("length out of range")
		return 0
	}
	return int(v)
}

func (r *reader) bytes(n int) []byte {
	if len(r.buf) < n {
		r.fail("truncated")
		return make([]byte, n)
	}
	b := r.buf[:n]
	r.buf = r.buf[n:]
	return b
}

func (r *reader) str() string {
	n := r.uint()
	if n > uint64(len(r.buf)) {
		r.fail("truncated string")
		return ""
	}
	if r.strs == nil {
		return string(r.bytes(int(n)))
	}
	return r.strs.str(r.bytes(int(n)))
}

// index reads a position below n; false (and the reader failed) for
// another.
func (r *reader) index(n int) (int, bool) {
	v := r.uint()
	if v >= uint64(n) {
		r.fail("index out of range")
		return 0, false
	}
	return int(v), r.err == nil
}

// ref reads an optional index written by writer.ref.
func (r *reader) ref(n int) (int, bool) {
	v := r.uint()
	if v == 0 {
		return 0, false
	}
	if v > uint64(n) {
		r.fail("reference out of range")
		return 0, false
	}
	return int(v - 1), true
}
