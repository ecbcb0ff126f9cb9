package graph

import (
	"cmp"
	"strconv"
	"strings"

	"github.com/leviathan-dev/leviathan/events"
)

// NodeView is a node as the API returns it, in the Python control plane's
// shape.
type NodeView struct {
	NodeID     string         `json:"node_id"`
	NodeType   string         `json:"node_type"`
	Properties map[string]any `json:"properties"`
	CreatedAt  *Time          `json:"created_at,omitempty"`
	UpdatedAt  *Time          `json:"updated_at,omitempty"`
}

// AttemptItem is one attempt of GET /v1/attempts (the Python keys
// attempt_id, task_id, target, status, timestamp, pr_url, pr_number, and a
// few more).
type AttemptItem struct {
	AttemptID   string  `json:"attempt_id"`
	NodeID      string  `json:"node_id"`
	TaskID      string  `json:"task_id"`
	TaskTitle   string  `json:"task_title,omitempty"`
	Target      string  `json:"target"`
	Status      string  `json:"status"`
	Timestamp   Time    `json:"timestamp"`
	UpdatedAt   Time    `json:"updated_at"`
	PRURL       *string `json:"pr_url"`
	PRNumber    *int64  `json:"pr_number"`
	CommitSHA   string  `json:"commit_sha,omitempty"`
	FailureType string  `json:"failure_type,omitempty"`
	Error       string  `json:"error,omitempty"`
	Reason      string  `json:"invalidation_reason,omitempty"`
	// Steps is the attempt's timeline (not in the API's list).
	Steps []Step `json:"-"`
}

// Step is one event of an attempt's timeline.
type Step struct {
	Seq       uint64 `json:"seq"`
	EventType string `json:"event_type"`
	Timestamp Time   `json:"timestamp"`
	ActorID   string `json:"actor_id"`
}

// FailureItem is one line of GET /v1/failures.
type FailureItem struct {
	AttemptID   string `json:"attempt_id"`
	TaskID      string `json:"task_id"`
	Target      string `json:"target"`
	Error       string `json:"error"`
	Timestamp   Time   `json:"timestamp"`
	EventType   string `json:"event_type"`
	Stage       string `json:"stage,omitempty"`
	FailureType string `json:"failure_type,omitempty"`
}

// AttemptDetail is what the graph knows of one attempt: its node (nil when
// the attempt never became one, e.g. a rejected request), its timeline and
// the nodes it produced.
type AttemptDetail struct {
	Node      *NodeView
	Item      AttemptItem
	Steps     []Step
	Artifacts []NodeView
}

// Attempts lists Attempt nodes, newest first, of one target ("" for all).
func (g *Graph) Attempts(target string, limit int) []AttemptItem {
	g.mu.RLock()
	defer g.mu.RUnlock()
	list := g.nodes
	if target != "" {
		id, ok := g.syms.ids[target]
		t := g.byTarget[id]
		if !ok || t == nil {
			return []AttemptItem{}
		}
		list = t.attempts
	}
	out := make([]AttemptItem, 0, min(limit, len(list)))
	for i := len(list) - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, g.item(list[i], false))
	}
	return out
}

// RecentAttempts is Attempts with each attempt's timeline, for the page.
func (g *Graph) RecentAttempts(limit int) []AttemptItem {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := make([]AttemptItem, 0, min(limit, len(g.nodes)))
	for i := len(g.nodes) - 1; i >= 0 && len(out) < limit; i-- {
		out = append(out, g.item(g.nodes[i], true))
	}
	return out
}

func (g *Graph) item(a *attempt, steps bool) AttemptItem {
	it := AttemptItem{
		AttemptID: a.id, NodeID: attemptNodeID(a.id), Target: g.targetName(a.target),
		Status: g.syms.str(a.status), Timestamp: nanoTime(a.created), UpdatedAt: nanoTime(a.updated),
		Reason: a.reason,
	}
	if a.task != nil {
		it.TaskID, it.TaskTitle = a.task.id, a.task.title
	}
	if n := len(a.pulls); n > 0 {
		p := a.pulls[n-1]
		u, num := g.pullURL(p), p.number
		it.PRURL = &u
		if num != 0 {
			it.PRNumber = &num
		}
	}
	if n := len(a.commits); n > 0 {
		it.CommitSHA = a.commits[n-1].sha
	}
	if f := a.failure; f != nil {
		it.FailureType, it.Error = g.syms.str(f.kind), f.summary
	}
	if steps {
		it.Steps = g.steps(a)
	}
	return it
}

func (g *Graph) steps(a *attempt) []Step {
	out := make([]Step, len(a.steps))
	for i, s := range a.steps {
		out[i] = Step{Seq: s.seq, EventType: g.syms.str(s.typ), Timestamp: nanoTime(s.ts), ActorID: g.syms.str(s.actor)}
	}
	return out
}

// Attempt returns what the graph knows of an attempt id; false when no
// event ever named it.
func (g *Graph) Attempt(id string) (AttemptDetail, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	a := g.byAttempt[id]
	if a == nil {
		return AttemptDetail{}, false
	}
	d := AttemptDetail{Item: g.item(a, false), Steps: g.steps(a), Artifacts: []NodeView{}}
	if a.node {
		n := g.attemptView(a)
		d.Node = &n
	}
	for _, c := range a.commits {
		d.Artifacts = append(d.Artifacts, g.commitView(c))
	}
	for _, p := range a.pulls {
		d.Artifacts = append(d.Artifacts, g.pullView(p))
	}
	for _, art := range g.artifacts {
		if art.producer == a {
			d.Artifacts = append(d.Artifacts, artifactView(art))
		}
	}
	return d, true
}

// IsAttemptNode reports whether id is an Attempt node.
func (g *Graph) IsAttemptNode(id string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	a := g.byAttempt[id]
	return a != nil && a.node
}

// attemptView is the Attempt node as upstream's API returns it: node_id is
// the attempt id, and the properties carry upstream's schema (node_id,
// node_type, created_at, created_by, attempt_id, task_id, attempt_number,
// status, started_at, completed_at, exit_code, failure_reason) and ours
// besides (target, timestamp, pr_url, pr_number, failure_type, ...).
func (g *Graph) attemptView(a *attempt) NodeView {
	it := g.item(a, false)
	var started, completed any
	for _, st := range a.steps {
		switch events.Type(g.syms.str(st.typ)) {
		case events.AttemptStarted:
			if started == nil {
				started = nanoTime(st.ts)
			}
		case events.AttemptSucceeded, events.AttemptFailed:
			completed = nanoTime(st.ts)
		}
	}
	props := map[string]any{
		"node_id": a.id, "node_type": NodeAttempt, "created_at": it.Timestamp, "created_by": nil,
		"attempt_id": a.id, "target": it.Target, "task_id": it.TaskID, "attempt_number": 1, "status": it.Status,
		"started_at": started, "completed_at": completed, "exit_code": nil, "failure_reason": nil,
		"timestamp": it.Timestamp, "pr_url": it.PRURL, "pr_number": it.PRNumber,
	}
	if it.FailureType != "" || it.Error != "" {
		props["failure_type"], props["failure_reason"] = it.FailureType, it.Error
		props["failure_stage"] = g.syms.str(a.failure.stage)
	}
	if a.reason != "" {
		props["invalidation_reason"] = a.reason
	}
	created, updated := it.Timestamp, it.UpdatedAt
	return NodeView{NodeID: a.id, NodeType: NodeAttempt, Properties: props, CreatedAt: &created, UpdatedAt: &updated}
}

func (g *Graph) commitView(c *commit) NodeView {
	return NodeView{NodeID: g.commitNodeID(c), NodeType: NodeCommit, Properties: map[string]any{
		"commit_sha": c.sha, "branch_name": c.branch, "target": g.targetName(c.target),
	}}
}

func artifactView(a *artifact) NodeView {
	return NodeView{NodeID: a.id, NodeType: NodeArtifact, Properties: map[string]any{
		"artifact_id": a.id, "sha256": a.sha, "artifact_type": a.kind, "size_bytes": a.size, "storage_path": a.path,
	}}
}

func (g *Graph) pullView(p *pull) NodeView {
	var number any = p.number
	if p.number == 0 {
		number = nil
	}
	return NodeView{NodeID: g.pullNodeID(p), NodeType: NodePullRequest, Properties: map[string]any{
		"pr_number": number, "pr_url": g.pullURL(p), "repo": g.syms.str(p.repo),
		"title": p.title, "state": g.syms.str(p.state),
	}}
}

// Failures lists attempt.failed and attempt.rejected events, newest first,
// of one target ("" for all).
func (g *Graph) Failures(target string, limit int) []FailureItem {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := []FailureItem{}
	for i := len(g.failed) - 1; i >= 0 && len(out) < limit; i-- {
		f := g.failed[i]
		a := f.attempt
		tgt := g.targetName(a.target)
		if tgt == "" {
			tgt = g.stepTarget(f)
		}
		if target != "" && tgt != target {
			continue
		}
		it := FailureItem{
			AttemptID: a.id, Target: tgt, Error: f.summary, Timestamp: nanoTime(f.ts),
			EventType: g.syms.str(f.typ), Stage: g.syms.str(f.stage), FailureType: g.syms.str(f.kind),
		}
		if a.task != nil {
			it.TaskID = a.task.id
		}
		if f.task != "" {
			it.TaskID = f.task // the ignored duplicate's own
		}
		out = append(out, it)
	}
	return out
}

// stepTarget is the target of a rejected request, which makes no node: the
// one its events named, found in the recent events when still there.
func (g *Graph) stepTarget(f *failure) string {
	for i := 1; i <= g.ringLen; i++ {
		e := g.ring[(g.ringNext-i+RecentEventsKept)%RecentEventsKept]
		if e.attempt == f.attempt.id && e.target != 0 {
			return g.syms.str(e.target)
		}
	}
	return ""
}

// Picture is the part of the graph the page draws: the nodes around the
// newest attempts, in columns by type, and the edges between them.
type Picture struct {
	Columns [5][]PictureNode // Target, Task, Attempt, Commit, PullRequest
	Edges   []PictureEdge
}

// PictureNode is one node of the picture.
type PictureNode struct {
	ID, Label, Status string
}

// PictureEdge is one edge of the picture, by node id.
type PictureEdge struct {
	Type, From, To string
}

// Picture returns the subgraph of the newest attempts.
func (g *Graph) Picture(attempts int) Picture {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var pic Picture
	seen := map[string]bool{}
	add := func(col int, id, label, status string) {
		if !seen[id] {
			seen[id] = true
			pic.Columns[col] = append(pic.Columns[col], PictureNode{ID: id, Label: label, Status: status})
		}
	}
	for i := len(g.nodes) - 1; i >= 0 && len(pic.Columns[2]) < attempts; i-- {
		a := g.nodes[i]
		aid := attemptNodeID(a.id)
		add(2, aid, a.id, g.syms.str(a.status))
		if t := a.task; t != nil {
			tid := g.taskNodeID(t)
			label := t.id
			if t.title != "" {
				label += " · " + t.title
			}
			add(1, tid, label, "")
			pic.Edges = append(pic.Edges, PictureEdge{EdgeDependsOn, aid, tid})
			if t.target != nil {
				name := g.syms.str(t.target.name)
				if !seen[targetNodeID(name)] {
					add(0, targetNodeID(name), name, "")
				}
				if !seen[tid+">"] {
					seen[tid+">"] = true
					pic.Edges = append(pic.Edges, PictureEdge{EdgeDependsOn, tid, targetNodeID(name)})
				}
			}
		}
		for _, c := range a.commits {
			cid := g.commitNodeID(c)
			add(3, cid, shortSHA(c.sha), "")
			pic.Edges = append(pic.Edges, PictureEdge{EdgeProduced, aid, cid})
		}
		for _, p := range a.pulls {
			pid := g.pullNodeID(p)
			add(4, pid, g.pullLabel(p), g.syms.str(p.state))
			pic.Edges = append(pic.Edges, PictureEdge{EdgeProduced, aid, pid})
		}
	}
	return pic
}

// pullLabel is a pull request as a box shows it: owner/repo#N (the host
// left out), or its URL's last segments when it has no number.
func (g *Graph) pullLabel(p *pull) string {
	repo := g.syms.str(p.repo)
	if p.number == 0 {
		u := p.url
		if i := strings.Index(u, "://"); i >= 0 {
			u = u[i+3:]
		}
		if parts := strings.Split(strings.Trim(u, "/"), "/"); len(parts) > 3 {
			return strings.Join(parts[len(parts)-4:], "/")
		}
		return cmp.Or(u, repo)
	}
	if parts := strings.Split(repo, "/"); len(parts) >= 3 {
		repo = strings.Join(parts[len(parts)-2:], "/")
	}
	return repo + "#" + strconv.FormatInt(p.number, 10)
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
