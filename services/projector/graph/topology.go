package graph

import (
	"strings"

	"github.com/leviathan-dev/leviathan/events"
)

// Upstream's repository indexer reports a target's topology as record
// events (no attempt): topo.indexed (commit_sha and counts), and one
// topo.area.discovered, topo.subsystem.discovered or
// topo.dependency.discovered per item, each with target_id. The graph
// keeps, per target, the stream sequences of those events (the payloads
// stay in the stream) for the /v1/topology routes.

// The topology event types.
const (
	TopoIndexed    events.Type = "topo.indexed"
	TopoArea       events.Type = "topo.area.discovered"
	TopoSubsystem  events.Type = "topo.subsystem.discovered"
	TopoDependency events.Type = "topo.dependency.discovered"
)

// topology is what the graph keeps of one target's topology events.
type topology struct {
	indexed, indexedTS              uint64 // the newest topo.indexed (by timestamp) and its time
	areas, subsystems, dependencies []uint64
}

// Topology is a target's topology events, by stream sequence.
type Topology struct {
	// Indexed is the newest topo.indexed; 0 when there is none.
	Indexed                         uint64
	Areas, Subsystems, Dependencies []uint64
}

// projectTopology keeps a topo.* record event's sequence; it reports
// whether t is one.
func (g *Graph) projectTopology(t events.Type, tgt sym, r *record) bool {
	if !strings.HasPrefix(string(t), "topo.") {
		return false
	}
	if tgt == 0 || r.seq == 0 {
		return true
	}
	if g.topo == nil {
		g.topo = map[sym]*topology{}
	}
	tp := g.topo[tgt]
	if tp == nil {
		tp = &topology{}
		g.topo[tgt] = tp
	}
	switch t {
	case TopoIndexed:
		if ts := uint64(max(r.ts, 0)); tp.indexed == 0 || ts >= tp.indexedTS {
			tp.indexed, tp.indexedTS = r.seq, ts
		}
	case TopoArea:
		tp.areas = append(tp.areas, r.seq)
	case TopoSubsystem:
		tp.subsystems = append(tp.subsystems, r.seq)
	case TopoDependency:
		tp.dependencies = append(tp.dependencies, r.seq)
	}
	return true
}

// TopologyOf returns the target's topology events; ok is false when it has
// none.
func (g *Graph) TopologyOf(target string) (Topology, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	id, ok := g.syms.ids[target]
	if !ok {
		return Topology{}, false
	}
	tp := g.topo[id]
	if tp == nil {
		return Topology{}, false
	}
	return Topology{Indexed: tp.indexed, Areas: append([]uint64(nil), tp.areas...),
		Subsystems: append([]uint64(nil), tp.subsystems...), Dependencies: append([]uint64(nil), tp.dependencies...)}, true
}
