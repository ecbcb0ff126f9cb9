package graph

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/leviathan-dev/leviathan/events"
)

// Node and edge types of the graph (DESIGN.md §8).
const (
	NodeTarget      = "Target"
	NodeTask        = "Task"
	NodeAttempt     = "Attempt"
	NodeCommit      = "Commit"
	NodePullRequest = "PullRequest"
	NodeArtifact    = "Artifact"

	EdgeDependsOn = "DEPENDS_ON"
	EdgeProduced  = "PRODUCED"
)

// SummaryEvents is how many events the summary lists; RecentEventsKept is how many
// GET /v1/events/recent can return.
const (
	SummaryEvents    = 20
	RecentEventsKept = 500
)

// Graph is the projection of the event stream: targets, tasks, attempts,
// commits and pull requests, and the edges between them (DESIGN.md §8).
//
// Applying the same events in the same order gives the same graph, down to
// the bytes of its snapshot; an event id seen before changes nothing; an
// event type the graph does not know is kept in the recent events and the
// attempt's timeline but makes no node or edge. It is safe for concurrent
// use: one writer (the projector) and any number of readers (the API).
//
// The representation is chosen for memory (the budget is 2 KB an attempt
// at a million events): node types are plain structs linked by pointers
// instead of maps of properties, edges are those pointers (so they are
// unique by construction and counted as they are made), low-cardinality
// strings (event types, actors, targets, statuses) are interned into
// 4-byte symbols, and counts are kept as the graph changes so the summary
// never walks the nodes.
type Graph struct {
	mu sync.RWMutex

	syms symbols

	targets []*target // creation order, as every slice below
	tasks   []*task
	commits []*commit
	pulls   []*pull
	// artifacts are rare (outside producers only), so an attempt finds
	// its own by a scan rather than by a field every attempt would carry.
	artifacts  []*artifact
	byArtifact map[string]*artifact
	records    []*attempt // every attempt id seen, node or not
	nodes      []*attempt // the attempt records that are Attempt nodes
	failed     []*failure

	byTarget  map[sym]*target
	byTask    map[taskKey]*task
	byCommit  map[commitKey]*commit
	byPull    map[pullKey]*pull
	byAttempt map[string]*attempt

	dependsOn, produced int

	// seen holds every event id applied: UUIDs (all of Leviathan's and the
	// Python worker's) as 16 bytes, anything else as a string.
	seen      *idSet
	seenOther map[string]struct{}

	ring     [RecentEventsKept]recentEvent
	ringNext int // index of the next write
	ringLen  int

	applied uint64 // events applied (not counting duplicates)
	seq     uint64 // stream sequence of the last message applied

	// summary caches the JSON of the summary for the state at summaryAt.
	summary   []byte
	summaryAt uint64

	// onStage, while applyAll runs with one, is told of every stage an
	// applied event ends (stageEnd).
	onStage StageFunc

	// links is the hash chain, one link per event chained (chain.go);
	// chainStart, when set, is the hash the first link follows.
	links      chain
	chainStart *Hash

	// topo holds each target's topology events (topology.go).
	topo map[sym]*topology

	// statuses counts the attempt records by status (0: none yet),
	// indexed by the status symbol.
	statuses []int

	mem graphMemory // alloc.go
}

// StageFunc is told that an applied event ended stage of an attempt with
// outcome (ok, failed, rejected); took is the time from the event that
// started the stage to this one, by their timestamps, when known.
type StageFunc func(stage, outcome string, took time.Duration, known bool)

// sym is an interned string; 0 is "".
type sym uint32

// symbols interns strings. Only low-cardinality values are interned.
type symbols struct {
	ids  map[string]sym
	strs []string
}

func (s *symbols) intern(b []byte) sym {
	if len(b) == 0 {
		return 0
	}
	if id, ok := s.ids[string(b)]; ok {
		return id
	}
	return s.add(string(b))
}

func (s *symbols) add(str string) sym {
	id := sym(len(s.strs))
	s.strs = append(s.strs, str)
	s.ids[str] = id
	return id
}

func (s *symbols) str(id sym) string { return s.strs[id] }

type target struct {
	idx      int32 // position in Graph.targets, as idx in each type below
	name     sym
	repoURL  string
	attempts []*attempt // Attempt nodes of this target, in order
}

type task struct {
	idx    int32
	target *target // nil when the events never named one
	id     string
	title  string
}

type taskKey struct {
	target sym
	id     string
}

type commit struct {
	idx    int32
	target *target
	sha    string
	branch string
}

type commitKey struct {
	target sym
	sha    string
}

// pull is a pull request. Its repository is host/owner/name when the URL
// says so, which makes its id unique across forges and targets.
type pull struct {
	idx    int32
	repo   sym
	number int64
	url    string // empty when it is https://<repo>/pull/<number>
	title  string
	state  sym
}

// artifact is what an outside producer reports with artifact.created
// (upstream's workers: logs, bundles): its id, content hash, kind, size
// and where it is stored, and the attempt that produced it, if any.
type artifact struct {
	id, sha, kind, path string
	size                int64
	producer            *attempt
}

type pullKey struct {
	repo   sym
	number int64
}

// attempt is what the graph knows of one attempt id. It becomes an Attempt
// node with the first event that says the attempt exists (attempt.created
// or any later stage); a request that was rejected, or not yet picked up,
// is a record without a node.
type attempt struct {
	idx     int32
	id      string
	target  *target
	task    *task
	status  sym
	node    bool
	created int64 // timestamp of its first and last event
	updated int64
	// title is the task title from the request, kept until the task node
	// exists to take it.
	title   string
	reason  string // why it was invalidated
	steps   []step
	commits []*commit
	pulls   []*pull
	failure *failure // the latest
}

// step is one event of an attempt's timeline; the event itself stays in
// the stream, at seq.
type step struct {
	seq   uint64
	ts    int64
	typ   sym
	actor sym
}

// failure is an attempt.failed or attempt.rejected event.
type failure struct {
	attempt *attempt
	seq     uint64
	ts      int64
	typ     sym // attempt.failed, attempt.rejected or request.duplicate
	stage   sym
	kind    sym // failure_type
	summary string
	task    string // a duplicate's own task id (its attempt's may differ)
}

type recentEvent struct {
	// id is the event id: uid when it is a canonical UUID (no string to
	// allocate for every event applied), else str.
	uid     uuid.UUID
	str     string
	isUUID  bool
	ts      int64
	typ     sym
	actor   sym
	target  sym
	attempt string
	seq     uint64 // stream sequence, to read the event back
}

// New returns an empty graph.
func New() *Graph {
	g := &Graph{
		syms:     symbols{ids: map[string]sym{}, strs: []string{""}},
		byTarget: map[sym]*target{}, byTask: map[taskKey]*task{}, byCommit: map[commitKey]*commit{},
		byPull: map[pullKey]*pull{}, byAttempt: map[string]*attempt{}, byArtifact: map[string]*artifact{},
		seen: newIDSet(0), seenOther: map[string]struct{}{},
	}
	g.syms.ids[""] = 0
	return g
}

// Apply projects one event envelope. It reports whether the event was new.
func (g *Graph) Apply(env events.Envelope) bool {
	data, err := env.Marshal()
	if err != nil {
		return false
	}
	var r record
	if ok, err := decodeEnvelope(data, &r); !ok || err != nil {
		return false
	}
	r.canonicalize(data, false, time.Time{})
	return g.apply(&r)
}

// Seq is the stream sequence of the last message applied.
func (g *Graph) Seq() uint64 {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.seq
}

// ApplyItems projects decoded messages in order under one lock; messages
// that were not events only advance the sequence. It returns how many
// events were new and how many duplicates. onStage (may be nil) is told
// of the stages the new events end.
func (g *Graph) ApplyItems(items []Item, onStage StageFunc) (applied, duplicates int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.onStage = onStage
	defer func() { g.onStage = nil }()
	g.seen.touch(items)
	for i := range items {
		it := &items[i]
		switch {
		case it.err != nil:
			g.seq = max(g.seq, it.rec.seq)
		case g.applyItem(it):
			applied++
		case it.err != nil: // it panicked
		default:
			duplicates++
		}
	}
	return applied, duplicates
}

// applyItem projects one decoded item. A panic (an event no test foresaw)
// becomes the item's error and the event is skipped: left to end the
// process, it would be met again on every replay, and the control plane
// would never come up.
func (g *Graph) applyItem(it *Item) (isNew bool) {
	defer func() {
		if v := recover(); v != nil {
			g.seq = max(g.seq, it.rec.seq)
			it.err = fmt.Errorf("projecting it panicked: %v\n%s", v, debug.Stack())
			isNew = false
		}
	}()
	return g.applyLocked(&it.rec, it.uid, it.isUUID)
}

// apply projects one decoded event; it reports whether the event was new.
func (g *Graph) apply(r *record) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	uid, isUUID := parseUUID(r.id)
	return g.applyLocked(r, uid, isUUID)
}

// applyLocked projects r, whose id parses (parseUUID) to uid, isUUID.
func (g *Graph) applyLocked(r *record, uid uuid.UUID, isUUID bool) bool {
	if r.seq > g.seq {
		g.seq = r.seq
	}
	if g.duplicate(r.id, uid, isUUID) {
		return false
	}
	g.applied++
	g.link(r)
	typ := g.syms.intern(r.typ)
	actor := g.syms.intern(r.actor)
	tgt := g.syms.intern(r.target)

	var a *attempt
	if len(r.attempt) > 0 {
		a = g.byAttempt[string(r.attempt)]
		if a == nil {
			a = g.mem.attempts.new()
			*a = attempt{idx: int32(len(g.records)), id: g.mem.strs.str(r.attempt), created: r.ts, steps: g.newSteps()}
			g.byAttempt[a.id] = a
			g.records = append(g.records, a)
			g.countStatus(0, 1)
		}
	}
	e := recentEvent{ts: r.ts, typ: typ, actor: actor, target: tgt, seq: r.seq}
	if isUUID {
		e.uid, e.isUUID = uid, true
	} else {
		e.str = string(r.id)
	}
	g.ring[g.ringNext] = e
	if a != nil {
		g.ring[g.ringNext].attempt = a.id
	}
	g.ringNext = (g.ringNext + 1) % RecentEventsKept
	g.ringLen = min(g.ringLen+1, RecentEventsKept)
	if a == nil {
		if !g.projectTopology(events.Type(r.typ), tgt, r) {
			g.projectRecord(events.Type(r.typ), tgt, r)
		}
		return true
	}
	if events.Type(r.typ) == events.RequestDuplicate {
		g.duplicateRequest(a, r, typ)
		return true
	}
	a.steps = append(a.steps, step{seq: r.seq, ts: r.ts, typ: typ, actor: actor})
	a.updated = r.ts
	if a.created == 0 {
		a.created = r.ts
	}
	g.project(a, events.Type(r.typ), tgt, typ, r)
	if g.onStage != nil {
		g.stageEnd(a, events.Type(r.typ), r)
	}
	return true
}

// Leviathan's stages and the event that starts each.
var stageInputs = events.StageInputs

// stageEnd tells onStage which stage the attempt's newest event (type t,
// already its last step) ends, if any, and how long the stage took: from
// the latest earlier event of the type that starts it. A failure in a
// stage Leviathan does not have (the Python worker's) counts as "other".
func (g *Graph) stageEnd(a *attempt, t events.Type, r *record) {
	var stage, outcome string
	switch t {
	case events.RepoFetched:
		stage, outcome = "clone", "ok"
	case events.BacklogEdited, events.BacklogUnchanged:
		stage, outcome = "backlog-edit", "ok"
	case events.BranchPushed:
		stage, outcome = "push", "ok"
	case events.PRCreated:
		stage, outcome = "pr", "ok"
	case events.AttemptRejected:
		stage, outcome = "clone", "rejected"
	case events.AttemptFailed:
		stage, outcome = string(r.stage), "failed"
	default:
		return
	}
	input, ok := stageInputs[stage]
	if !ok {
		g.onStage("other", outcome, 0, false)
		return
	}
	in, ok := g.syms.ids[string(input)]
	for i := len(a.steps) - 2; ok && i >= 0; i-- {
		if a.steps[i].typ == in {
			// A timestamp that was missing or did not parse is 0: no duration.
			took := time.Duration(r.ts - a.steps[i].ts)
			g.onStage(stage, outcome, took, r.ts != 0 && a.steps[i].ts != 0 && took >= 0)
			return
		}
	}
	g.onStage(stage, outcome, 0, false)
}

// setStatus sets the attempt's status and keeps the count by status.
func (g *Graph) setStatus(a *attempt, st sym) {
	g.countStatus(a.status, -1)
	a.status = st
	g.countStatus(st, 1)
}

func (g *Graph) countStatus(st sym, d int) {
	for int(st) >= len(g.statuses) {
		g.statuses = append(g.statuses, 0)
	}
	g.statuses[st] += d
}

// AttemptsByStatus counts the attempts by status ("unknown": none yet).
func (g *Graph) AttemptsByStatus() map[string]int {
	g.mu.RLock()
	defer g.mu.RUnlock()
	out := map[string]int{}
	for st, n := range g.statuses {
		if n == 0 {
			continue
		}
		name := g.syms.str(sym(st))
		if name == "" {
			name = "unknown"
		}
		out[name] += n
	}
	return out
}

// duplicate reports whether id (u when isUUID, its parsed form) was
// applied before, and remembers it. Events without an id (bare requests
// get one from their sequence) are never duplicates.
func (g *Graph) duplicate(id []byte, u uuid.UUID, isUUID bool) bool {
	if len(id) == 0 {
		return false
	}
	if isUUID {
		return !g.seen.add(u)
	}
	if _, ok := g.seenOther[string(id)]; ok {
		return true
	}
	g.seenOther[string(id)] = struct{}{}
	return false
}

// parseUUID parses a UUID in its canonical form (36 characters, lower-case
// hex), the only form stored as 16 bytes: another spelling of the same
// UUID is a different event id, kept as a string.
func parseUUID(id []byte) (uuid.UUID, bool) {
	var u uuid.UUID
	if len(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
		return u, false
	}
	var bad byte
	for j, i := range uuidHexAt {
		hi, lo := lowerHexValue[id[i]], lowerHexValue[id[i+1]]
		bad |= hi | lo
		u[j] = hi<<4 | lo
	}
	return u, bad < 16
}

// uuidHexAt is where each byte's two hex digits start in a canonical UUID.
var uuidHexAt = [16]uint8{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// lowerHexValue is the value of a lower-case hex digit, 0xff for any other
// byte.
var lowerHexValue = func() (t [256]byte) {
	for c := range t {
		switch {
		case c >= '0' && c <= '9':
			t[c] = byte(c - '0')
		case c >= 'a' && c <= 'f':
			t[c] = byte(c - 'a' + 10)
		default:
			t[c] = 0xff
		}
	}
	return t
}()

// Reserve sizes the graph's maps for about n more events, so a replay
// does not spend its time growing them.
func (g *Graph) Reserve(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen.len() > 0 || n <= 0 {
		return
	}
	g.seen.reserve(n)
	g.byAttempt = make(map[string]*attempt, n/6)
}

// Record events: what happened outside an attempt (or, for an artifact,
// possibly inside one), as upstream's producers report it through ingest.
const (
	TargetRegistered events.Type = "target.registered"
	TaskCreated      events.Type = "task.created"
	ArtifactCreated  events.Type = "artifact.created"
)

// linkArtifact makes the Artifact node of artifact.created (keyed by
// artifact_id; a later event for it updates it) and, when an attempt made
// it, its PRODUCED edge.
func (g *Graph) linkArtifact(a *attempt, r *record) {
	if len(r.artifactID) == 0 {
		return
	}
	art := g.byArtifact[string(r.artifactID)]
	if art == nil {
		art = &artifact{id: string(r.artifactID)}
		g.byArtifact[art.id] = art
		g.artifacts = append(g.artifacts, art)
	}
	if len(r.sha256) > 0 {
		art.sha = string(r.sha256)
	}
	if len(r.artifactType) > 0 {
		art.kind = string(r.artifactType)
	}
	if len(r.storagePath) > 0 {
		art.path = string(r.storagePath)
	}
	if r.sizeBytes > 0 {
		art.size = r.sizeBytes
	}
	if a != nil && art.producer == nil {
		art.producer = a
		g.produced++
	}
}

// projectRecord makes the nodes of record events (no attempt):
// target.registered (target_id, repo_url), task.created (target_id,
// task_id, title; a DEPENDS_ON edge to its target), artifact.created and
// pr.created (a PullRequest node without an attempt).
func (g *Graph) projectRecord(t events.Type, tgt sym, r *record) {
	switch t {
	case events.PRCreated:
		// Upstream's producers report pull requests without an attempt.
		g.linkPull(nil, r)
	case ArtifactCreated:
		g.linkArtifact(nil, r)
	case TargetRegistered:
		if tgt == 0 {
			return
		}
		tg := g.targetNode(tgt)
		if len(r.repoURL) > 0 {
			tg.repoURL = safeURL(r.repoURL)
		}
	case TaskCreated:
		if len(r.task) == 0 {
			return
		}
		var tg *target
		if tgt != 0 {
			tg = g.targetNode(tgt)
		}
		var name sym
		if tg != nil {
			name = tg.name
		}
		tk := g.byTask[taskKey{target: name, id: view(r.task)}]
		if tk == nil {
			tk = g.mem.tasks.new()
			*tk = task{idx: int32(len(g.tasks)), target: tg, id: g.mem.strs.str(r.task)}
			g.byTask[taskKey{target: name, id: tk.id}] = tk
			g.tasks = append(g.tasks, tk)
			if tg != nil {
				g.dependsOn++ // task → target
			}
		}
		if tk.title == "" && len(r.prTitle) > 0 {
			tk.title = g.mem.strs.str(r.prTitle)
		}
	}
}

// safeURL is a repository URL as the graph may keep it: without user
// info, query or fragment. A request is projected before clone has
// checked (and, when it carries a credential, erased) it, and the graph's
// snapshot and API must not keep what the stream no longer does.
func safeURL(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	u, err := url.Parse(string(b))
	if err != nil {
		return ""
	}
	u.User, u.RawQuery, u.Fragment, u.ForceQuery = nil, "", "", false
	return u.String()
}

// TaskFailed is the Python system's task-level failure event.
const TaskFailed events.Type = "task.failed"

// project updates nodes and edges for the attempt's new event.
func (g *Graph) project(a *attempt, t events.Type, tgt, typ sym, r *record) {
	switch t {
	case events.AttemptRequested:
		if len(r.title) > 0 {
			a.title = g.mem.strs.str(r.title)
		}
		if tg := g.byTarget[tgt]; tg != nil && tg.repoURL == "" {
			tg.repoURL = safeURL(r.repoURL)
		}
		return
	case events.AttemptRejected:
		summary := string(r.reason)
		if len(r.field) > 0 {
			summary = string(r.field) + ": " + summary
		}
		g.setStatus(a, g.syms.of("rejected"))
		g.fail(a, r, typ, g.syms.of("clone"), g.syms.of(string(events.InvalidRequest)), summary)
		return
	case ArtifactCreated:
		g.linkArtifact(a, r)
		return
	case TaskFailed:
		// The Python workers' task-level failure: listed with the
		// failures (error from the payload's error_summary, error or
		// reason), the attempt's own status untouched.
		summary := string(r.summary)
		if summary == "" {
			summary = string(r.reason)
		}
		g.fail(a, r, typ, 0, g.syms.of("task_failed"), summary)
		return
	case events.AttemptCreated, events.AttemptStarted, events.RepoFetched, events.BacklogEdited,
		events.BacklogUnchanged, events.BranchPushed, events.PRCreated, events.AttemptSucceeded,
		events.AttemptFailed, events.AttemptInvalidated:
	default:
		return // stored, not projected
	}
	g.materialize(a, tgt, r)
	switch t {
	case events.AttemptCreated:
		if a.status == 0 {
			g.setStatus(a, g.syms.of("created"))
		}
		if a.target != nil && a.target.repoURL == "" {
			a.target.repoURL = safeURL(r.repoURL)
		}
	case events.AttemptStarted:
		g.setStatus(a, g.syms.of("running"))
	case events.BranchPushed:
		g.linkCommit(a, r.commit, r.branchName)
	case events.PRCreated:
		g.linkCommit(a, r.commit, r.branchName)
		g.linkPull(a, r)
	case events.AttemptSucceeded:
		g.setStatus(a, g.syms.of("succeeded"))
		g.linkPull(a, r)
	case events.AttemptFailed:
		g.setStatus(a, g.syms.of("failed"))
		g.fail(a, r, typ, g.syms.intern(r.stage), g.syms.intern(r.failureType), string(r.summary))
	case events.AttemptInvalidated:
		g.setStatus(a, g.syms.of("invalidated"))
		a.reason = string(r.reason)
	}
}

// of interns a constant.
func (s *symbols) of(str string) sym {
	if id, ok := s.ids[str]; ok {
		return id
	}
	return s.add(str)
}

// materialize makes the attempt a node and links it to its target and
// task as soon as the events name them.
func (g *Graph) materialize(a *attempt, tgt sym, r *record) {
	if !a.node {
		a.node = true
		g.nodes = append(g.nodes, a)
	}
	if a.target == nil && tgt != 0 {
		a.target = g.targetNode(tgt)
		a.target.attempts = append(a.target.attempts, a)
	}
	if a.task == nil && len(r.task) > 0 {
		var tg sym
		if a.target != nil {
			tg = a.target.name
		}
		tk := g.byTask[taskKey{target: tg, id: view(r.task)}]
		if tk == nil {
			tk = g.mem.tasks.new()
			*tk = task{idx: int32(len(g.tasks)), target: a.target, id: g.mem.strs.str(r.task)}
			g.byTask[taskKey{target: tg, id: tk.id}] = tk
			g.tasks = append(g.tasks, tk)
			if tk.target != nil {
				g.dependsOn++ // task → target
			}
		}
		a.task = tk
		g.dependsOn++ // attempt → task
	}
	if a.task != nil && a.task.title == "" {
		switch {
		case len(r.title) > 0:
			a.task.title = g.mem.strs.str(r.title)
		case a.title != "":
			a.task.title = a.title
		}
	}
	if a.task != nil {
		a.title = ""
	}
}

func (g *Graph) targetNode(name sym) *target {
	t := g.byTarget[name]
	if t == nil {
		t = &target{idx: int32(len(g.targets)), name: name}
		g.byTarget[name] = t
		g.targets = append(g.targets, t)
	}
	return t
}

func (g *Graph) linkCommit(a *attempt, sha, branch []byte) {
	if len(sha) == 0 {
		return
	}
	var tg sym
	if a.target != nil {
		tg = a.target.name
	}
	c := g.byCommit[commitKey{target: tg, sha: view(sha)}]
	if c == nil {
		c = g.mem.commits.new()
		*c = commit{idx: int32(len(g.commits)), target: a.target, sha: g.mem.strs.str(sha), branch: g.mem.strs.str(branch)}
		g.byCommit[commitKey{target: tg, sha: c.sha}] = c
		g.commits = append(g.commits, c)
	} else if c.branch == "" {
		c.branch = g.mem.strs.str(branch)
	}
	for _, have := range a.commits {
		if have == c {
			return
		}
	}
	a.commits = append(a.commits, c)
	g.produced++
}

// linkPull makes (or finds) the pull request an event names and links the
// attempt to it. pr.created makes the node even when branch.pushed never
// came (the Python worker never sent it), and so does attempt.succeeded
// with a pr_url, so a PR is never lost to a missing event.
func (g *Graph) linkPull(a *attempt, r *record) {
	var buf [128]byte
	repo, number := pullIdentity(r, buf[:0])
	if len(repo) == 0 {
		return
	}
	k := pullKey{repo: g.syms.intern(repo), number: number}
	p := g.byPull[k]
	if p == nil {
		p = g.mem.pulls.new()
		*p = pull{idx: int32(len(g.pulls)), repo: k.repo, number: number}
		if string(r.prURL) != derivedPullURL(g.syms.str(k.repo), number) {
			p.url = g.mem.strs.str(r.prURL)
		}
		g.byPull[k] = p
		g.pulls = append(g.pulls, p)
	}
	if p.title == "" && len(r.prTitle) > 0 && events.Type(r.typ) == events.PRCreated {
		p.title = g.mem.strs.str(r.prTitle)
	}
	if len(r.prState) > 0 {
		p.state = g.syms.intern(r.prState)
	}
	if a == nil {
		return // a record: no attempt to link
	}
	for _, have := range a.pulls {
		if have == p {
			return
		}
	}
	a.pulls = append(a.pulls, p)
	g.produced++
}

// pullIdentity is the repository and number of the pull request an event
// names. The repository is host/owner/name from pr_url
// (https://host/owner/name/pull/N), else the payload's repo, else the
// target; a URL that names no number is its own identity (number 0); it
// is empty when the event names no PR. It may be built in buf.
func pullIdentity(r *record, buf []byte) (repo []byte, number int64) {
	number = r.prNumber
	if len(r.prURL) > 0 {
		if host, path, ok := urlHostPath(r.prURL); ok && len(host) > 0 {
			// The path's segments (without leading and trailing slashes)
			// end in pull/N, after at least two others.
			t := bytes.Trim(path, "/")
			if i1 := bytes.LastIndexByte(t, '/'); i1 >= 0 {
				if i2 := bytes.LastIndexByte(t[:i1], '/'); i2 >= 0 && bytes.IndexByte(t[:i2], '/') >= 0 {
					if seg := string(t[i2+1 : i1]); seg == "pull" || seg == "pulls" {
						if number == 0 {
							number, _ = strconv.ParseInt(string(t[i1+1:]), 10, 64)
						}
						repo = append(append(append(buf[:0], host...), '/'), t[:i2]...)
					}
				}
			}
		}
	}
	if number == 0 {
		if len(r.prURL) > 0 {
			// A URL without a number (upstream's placeholder URLs): the
			// URL itself is the pull request's identity, so two events
			// with one URL make one node.
			return r.prURL, 0
		}
		if events.Type(r.typ) == events.PRCreated && len(r.id) > 0 {
			// A pr.created that names neither: a node of its own, as
			// upstream makes one (pr-<event id>), never lost.
			return append(append(buf[:0], "event:"...), r.id...), 0
		}
		return nil, 0
	}
	if len(repo) == 0 {
		switch {
		case len(r.repo) > 0:
			repo = r.repo
		case len(r.target) > 0:
			repo = r.target
		default:
			return nil, 0
		}
	}
	return repo, number
}

// derivedPullURL is the URL a pull request's repository and number imply.
func derivedPullURL(repo string, number int64) string {
	return "https://" + repo + "/pull/" + strconv.FormatInt(number, 10)
}

// urlHostPath is the host and the (unescaped) path of a URL, as url.Parse
// reads them. A plain http(s) URL of letters, digits and -._~/ (what a
// forge's pull request URL is) is split without parsing it, which reads it
// the same way; anything else goes to url.Parse.
func urlHostPath(b []byte) (host, path []byte, ok bool) {
	rest, plain := bytes.CutPrefix(b, []byte("https://"))
	if !plain {
		rest, plain = bytes.CutPrefix(b, []byte("http://"))
	}
	for _, c := range rest {
		if !plain {
			break
		}
		plain = plainURLByte[c]
	}
	if plain {
		if i := bytes.IndexByte(rest, '/'); i >= 0 {
			return rest[:i], rest[i:], true
		}
		return rest, nil, true
	}
	u, err := url.Parse(string(b))
	if err != nil {
		return nil, nil, false
	}
	return []byte(u.Host), []byte(u.Path), true
}

// plainURLByte reports the bytes a URL's host and path may hold that
// url.Parse neither unescapes nor rejects, nor treats as a delimiter
// (other than '/').
var plainURLByte = func() (t [256]bool) {
	for c := range t {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '/'
	}
	return t
}()

func (g *Graph) fail(a *attempt, r *record, typ, stage, kind sym, summary string) {
	f := &failure{attempt: a, seq: r.seq, ts: r.ts, typ: typ, stage: stage, kind: kind, summary: summary}
	g.failed = append(g.failed, f)
	a.failure = f
}

// duplicateRequest lists an ignored duplicate request with the failures
// and takes its attempt.requested off the attempt's timeline; the attempt
// itself (status, latest failure) is untouched.
func (g *Graph) duplicateRequest(a *attempt, r *record, typ sym) {
	if r.dupSeq > 0 {
		a.steps = slices.DeleteFunc(a.steps, func(s step) bool {
			return s.seq == uint64(r.dupSeq) && g.syms.str(s.typ) == string(events.AttemptRequested)
		})
		// The ignored request set the attempt's last update: back to its
		// own last event.
		if n := len(a.steps); n > 0 {
			a.updated = a.steps[n-1].ts
		}
	}
	g.failed = append(g.failed, &failure{attempt: a, seq: r.seq, ts: r.ts, typ: typ, stage: g.syms.of("clone"),
		kind: g.syms.of("duplicate_request"), summary: string(r.reason), task: string(r.task)})
}

// Node ids. They are unique across targets: a task and a commit include
// their target, a pull request its repository (host/owner/name).
func targetNodeID(name string) string { return "target:" + name }

func (g *Graph) taskNodeID(t *task) string { return "task:" + g.targetName(t.target) + "/" + t.id }

func attemptNodeID(id string) string { return "attempt:" + id }

func (g *Graph) commitNodeID(c *commit) string {
	return "commit:" + g.targetName(c.target) + "/" + c.sha
}

func (g *Graph) pullNodeID(p *pull) string {
	if p.number == 0 {
		return "pr:" + g.syms.str(p.repo) // a URL without a number
	}
	return "pr:" + g.syms.str(p.repo) + "#" + strconv.FormatInt(p.number, 10)
}

func (g *Graph) pullURL(p *pull) string {
	if p.url != "" || p.number == 0 {
		return p.url
	}
	return "https://" + g.syms.str(p.repo) + "/pull/" + strconv.FormatInt(p.number, 10)
}

func (g *Graph) targetName(t *target) string {
	if t == nil {
		return ""
	}
	return g.syms.str(t.name)
}

// RecentEvent is one line of the summary's recent_events and of
// GET /v1/events/recent.
type RecentEvent struct {
	EventID   string `json:"event_id"`
	Timestamp Time   `json:"timestamp"`
	EventType string `json:"event_type"`
	ActorID   string `json:"actor_id"`
	Target    string `json:"target"`
	AttemptID string `json:"attempt_id"`
	// Seq is the event's stream sequence (not in the summary's JSON).
	Seq uint64 `json:"-"`
}

// Summary is the body of GET /v1/graph/summary.
//
// TotalNodes, TotalEdges, NodeTypes and EdgeTypes are what upstream's
// `leviathanctl graph-summary` reads (upstream's server never sent them):
// the totals, and the same counts as nodes_by_type and edges_by_type.
type Summary struct {
	NodesByType  map[string]int `json:"nodes_by_type"`
	EdgesByType  map[string]int `json:"edges_by_type"`
	RecentEvents []RecentEvent  `json:"recent_events"`
	TotalNodes   int            `json:"total_nodes"`
	TotalEdges   int            `json:"total_edges"`
	NodeTypes    map[string]int `json:"node_types"`
	EdgeTypes    map[string]int `json:"edge_types"`
}

// Summary counts nodes and edges by type (types with a count above zero
// only) and lists the newest events first. It costs the same for ten
// events as for ten million: the counts are kept as events are applied.
func (g *Graph) Summary() Summary {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.summaryLocked()
}

func (g *Graph) summaryLocked() Summary {
	s := Summary{NodesByType: map[string]int{}, EdgesByType: map[string]int{}}
	for typ, n := range map[string]int{
		NodeTarget: len(g.targets), NodeTask: len(g.tasks), NodeAttempt: len(g.nodes),
		NodeCommit: len(g.commits), NodePullRequest: len(g.pulls), NodeArtifact: len(g.artifacts),
	} {
		if n > 0 {
			s.NodesByType[typ] = n
		}
	}
	if g.dependsOn > 0 {
		s.EdgesByType[EdgeDependsOn] = g.dependsOn
	}
	if g.produced > 0 {
		s.EdgesByType[EdgeProduced] = g.produced
	}
	s.RecentEvents = g.recentLocked(SummaryEvents)
	for _, n := range s.NodesByType {
		s.TotalNodes += n
	}
	for _, n := range s.EdgesByType {
		s.TotalEdges += n
	}
	s.NodeTypes, s.EdgeTypes = s.NodesByType, s.EdgesByType
	return s
}

// SummaryJSON is the summary encoded as JSON, cached until the next event.
func (g *Graph) SummaryJSON() []byte {
	g.mu.RLock()
	if g.summary != nil && g.summaryAt == g.applied {
		b := g.summary
		g.mu.RUnlock()
		return b
	}
	b, _ := json.Marshal(g.summaryLocked())
	at := g.applied
	g.mu.RUnlock()
	b = append(b, '\n')
	g.mu.Lock()
	if g.applied == at {
		g.summary, g.summaryAt = b, at
	}
	g.mu.Unlock()
	return b
}

// RecentEvents returns up to limit events, newest first.
func (g *Graph) RecentEvents(limit int) []RecentEvent {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.recentLocked(limit)
}

func (g *Graph) recentLocked(limit int) []RecentEvent {
	n := min(limit, g.ringLen)
	out := make([]RecentEvent, 0, n)
	for i := 1; i <= n; i++ {
		e := g.ring[(g.ringNext-i+RecentEventsKept)%RecentEventsKept]
		out = append(out, RecentEvent{
			EventID: e.eventID(), Timestamp: nanoTime(e.ts), EventType: g.syms.str(e.typ),
			ActorID: g.syms.str(e.actor), Target: g.syms.str(e.target), AttemptID: e.attempt, Seq: e.seq,
		})
	}
	return out
}

func (e *recentEvent) eventID() string {
	if e.isUUID {
		return e.uid.String()
	}
	return e.str
}

// nanoTime is the UTC time of unix nanoseconds; the zero time for 0.
func nanoTime(ns int64) Time {
	if ns == 0 {
		return Time{}
	}
	return Time{time.Unix(0, ns).UTC()}
}

// Counts are the graph's sizes, for metrics and the page.
type Counts struct {
	Targets, Tasks, Attempts, Commits, PullRequests int
	Records, Failures                               int
	DependsOn, Produced                             int
	Applied                                         uint64
}

// Counts returns the graph's sizes.
func (g *Graph) Counts() Counts {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return Counts{
		Targets: len(g.targets), Tasks: len(g.tasks), Attempts: len(g.nodes), Commits: len(g.commits),
		PullRequests: len(g.pulls), Records: len(g.records), Failures: len(g.failed),
		DependsOn: g.dependsOn, Produced: g.produced, Applied: g.applied,
	}
}
