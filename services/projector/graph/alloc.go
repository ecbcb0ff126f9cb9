package graph

import "unsafe"

// Allocation. The graph's nodes and strings live as long as the graph and
// arrive a million at a time in a replay, between the message buffers the
// replay drops as soon as they are decoded. Allocated one by one, they
// share the heap's spans with that garbage, and a span with one node left
// in it stays the process's memory: at a million events that was a
// quarter again as much as the graph itself held (HeapInuse against
// HeapAlloc, `make bench-projector`). So the nodes of the types an
// attempt makes come from slabs, the steps of a timeline in blocks of
// eight, and the strings the graph keeps from an arena: each block is
// allocated whole and holds only the graph's.

// graphMemory is where a graph's nodes, timelines and strings come from.
type graphMemory struct {
	attempts   slab[attempt]
	tasks      slab[task]
	commits    slab[commit]
	pulls      slab[pull]
	stepBlocks slab[[stepsKept]step]
	strs       strArena
}

// view is b as a string without a copy, for a map lookup: it must not be
// kept, since b's bytes change.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// slabLen is how many nodes a slab holds.
const slabLen = 128

// slab hands out the nodes of one type from blocks of slabLen.
type slab[T any] struct{ free []T }

func (s *slab[T]) new() *T {
	if len(s.free) == 0 {
		s.free = make([]T, slabLen)
	}
	p := &s.free[0]
	s.free = s.free[1:]
	return p
}

// stepsKept is how many steps an attempt's first block holds: eight is a
// whole successful attempt. A timeline that grows past it moves to a
// slice of its own, as any slice does.
const stepsKept = 8

// newSteps is an empty timeline with room for stepsKept steps.
func (g *Graph) newSteps() []step {
	b := g.mem.stepBlocks.new()
	return b[:0:stepsKept]
}

// arenaBlock is the size of the arena's blocks; arenaMax the longest
// string put in one (a longer one is allocated alone).
const (
	arenaBlock = 32 << 10
	arenaMax   = 1 << 10
)

// strArena keeps strings in shared blocks. A block's bytes are written
// once, before the string that covers them is made, and never again, so
// the strings are as immutable as any; a block lives as long as one of
// its strings does, which for the graph's strings is as long as the
// graph.
type strArena struct{ block []byte }

func (a *strArena) str(b []byte) string {
	switch {
	case len(b) == 0:
		return ""
	case len(b) > arenaMax:
		return string(b)
	case cap(a.block)-len(a.block) < len(b):
		a.block = make([]byte, 0, arenaBlock)
	}
	n := len(a.block)
	a.block = append(a.block, b...)
	return unsafe.String(&a.block[n], len(b))
}
