package projector

import (
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/leviathan-dev/leviathan/events"
)

// Node and edge types of the graph (DESIGN.md §8).
const (
	NodeTarget      = "Target"
	NodeTask        = "Task"
	NodeAttempt     = "Attempt"
	NodeCommit      = "Commit"
	NodePullRequest = "PullRequest"

	EdgeDependsOn = "DEPENDS_ON"
	EdgeProduced  = "PRODUCED"
)

// recentLimit is how many events the summary lists.
const recentLimit = 20

// Node is a vertex of the graph. Ids are unique across targets: a task id
// includes its target, a commit and a pull request their repository.
type Node struct {
	ID    string            `json:"id"`
	Type  string            `json:"type"`
	Props map[string]string `json:"props,omitempty"`
}

// Edge is a directed edge of the graph.
type Edge struct {
	Type string `json:"type"`
	From string `json:"from"`
	To   string `json:"to"`
}

// RecentEvent is one line of the summary's recent_events.
type RecentEvent struct {
	EventID   string    `json:"event_id"`
	Timestamp time.Time `json:"timestamp"`
	EventType string    `json:"event_type"`
	ActorID   string    `json:"actor_id"`
	Target    string    `json:"target"`
	AttemptID string    `json:"attempt_id"`
}

// Summary is the body of GET /v1/graph/summary.
type Summary struct {
	NodesByType  map[string]int `json:"nodes_by_type"`
	EdgesByType  map[string]int `json:"edges_by_type"`
	RecentEvents []RecentEvent  `json:"recent_events"`
}

// Graph is the projection of the event stream. Applying the same events
// gives the same graph; an event id seen before changes nothing. It is safe
// for concurrent use.
type Graph struct {
	mu     sync.RWMutex
	nodes  map[string]*Node
	edges  map[Edge]struct{}
	seen   map[string]struct{}
	recent []RecentEvent // ring of the last recentLimit events, oldest first
	// titles remembers task titles from requests until attempt.created
	// makes the task node (a rejected request makes no node).
	titles map[string]string
}

// NewGraph returns an empty graph.
func NewGraph() *Graph {
	return &Graph{
		nodes: map[string]*Node{}, edges: map[Edge]struct{}{},
		seen: map[string]struct{}{}, titles: map[string]string{},
	}
}

// Node ids.
func targetID(target string) string          { return "target:" + target }
func taskID(target, task string) string      { return "task:" + target + "/" + task }
func attemptID(attempt string) string        { return "attempt:" + attempt }
func commitID(target, sha string) string     { return "commit:" + target + "/" + sha }
func prID(repo string, number string) string { return "pr:" + repo + "#" + number }

// Apply projects one event. It reports whether the event was new.
func (g *Graph) Apply(env events.Envelope) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if env.EventID != "" {
		if _, dup := g.seen[env.EventID]; dup {
			return false
		}
		g.seen[env.EventID] = struct{}{}
	}
	g.project(env)
	g.recent = append(g.recent, RecentEvent{
		EventID: env.EventID, Timestamp: env.Timestamp, EventType: string(env.EventType),
		ActorID: env.ActorID, Target: env.TargetID, AttemptID: env.AttemptID,
	})
	if len(g.recent) > recentLimit {
		g.recent = g.recent[len(g.recent)-recentLimit:]
	}
	return true
}

// project updates nodes and edges; unknown event types are only recorded
// in recent events.
func (g *Graph) project(env events.Envelope) {
	var ref events.Ref
	_ = env.DecodePayload(&ref)
	target := env.TargetID
	if target == "" {
		target = ref.TargetID
	}
	switch env.EventType {
	case events.AttemptRequested:
		var req events.Request
		if env.DecodePayload(&req) == nil && req.Task.Title != "" {
			g.titles[env.AttemptID] = req.Task.Title
		}
	case events.AttemptCreated:
		var p events.Created
		_ = env.DecodePayload(&p)
		t := g.node(targetID(target), NodeTarget)
		t.Props["name"] = target
		t.Props["repo_url"] = p.RepoURL
		task := g.node(taskID(target, p.TaskID), NodeTask)
		task.Props["task_id"] = p.TaskID
		if title := firstNonEmpty(p.TaskTitle, g.titles[env.AttemptID]); title != "" {
			task.Props["title"] = title
		}
		delete(g.titles, env.AttemptID)
		a := g.node(attemptID(env.AttemptID), NodeAttempt)
		a.Props["status"] = p.Status
		a.Props["target"] = target
		a.Props["task_id"] = p.TaskID
		g.edge(EdgeDependsOn, task.ID, t.ID)
		g.edge(EdgeDependsOn, a.ID, task.ID)
	case events.AttemptStarted:
		g.setStatus(env.AttemptID, "running")
	case events.BranchPushed:
		var p events.Pushed
		_ = env.DecodePayload(&p)
		c := g.node(commitID(target, p.CommitSHA), NodeCommit)
		c.Props["sha"] = p.CommitSHA
		c.Props["branch"] = p.BranchName
		g.edge(EdgeProduced, attemptID(env.AttemptID), c.ID)
	case events.PRCreated:
		var p events.PROpened
		_ = env.DecodePayload(&p)
		repo := firstNonEmpty(p.Repo, target)
		n := g.node(prID(repo, strconv.Itoa(p.PRNumber)), NodePullRequest)
		n.Props["url"] = p.PRURL
		n.Props["state"] = p.State
		n.Props["title"] = p.Title
		g.edge(EdgeProduced, attemptID(env.AttemptID), n.ID)
	case events.AttemptSucceeded:
		g.setStatus(env.AttemptID, "succeeded")
	case events.AttemptFailed:
		g.setStatus(env.AttemptID, "failed")
	case events.AttemptInvalidated:
		g.setStatus(env.AttemptID, "invalidated")
	}
}

func (g *Graph) node(id, typ string) *Node {
	n, ok := g.nodes[id]
	if !ok {
		n = &Node{ID: id, Type: typ, Props: map[string]string{}}
		g.nodes[id] = n
	}
	return n
}

func (g *Graph) edge(typ, from, to string) {
	// An edge from a node no event created yet would dangle; make the node.
	g.edges[Edge{Type: typ, From: from, To: to}] = struct{}{}
}

func (g *Graph) setStatus(attempt, status string) {
	if n, ok := g.nodes[attemptID(attempt)]; ok {
		n.Props["status"] = status
	}
}

// Summary counts nodes and edges by type (types with a count > 0 only)
// and lists the newest events first.
func (g *Graph) Summary() Summary {
	g.mu.RLock()
	defer g.mu.RUnlock()
	s := Summary{NodesByType: map[string]int{}, EdgesByType: map[string]int{}}
	for _, n := range g.nodes {
		s.NodesByType[n.Type]++
	}
	for e := range g.edges {
		s.EdgesByType[e.Type]++
	}
	s.RecentEvents = make([]RecentEvent, 0, len(g.recent))
	for i := len(g.recent) - 1; i >= 0; i-- {
		s.RecentEvents = append(s.RecentEvents, g.recent[i])
	}
	return s
}

// Nodes returns the nodes of a type, sorted by id.
func (g *Graph) Nodes(typ string) []Node {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []Node
	for _, n := range g.nodes {
		if n.Type == typ {
			c := *n
			c.Props = make(map[string]string, len(n.Props))
			for k, v := range n.Props {
				c.Props[k] = v
			}
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
