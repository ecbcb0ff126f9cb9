// Package policy holds the per-target guardrails of the leviathan-config
// KV bucket (DESIGN.md §3): the autonomy kill switch, the cap on open pull
// requests, and the path prefixes a target allows. Policies are read from
// the bucket on every decision, so `nats kv put` or `leviathan config set`
// takes effect on the next attempt without a restart.
package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/internal/forge"
)

// DefaultMaxOpenPRs caps open Leviathan pull requests per target when the
// policy sets no max_open_prs: a runaway submitter floods no repository
// (Dependabot's default is 5, Renovate's 10).
const DefaultMaxOpenPRs = 10

// Errors of this package.
var (
	// ErrInvalid: a stored policy is not valid JSON of the policy's shape.
	// Decisions treat it as blocking: a typo must not switch guardrails off.
	ErrInvalid = errors.New("policy: invalid")
	// ErrBlocked: a guardrail stops the attempt. The message says which
	// and how to change it.
	ErrBlocked = errors.New("guardrail")
)

// Policy is one target's value in the leviathan-config bucket, e.g.
//
//	{"autonomy_enabled": true, "max_open_prs": 5, "allowed_path_prefixes": [".leviathan/"]}
//
// Absent fields take their defaults; unknown fields are an error.
type Policy struct {
	// AutonomyEnabled is the kill switch: false stops every attempt on
	// the target before it pushes or opens anything. Default true.
	AutonomyEnabled *bool `json:"autonomy_enabled,omitempty"`
	// MaxOpenPRs caps the open pull requests Leviathan has on the target
	// (DefaultMaxOpenPRs when absent; 0 allows none).
	MaxOpenPRs *int `json:"max_open_prs,omitempty"`
	// AllowedPathPrefixes, when set, bounds the paths any attempt on the
	// target may change, on top of each task's allowed_paths.
	AllowedPathPrefixes []string `json:"allowed_path_prefixes,omitempty"`
}

// Autonomy reports whether attempts may push and open pull requests.
func (p Policy) Autonomy() bool { return p.AutonomyEnabled == nil || *p.AutonomyEnabled }

// OpenPRLimit is the cap on open pull requests.
func (p Policy) OpenPRLimit() int {
	if p.MaxOpenPRs == nil {
		return DefaultMaxOpenPRs
	}
	return *p.MaxOpenPRs
}

// Validate checks the values.
func (p Policy) Validate() error {
	if p.MaxOpenPRs != nil && *p.MaxOpenPRs < 0 {
		return fmt.Errorf("%w: max_open_prs must not be negative", ErrInvalid)
	}
	for _, pre := range p.AllowedPathPrefixes {
		if pre == "" || strings.HasPrefix(pre, "/") || slices.Contains(strings.Split(pre, "/"), "..") {
			return fmt.Errorf("%w: allowed_path_prefixes: %q is not a relative path", ErrInvalid, pre)
		}
	}
	return nil
}

// Parse decodes and validates a stored policy, rejecting unknown fields.
func Parse(data []byte) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("%w: %v", ErrInvalid, strings.TrimPrefix(err.Error(), "json: "))
	}
	return p, p.Validate()
}

// PathsOutside lists the changed paths outside AllowedPathPrefixes (none
// when no prefixes are set). "docs" and "docs/" both allow docs/a.md.
func (p Policy) PathsOutside(changed []string) []string {
	if len(p.AllowedPathPrefixes) == 0 {
		return nil
	}
	var bad []string
	for _, c := range changed {
		ok := false
		for _, pre := range p.AllowedPathPrefixes {
			dir := strings.TrimSuffix(pre, "/")
			if c == dir || strings.HasPrefix(c, dir+"/") {
				ok = true
				break
			}
		}
		if !ok {
			bad = append(bad, c)
		}
	}
	return bad
}

// Store reads and writes policies in the leviathan-config bucket.
type Store struct {
	KV jetstream.KeyValue
}

// Get returns the target's policy: the zero Policy (all defaults) when
// none is stored. A stored value that does not parse is ErrInvalid; a
// bucket error is returned as is (transient).
func (s Store) Get(ctx context.Context, target string) (Policy, error) {
	e, err := s.KV.Get(ctx, target)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Policy{}, nil
	}
	if err != nil {
		return Policy{}, fmt.Errorf("policy: read %s: %w", target, err)
	}
	p, err := Parse(e.Value())
	if err != nil {
		return Policy{}, fmt.Errorf("policy of target %s (revision %d): %w", target, e.Revision(), err)
	}
	return p, nil
}

// Put stores the target's policy.
func (s Store) Put(ctx context.Context, target string, p Policy) error {
	if err := p.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := s.KV.Put(ctx, target, data); err != nil {
		return fmt.Errorf("policy: write %s: %w", target, err)
	}
	return nil
}

// Delete removes the target's policy, so defaults apply.
func (s Store) Delete(ctx context.Context, target string) error {
	if err := s.KV.Delete(ctx, target); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("policy: delete %s: %w", target, err)
	}
	return nil
}

// Targets lists the targets that have a policy, sorted.
func (s Store) Targets(ctx context.Context) ([]string, error) {
	keys, err := s.KV.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: list: %w", err)
	}
	var out []string
	for k := range keys.Keys() {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, nil
}

// markerStart begins the task marker in a pull request body (Marker).
const markerStart = "<!-- leviathan:task="

// Marker is the hidden line Leviathan puts in every pull request body: it
// names the task and attempt, so later attempts recognise an open PR for
// the same task whatever its branch is called. GitHub does not render
// HTML comments.
func Marker(taskID, attemptID string) string {
	return fmt.Sprintf("<!-- leviathan:task=%s attempt=%s -->", taskID, attemptID)
}

// MarkedTask returns the task and attempt named by a body's marker: the
// first place in body that reads "<!-- leviathan:task=T attempt=A -->",
// with T of 1 to 128 of [A-Za-z0-9_.:-] and A of 1 to 128 of
// [A-Za-z0-9_-]. Scanned by hand: pr reads the body of every open pull
// request of a repository several times an attempt, and the regular
// expression was 5% of its CPU. (FuzzMarkedTask holds it to that
// expression.)
func MarkedTask(body string) (taskID, attemptID string, ok bool) {
	for {
		i := strings.Index(body, markerStart)
		if i < 0 {
			return "", "", false
		}
		body = body[i+len(markerStart):]
		task, rest, ok1 := markerField(body, true, " attempt=")
		attempt, _, ok2 := markerField(rest, false, " -->")
		if ok1 && ok2 {
			return task, attempt, true
		}
	}
}

// markerField reads 1 to 128 characters of a marker's field (a task id's
// when task, else an attempt id's) from the start of s, which must be
// followed by end; it returns the field and what follows end.
func markerField(s string, task bool, end string) (field, rest string, ok bool) {
	n := 0
	for n < len(s) && n <= 128 && markerChar(s[n], task) {
		n++
	}
	if n == 0 || n > 128 || !strings.HasPrefix(s[n:], end) {
		return "", "", false
	}
	return s[:n], s[n+len(end):], true
}

func markerChar(c byte, task bool) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '-':
		return true
	case c == '.', c == ':':
		return task
	}
	return false
}

// Ours reports whether an open pull request is Leviathan's: its head
// starts with the branch prefix, or its body carries the marker (an
// attempt with a custom branch_name).
func Ours(pr forge.PullRequest, branchPrefix string) bool {
	if strings.HasPrefix(pr.Head, branchPrefix) {
		return true
	}
	_, _, ok := MarkedTask(pr.Body)
	return ok
}

// OpenForTask returns the open pull request that proposes taskID, if any.
func OpenForTask(open []forge.PullRequest, taskID string) (forge.PullRequest, bool) {
	for _, pr := range open {
		if t, _, ok := MarkedTask(pr.Body); ok && t == taskID && pr.State == forge.StateOpen {
			return pr, true
		}
	}
	return forge.PullRequest{}, false
}

// CheckAutonomy returns ErrBlocked when the kill switch is off.
func CheckAutonomy(p Policy, target string) error {
	if !p.Autonomy() {
		return fmt.Errorf("%w: autonomy is disabled for target %s (leviathan-config %s: autonomy_enabled=false)", ErrBlocked, target, target)
	}
	return nil
}

// CheckCapacity returns ErrBlocked when the target already has as many
// open Leviathan pull requests as its policy allows.
func CheckCapacity(p Policy, target string, open []forge.PullRequest, branchPrefix string) error {
	var ours []string
	for _, pr := range open {
		if pr.State == forge.StateOpen && Ours(pr, branchPrefix) {
			ours = append(ours, fmt.Sprintf("#%d", pr.Number))
		}
	}
	if limit := p.OpenPRLimit(); len(ours) >= limit {
		shown := ours[:min(len(ours), 10)]
		return fmt.Errorf("%w: max_open_prs reached for target %s: %d of %d open (%s); merge or close some, or raise max_open_prs",
			ErrBlocked, target, len(ours), limit, strings.Join(shown, ", "))
	}
	return nil
}
