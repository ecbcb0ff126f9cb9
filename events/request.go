package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strings"
)

// Limits and patterns of request fields. Attempt ids become a subject token
// and a KV key, so they are restricted to characters valid in both.
var (
	attemptIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	taskIDPattern    = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,128}$`)
	targetPattern    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
	commitPattern    = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// DefaultBranchPrefix is the prefix of the branches attempts push,
// as in PR Proof v1.
const DefaultBranchPrefix = "agent/backlog-propose-"

// BacklogPath is the file an attempt edits.
const BacklogPath = ".leviathan/backlog.yaml"

// SubmitResponse answers a request sent to leviathan.api.submit: the
// attempt id and its status, or the error and the field it is about.
type SubmitResponse struct {
	AttemptID string `json:"attempt_id,omitempty"`
	Status    string `json:"status,omitempty"`
	Error     string `json:"error,omitempty"`
	Field     string `json:"field,omitempty"`
}

// ValidationError says which field of a request is wrong and why.
type ValidationError struct {
	Field  string
	Reason string
	// Secret marks a request that carries a credential (in its repo_url):
	// whoever stored it should erase it.
	Secret bool
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("invalid request: %s: %s", e.Field, e.Reason)
}

func invalid(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ValidAttemptID reports whether id can be used as an attempt id.
func ValidAttemptID(id string) bool { return attemptIDPattern.MatchString(id) }

// ParseRequest decodes the body of an attempt.requested message, either a
// full envelope or the bare request payload, and checks it. subjectID is
// the attempt id token of the subject the message arrived on ("" when it
// came from elsewhere); a body naming another attempt is rejected.
//
// The returned request is normalised: defaults filled in (branch, forge,
// branch name, task and target ids). A *ValidationError names the field.
func ParseRequest(data []byte, subjectID string) (*Request, error) {
	var req Request
	if env, err := Decode(data); err == nil {
		if env.EventType != AttemptRequested {
			return nil, invalid("event_type", "must be %s, got %q", AttemptRequested, env.EventType)
		}
		if err := strictUnmarshal(env.Payload, &req); err != nil {
			return nil, err
		}
		if req.AttemptID == "" {
			req.AttemptID = env.AttemptID
		}
		if req.TargetID == "" {
			req.TargetID = env.TargetID
		}
	} else if errors.Is(err, ErrNotEnvelope) {
		if err := strictUnmarshal(data, &req); err != nil {
			return nil, err
		}
	} else {
		var v any
		if serr := json.Unmarshal(data, &v); serr != nil {
			var se *json.SyntaxError
			if errors.As(serr, &se) {
				return nil, invalid("body", "not valid JSON at byte %d: %s", se.Offset, jsonReason(serr))
			}
			return nil, invalid("body", "not valid JSON: %s (is the body complete?)", jsonReason(serr))
		}
		return nil, invalid("body", "%v", jsonReason(err))
	}
	if req.AttemptID == "" && subjectID != "" {
		req.AttemptID = subjectID
	}
	if err := req.Normalize(); err != nil {
		return nil, err
	}
	if subjectID != "" && req.AttemptID != subjectID {
		return nil, invalid("attempt_id", "%q does not match the subject's attempt id %q", req.AttemptID, subjectID)
	}
	return &req, nil
}

// strictUnmarshal rejects unknown fields so a typo ("allowed_path") is an
// error that names it instead of a silently missing value.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		field := "body"
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			field = te.Field
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			field = strings.Trim(f, `"`)
			var m map[string]any
			if json.Unmarshal(data, &m) == nil {
				if path := unknownField(m, reflect.TypeOf(v).Elem(), ""); path != "" {
					field = path // where it is: task.allowed_path
				}
			}
			return invalid(field, "unknown field")
		}
		return invalid(field, "%s", jsonReason(err))
	}
	return nil
}

func jsonReason(err error) string {
	return strings.TrimPrefix(err.Error(), "json: ")
}

// unknownField is the dotted path of the first key of m (in sorted order)
// that the struct type t has no field for, looking into nested objects
// of struct fields; "" when there is none.
func unknownField(m map[string]any, t reflect.Type, prefix string) string {
	fields := map[string]reflect.Type{}
	var collect func(t reflect.Type)
	collect = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if f.Anonymous && name == "" {
				collect(f.Type)
				continue
			}
			if name == "" {
				name = f.Name
			}
			if name != "-" {
				fields[name] = f.Type
			}
		}
	}
	collect(t)
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ft, ok := fields[k]
		if !ok {
			return prefix + k
		}
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if sub, isObj := m[k].(map[string]any); isObj && ft.Kind() == reflect.Struct {
			if p := unknownField(sub, ft, prefix+k+"."); p != "" {
				return p
			}
		}
	}
	return ""
}

// Normalize fills in defaults and validates the request.
func (r *Request) Normalize() error {
	r.AttemptID = strings.TrimSpace(r.AttemptID)
	if r.Task.ID == "" && r.TaskID != "" {
		r.Task.ID = r.TaskID
	}
	if r.TaskID == "" {
		r.TaskID = r.Task.ID
	}
	if r.TargetID == "" {
		r.TargetID = r.Target.Name
	}
	if r.Target.Name == "" {
		r.Target.Name = r.TargetID
	}
	if r.Target.Branch == "" {
		r.Target.Branch = "main"
	}
	if r.Target.Forge == "" {
		r.Target.Forge = "github"
	}
	if r.BranchName == "" && ValidAttemptID(r.AttemptID) {
		r.BranchName = DefaultBranchPrefix + r.AttemptID
	}
	return r.Validate()
}

// Validate checks every field and returns the first problem found as a
// *ValidationError.
func (r *Request) Validate() error {
	switch {
	case r.AttemptID == "":
		return invalid("attempt_id", "required")
	case !ValidAttemptID(r.AttemptID):
		return invalid("attempt_id", "must match %s", attemptIDPattern)
	case r.Target.Name == "":
		return invalid("target.name", "required")
	case !targetPattern.MatchString(r.Target.Name):
		return invalid("target.name", "must match %s", targetPattern)
	case r.TargetID != r.Target.Name:
		return invalid("target_id", "%q differs from target.name %q", r.TargetID, r.Target.Name)
	}
	if err := validateRepoURL(r.Target.RepoURL); err != nil {
		return err
	}
	if err := validateRefName("target.branch", r.Target.Branch); err != nil {
		return err
	}
	if r.Target.Forge != "github" {
		return invalid("target.forge", "unknown forge %q (supported: github)", r.Target.Forge)
	}
	if err := validateRefName("branch_name", r.BranchName); err != nil {
		return err
	}
	if rf := r.ResumeFrom; rf != nil {
		switch {
		case !ValidAttemptID(rf.AttemptID):
			return invalid("resume_from.attempt_id", "must match %s", attemptIDPattern)
		case rf.BranchName != r.BranchName:
			return invalid("resume_from.branch_name", "must be the request's branch_name %q", r.BranchName)
		case !commitPattern.MatchString(rf.CommitSHA):
			return invalid("resume_from.commit_sha", "must be a 40-character hexadecimal commit id")
		}
	}
	return r.Task.validate(r.TaskID)
}

func (t *Task) validate(taskID string) error {
	switch {
	case t.ID == "":
		return invalid("task.id", "required")
	case !taskIDPattern.MatchString(t.ID):
		return invalid("task.id", "must match %s", taskIDPattern)
	case taskID != t.ID:
		return invalid("task_id", "%q differs from task.id %q", taskID, t.ID)
	case strings.TrimSpace(t.Title) == "":
		return invalid("task.title", "required")
	case len(t.Title) > 256:
		return invalid("task.title", "longer than 256 bytes")
	case strings.ContainsAny(t.Title, "\r\n"):
		return invalid("task.title", "must be one line")
	}
	switch t.Priority {
	case "", "high", "medium", "low":
	default:
		return invalid("task.priority", "must be high, medium or low, got %q", t.Priority)
	}
	if len(t.AllowedPaths) == 0 {
		return invalid("task.allowed_paths", "required: at least one path")
	}
	for i, p := range t.AllowedPaths {
		if reason := badPath(p); reason != "" {
			return invalid(fmt.Sprintf("task.allowed_paths[%d]", i), "%q %s", p, reason)
		}
	}
	return nil
}

// badPath says what is wrong with an allowed_paths entry, or "".
func badPath(p string) string {
	switch {
	case p == "":
		return "is empty"
	case strings.HasPrefix(p, "/"):
		return "is absolute"
	case strings.ContainsAny(p, "\\\x00"):
		return "contains a backslash or NUL"
	}
	for _, seg := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		switch seg {
		case "..":
			return "contains '..'"
		case ".git":
			return "reaches into .git/"
		case "", ".":
			return "has an empty or '.' segment"
		}
	}
	return ""
}

// PathAllowed reports whether a repository path is covered by allowed: an
// entry ending in '/' is a directory prefix, any other entry an exact file.
func PathAllowed(allowed []string, p string) bool {
	p = path.Clean(p)
	for _, a := range allowed {
		if strings.HasSuffix(a, "/") {
			if strings.HasPrefix(p, a) {
				return true
			}
		} else if p == a {
			return true
		}
	}
	return false
}

func validateRepoURL(raw string) error {
	const field = "target.repo_url"
	if raw == "" {
		return invalid(field, "required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url's error repeats the input, which may hold a password.
		return invalid(field, "not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return invalid(field, "scheme must be http or https")
	case u.Host == "":
		return invalid(field, "has no host")
	case u.User != nil:
		// Credentials in URLs end up in logs and events; they come from
		// the service's configuration instead.
		ve := invalid(field, "must not contain credentials")
		ve.Secret = true
		return ve
	case u.RawQuery != "" || u.Fragment != "":
		return invalid(field, "must not have a query or fragment")
	case strings.Trim(u.Path, "/") == "":
		return invalid(field, "has no repository path")
	}
	return nil
}

// validateRefName applies the rules of git check-ref-format to a branch.
func validateRefName(field, name string) error {
	if name == "" {
		return invalid(field, "required")
	}
	if len(name) > 200 {
		return invalid(field, "longer than 200 bytes")
	}
	if strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.HasSuffix(name, ".") ||
		strings.Contains(name, "..") || strings.Contains(name, "//") || strings.Contains(name, "@{") ||
		strings.HasPrefix(name, "-") || name == "@" {
		return invalid(field, "%q is not a valid branch name", name)
	}
	for _, c := range name {
		if c < 0x20 || c == 0x7f || strings.ContainsRune(" ~^:?*[\\", c) {
			return invalid(field, "%q is not a valid branch name", name)
		}
	}
	for _, seg := range strings.Split(name, "/") {
		if strings.HasPrefix(seg, ".") || strings.HasSuffix(seg, ".lock") {
			return invalid(field, "%q is not a valid branch name", name)
		}
	}
	return nil
}

// RejectedRef is ref with the target and task a rejected request's body
// names filled in where ref lacks them (a bare request carries them in
// target.name and task.id, not in target_id and task_id), so that the
// rejection is listed under its target. Only names of a valid form that
// hold no credential are taken: the rejection is kept for the stream's
// lifetime, where the request itself may be erased.
func RejectedRef(ref Ref, data []byte) Ref {
	var body map[string]any
	if json.Unmarshal(data, &body) != nil {
		return ref
	}
	field := func(obj, key string) string {
		o, _ := body[obj].(map[string]any)
		s, _ := o[key].(string)
		return s
	}
	if s := field("target", "name"); ref.TargetID == "" && targetPattern.MatchString(s) && credentialIn(s) == "" {
		ref.TargetID = s
	}
	if s := field("task", "id"); ref.TaskID == "" && taskIDPattern.MatchString(s) && credentialIn(s) == "" {
		ref.TaskID = s
	}
	return ref
}
