package events

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEventIDIsDeterministic(t *testing.T) {
	a := EventID("a-1", AttemptCreated)
	if a != EventID("a-1", AttemptCreated) {
		t.Fatal("same inputs gave different ids")
	}
	if a == EventID("a-1", AttemptStarted) || a == EventID("a-2", AttemptCreated) {
		t.Fatal("different inputs gave the same id")
	}
	if len(a) != 36 || a[14] != '5' {
		t.Fatalf("%s is not a UUIDv5", a)
	}
}

func TestSubjects(t *testing.T) {
	if got := Subject("a-42", AttemptCreated); got != "leviathan.attempts.a-42.attempt.created" {
		t.Fatalf("Subject = %s", got)
	}
	id, typ, err := ParseSubject("leviathan.attempts.a-42.attempt.created")
	if err != nil || id != "a-42" || typ != AttemptCreated {
		t.Fatalf("ParseSubject = %q %q %v", id, typ, err)
	}
	for _, bad := range []string{"other.a.b", "leviathan.attempts.a-1", "leviathan.attempts."} {
		if _, _, err := ParseSubject(bad); err == nil {
			t.Errorf("ParseSubject(%q) accepted", bad)
		}
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	ref := Ref{AttemptID: "a-1", TaskID: "T-1", TargetID: "demo"}
	env, err := New(BranchPushed, "push-x", ref, Pushed{Ref: ref, BranchName: "b", CommitSHA: "c"}, time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := env.Marshal()
	if !strings.Contains(string(data), `"timestamp":"2026-01-02T02:04:05Z"`) {
		t.Fatalf("timestamp not UTC RFC 3339: %s", data)
	}
	back, err := Decode(data)
	if err != nil || back.EventID != EventID("a-1", BranchPushed) || back.Subject() != "leviathan.attempts.a-1.branch.pushed" {
		t.Fatalf("Decode = %+v, %v", back, err)
	}
	var p Pushed
	if err := back.DecodePayload(&p); err != nil || p.TaskID != "T-1" || p.CommitSHA != "c" {
		t.Fatalf("payload = %+v, %v", p, err)
	}
	if _, err := Decode([]byte(`{"target":{}}`)); !errors.Is(err, ErrNotEnvelope) {
		t.Fatalf("bare body: %v", err)
	}
}

const good = `{"attempt_id":"a-1","target":{"name":"demo","repo_url":"https://example.com/o/r.git"},"task":{"id":"T-1","title":"Do it","allowed_paths":[".leviathan/backlog.yaml","docs/"]}}`

func TestParseRequestDefaults(t *testing.T) {
	req, err := ParseRequest([]byte(good), "a-1")
	if err != nil {
		t.Fatal(err)
	}
	if req.TaskID != "T-1" || req.TargetID != "demo" || req.Target.Branch != "main" || req.Target.Forge != "github" ||
		req.BranchName != "agent/backlog-propose-a-1" {
		t.Fatalf("defaults not applied: %+v", req)
	}
	// The same request inside an envelope.
	env, _ := New(AttemptRequested, "user:x", req.Ref, req, time.Now())
	data, _ := env.Marshal()
	if _, err := ParseRequest(data, "a-1"); err != nil {
		t.Fatalf("enveloped: %v", err)
	}
	// No attempt id in the body: the subject's.
	noID := strings.Replace(good, `"attempt_id":"a-1",`, "", 1)
	if req, err := ParseRequest([]byte(noID), "a-9"); err != nil || req.AttemptID != "a-9" {
		t.Fatalf("subject id: %+v %v", req, err)
	}
}

func TestParseRequestNamesTheField(t *testing.T) {
	mod := func(old, new string) string { return strings.Replace(good, old, new, 1) }
	cases := []struct {
		body, subject, field string
	}{
		{mod(`"a-1"`, `"a 1"`), "", "attempt_id"},
		{good, "a-2", "attempt_id"},
		{mod(`"id":"T-1",`, ""), "", "task.id"},
		{mod(`"title":"Do it",`, ""), "", "task.title"},
		{mod(`".leviathan/backlog.yaml",`, `"../x",`), "", "task.allowed_paths[0]"},
		{mod(`"docs/"`, `"/etc/"`), "", "task.allowed_paths[1]"},
		{mod(`"docs/"`, `".git/config"`), "", "task.allowed_paths[1]"},
		{mod(`[".leviathan/backlog.yaml","docs/"]`, `[]`), "", "task.allowed_paths"},
		{mod(`https://example.com`, `https://u:p@example.com`), "", "target.repo_url"},
		{mod(`https://example.com`, `ftp://example.com`), "", "target.repo_url"},
		{mod(`"name":"demo"`, `"name":""`), "", "target.name"},
		{mod(`"task":{`, `"branch_name":"bad..name","task":{`), "", "branch_name"},
		{mod(`"task":{`, `"allowed_path":["x"],"task":{`), "", "allowed_path"},
		{mod(`"title":"Do it"`, `"title":3`), "", "task.title"},
		{`{"attempt_id":`, "", "body"},
		{mod(`"id":"T-1",`, `"id":"T-1","priority":"urgent",`), "", "task.priority"},
	}
	for _, c := range cases {
		_, err := ParseRequest([]byte(c.body), c.subject)
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != c.field {
			t.Errorf("%s\n  err = %v, want field %q", c.body, err, c.field)
		}
		if err != nil && strings.Contains(err.Error(), "u:p@") {
			t.Errorf("error repeats credentials: %v", err)
		}
	}
}

func TestPathAllowed(t *testing.T) {
	allowed := []string{".leviathan/backlog.yaml", "docs/"}
	for p, want := range map[string]bool{
		".leviathan/backlog.yaml": true, "docs/a.md": true, "docs/x/y": true,
		".leviathan/other.yaml": false, "docsx/a": false, "README.md": false,
	} {
		if PathAllowed(allowed, p) != want {
			t.Errorf("PathAllowed(%q) = %v", p, !want)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(good), "a-1")
	f.Add([]byte(`{"payload":{},"event_type":"attempt.requested"}`), "")
	f.Fuzz(func(t *testing.T, data []byte, subject string) {
		req, err := ParseRequest(data, subject)
		if err == nil {
			if !ValidAttemptID(req.AttemptID) || len(req.Task.AllowedPaths) == 0 {
				t.Fatalf("accepted an invalid request: %+v", req)
			}
		}
	})
}

func TestSubjectTokenRoundTrips(t *testing.T) {
	for _, id := range []string{"a-1", "attempt-docs.v2-1a2b3c4d", "x:y@z+w=v", "a.b.c"} {
		subj := Subject(id, AttemptCreated)
		got, typ, err := ParseSubject(subj)
		if err != nil || got != id || typ != AttemptCreated || strings.Count(subj, ".") != 4 {
			t.Errorf("%q: subject %q parsed as %q %q %v", id, subj, got, typ, err)
		}
	}
	if s := Subject("a-1", AttemptCreated); s != "leviathan.attempts.a-1.attempt.created" {
		t.Errorf("our ids are not encoded: %s", s)
	}
	if _, _, err := ParseSubject("leviathan.attempts.~zz.attempt.created"); err == nil {
		t.Error("a bad encoding parsed")
	}
}

// TestRequestErrorsSayWhere: a truncated body is "not valid JSON" with
// where, not an envelope's decoding error; an unknown field is named by
// its path.
func TestRequestErrorsSayWhere(t *testing.T) {
	for body, want := range map[string]string{
		`{"target":`: "body: not valid JSON at byte 10",
		`{"target":{"name":"x","repo_url":"https://github.com/o/r.git"},"task":{"id":"T","title":"t","allowed_path":["a"]}}`: "task.allowed_path: unknown field",
		`{"target":{"name":"x","repo":"r"},"task":{"id":"T","title":"t"}}`:                                                   "target.repo: unknown field",
		`{"targets":{}}`: "targets: unknown field",
	} {
		_, err := ParseRequest([]byte(body), "")
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "envelope") {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}
