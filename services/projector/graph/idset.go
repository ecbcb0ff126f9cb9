package graph

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"

	"github.com/google/uuid"
)

// idSet is the set of event ids (UUIDs) the graph has applied: the
// duplicate check of every event. A map[uuid.UUID]struct{} of a million
// ids costs a replay a few cache misses an event, and the check is on the
// path that applies events one after another; this is open addressing with
// linear probing in one array, so a check mostly reads one cache line.
//
// Slots are found with a hash keyed at random per set (the mixing of
// Go's runtime hash where AES is not available), so ids chosen by a
// producer cannot line up into long probe sequences.
type idSet struct {
	slots []uuid.UUID // the zero UUID marks a free slot
	zero  bool        // whether the zero UUID itself is in the set
	n     int
	key   [4]uint64
	sink  byte // what touch read, so that its reads are not optimized away
}

// maxLoad is the fill (in tenths) past which the set grows.
const maxLoad = 7

func newIDSet(n int) *idSet {
	s := &idSet{}
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	for i := range s.key {
		s.key[i] = binary.LittleEndian.Uint64(b[i*8:])
	}
	s.slots = make([]uuid.UUID, slotsFor(n))
	return s
}

// slotsFor is the number of slots that holds n ids.
func slotsFor(n int) int { return max(n*10/maxLoad+1, 16) }

// len is the number of ids in the set.
func (s *idSet) len() int { return s.n }

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// slot is where the probe for u starts.
func (s *idSet) slot(u *uuid.UUID) int {
	a, b := binary.LittleEndian.Uint64(u[:8]), binary.LittleEndian.Uint64(u[8:])
	h := mix(mix(a^s.key[0], b^s.key[1])^s.key[2], s.key[3])
	i, _ := bits.Mul64(h, uint64(len(s.slots)))
	return int(i)
}

// add puts u in the set; it reports whether u was not there before.
func (s *idSet) add(u uuid.UUID) bool {
	if u == (uuid.UUID{}) {
		if s.zero {
			return false
		}
		s.zero = true
		s.n++
		return true
	}
	for i := s.slot(&u); ; {
		switch s.slots[i] {
		case u:
			return false
		case uuid.UUID{}:
			s.slots[i] = u
			s.n++
			if s.n*10 > len(s.slots)*maxLoad {
				s.grow(s.n * 3 / 2)
			}
			return true
		}
		if i++; i == len(s.slots) {
			i = 0
		}
	}
}

// reserve makes room for n more ids.
func (s *idSet) reserve(n int) {
	if need := slotsFor(s.n + n); need > len(s.slots) {
		s.grow(s.n + n)
	}
}

func (s *idSet) grow(n int) {
	old := s.slots
	s.slots = make([]uuid.UUID, slotsFor(n))
	for _, u := range old {
		if u == (uuid.UUID{}) {
			continue
		}
		i := s.slot(&u)
		for s.slots[i] != (uuid.UUID{}) {
			if i++; i == len(s.slots) {
				i = 0
			}
		}
		s.slots[i] = u
	}
}

// appendTo appends the ids in the set to ids, in no particular order.
func (s *idSet) appendTo(ids []uuid.UUID) []uuid.UUID {
	if s.zero {
		ids = append(ids, uuid.UUID{})
	}
	for _, u := range s.slots {
		if u != (uuid.UUID{}) {
			ids = append(ids, u)
		}
	}
	return ids
}

// touch reads the slot where the check of each item's id starts, in a
// loop of nothing else: the reads do not depend on one another, so their
// cache misses overlap; the checks that follow, one after another, then
// find their slots in cache.
func (s *idSet) touch(items []Item) {
	var at [64]int
	var x byte
	for len(items) > 0 {
		batch := items[:min(len(items), len(at))]
		items = items[len(batch):]
		n := 0
		for i := range batch {
			if it := &batch[i]; it.isUUID {
				at[n] = s.slot(&it.uid)
				n++
			}
		}
		for _, i := range at[:n] {
			x ^= s.slots[i][0]
		}
	}
	s.sink = x
}
