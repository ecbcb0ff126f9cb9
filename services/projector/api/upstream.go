package api

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/policy"
)

// The routes of the Python control plane that Leviathan's model has no
// work behind, answered as upstream answers them so that its clients
// (leviathanctl's topo-* and backlog-suggest, the operator console's
// autonomy panel) work: the topology of upstream's indexer from its
// record events, the autonomy switch from Leviathan's own per-target
// policy, and backlog suggestions as upstream's placeholder.

// maxTopologyItems bounds a topology list (each item is one read).
const maxTopologyItems = 10_000

// AutonomyView is the body of GET /v1/autonomy/status: upstream's
// autonomy_enabled and source, plus the targets whose policy turns it off.
type AutonomyView struct {
	AutonomyEnabled bool     `json:"autonomy_enabled"`
	Source          string   `json:"source"`
	DisabledTargets []string `json:"disabled_targets"`
}

// autonomy answers Leviathan's kill switch: per target, in the
// leviathan-config bucket (`leviathan config set <target>
// autonomy_enabled=false`). With ?target= it is that target's; without,
// it is on (there is no global switch) and the answer lists the targets
// that have it off.
func (a *API) autonomy(w http.ResponseWriter, r *http.Request) {
	store := policy.Store{KV: a.res.Config}
	out := AutonomyView{AutonomyEnabled: true, DisabledTargets: []string{}}
	if target := r.URL.Query().Get("target"); target != "" {
		p, err := store.Get(r.Context(), target)
		if err != nil {
			a.logger.Warn("autonomy status", "target", target, "err", err)
			writeDetail(w, http.StatusServiceUnavailable, "the policy of target "+target+" cannot be read")
			return
		}
		out.AutonomyEnabled = p.Autonomy()
		out.Source = "leviathan-config:" + target
		if p.AutonomyEnabled == nil {
			out.Source = "default (no policy for target " + target + ")"
		}
		if !out.AutonomyEnabled {
			out.DisabledTargets = append(out.DisabledTargets, target)
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	targets, err := store.Targets(r.Context())
	if err != nil {
		a.logger.Warn("autonomy status", "err", err)
		writeDetail(w, http.StatusServiceUnavailable, "the policies cannot be read")
		return
	}
	for _, t := range targets {
		if p, err := store.Get(r.Context(), t); err == nil && !p.Autonomy() {
			out.DisabledTargets = append(out.DisabledTargets, t)
		}
	}
	out.Source = "leviathan-config (per target; no global switch)"
	writeJSON(w, http.StatusOK, out)
}

// backlogSuggest answers as upstream's placeholder does.
func (a *API) backlogSuggest(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Target *string `json:"target"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil || body.Target == nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": []map[string]any{{
			"type": "missing", "loc": []string{"body", "target"}, "msg": "Field required",
		}}})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"status": "not_implemented", "attempt_id": nil, "pr_url": nil, "tasks_proposed": nil,
		"message": "Leviathan does not synthesize backlogs: submit tasks as attempts (leviathan submit, or leviathan.api.submit over NATS).",
	})
}

// topologyTarget reads the required target query parameter, answering
// 422 as FastAPI does without it.
func topologyTarget(w http.ResponseWriter, r *http.Request) (string, bool) {
	if !r.URL.Query().Has("target") {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": []map[string]any{{
			"type": "missing", "loc": []string{"query", "target"}, "msg": "Field required",
		}}})
		return "", false
	}
	return r.URL.Query().Get("target"), true
}

func (a *API) topologySummary(w http.ResponseWriter, r *http.Request) {
	target, ok := topologyTarget(w, r)
	if !ok {
		return
	}
	tp, ok := a.p.Graph().TopologyOf(target)
	if !ok || tp.Indexed == 0 {
		writeDetail(w, http.StatusNotFound, "No topology data found for target "+target)
		return
	}
	var p struct {
		CommitSHA    *string `json:"commit_sha"`
		Areas        int     `json:"areas_count"`
		Subsystems   int     `json:"subsystems_count"`
		Dependencies int     `json:"dependencies_count"`
	}
	_ = json.Unmarshal(a.payloadAt(r.Context(), tp.Indexed), &p)
	writeJSON(w, http.StatusOK, map[string]any{"target_id": target, "commit_sha": p.CommitSHA, "areas_count": p.Areas,
		"subsystems_count": p.Subsystems, "dependencies_count": p.Dependencies, "flows_count": 0})
}

// topologyList answers one of the topology lists: key is the answer's
// list ("areas", "subsystems", "dependencies").
func (a *API) topologyList(key string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		target, ok := topologyTarget(w, r)
		if !ok {
			return
		}
		tp, _ := a.p.Graph().TopologyOf(target)
		seqs := map[string][]uint64{"areas": tp.Areas, "subsystems": tp.Subsystems, "dependencies": tp.Dependencies}[key]
		items := make([]json.RawMessage, 0, len(seqs))
		for _, seq := range seqs[:min(len(seqs), maxTopologyItems)] {
			if p := a.payloadAt(r.Context(), seq); strings.HasPrefix(string(p), "{") {
				items = append(items, p)
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"target_id": target, key: items})
	}
}

// payloadAt is the payload of the event at stream sequence seq; null when
// the stream no longer has it.
func (a *API) payloadAt(ctx context.Context, seq uint64) json.RawMessage {
	msg, err := a.res.Stream.GetMsg(ctx, seq)
	if err != nil {
		return json.RawMessage("null")
	}
	env, err := events.Decode(msg.Data)
	if err != nil {
		return json.RawMessage("null")
	}
	return env.Payload
}
