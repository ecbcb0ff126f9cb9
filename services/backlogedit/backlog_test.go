package backlogedit

import (
	"errors"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/leviathan-dev/leviathan/events"
)

var newTask = events.Task{
	ID: "T-9", Title: "Add: a thing", Priority: "high",
	AllowedPaths:       []string{".leviathan/backlog.yaml"},
	AcceptanceCriteria: []string{"it works", "#not a comment"},
}

func TestAppendKeepsBytes(t *testing.T) {
	cases := map[string]string{
		"indented":   "# top comment\nmetadata:\n  owner: me # inline\ntasks:\n  - id: T-1\n    title: \"quoted\"\n    allowed_paths:\n      - src/\n  # trailing comment\n\nother: 1\n",
		"indentless": "tasks:\n- id: T-1\n  title: x\n  allowed_paths:\n  - src/\n",
		"bare list":  "- id: T-1\n  title: x\n  allowed_paths: [a]\n",
		"no newline": "tasks:\n  - id: T-1\n    title: x",
		"crlf":       "tasks:\r\n  - id: T-1\r\n    title: x\r\n",
		"wide":       "tasks:\n    -   id: T-1\n        title: x\n",
	}
	for name, doc := range cases {
		t.Run(name, func(t *testing.T) {
			out, err := Append([]byte(doc), newTask)
			if err != nil {
				t.Fatal(err)
			}
			checkAppended(t, doc, string(out))
		})
	}
}

// checkAppended asserts out is doc with exactly one block inserted and that
// the last task parses to the new task.
func checkAppended(t *testing.T, doc, out string) {
	t.Helper()
	if !onlyInsertion(doc, out) {
		t.Fatalf("bytes of the original changed:\n--- before\n%s\n--- after\n%s", doc, out)
	}
	var v any
	if err := yaml.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("result is not YAML: %v\n%s", err, out)
	}
	var tasks []any
	switch x := v.(type) {
	case []any:
		tasks = x
	case map[string]any:
		tasks, _ = x["tasks"].([]any)
	}
	last, _ := tasks[len(tasks)-1].(map[string]any)
	if last["id"] != "T-9" || last["title"] != "Add: a thing" || last["priority"] != "high" {
		t.Fatalf("last task = %v\n%s", last, out)
	}
	if ac, _ := last["acceptance_criteria"].([]any); len(ac) != 2 || ac[1] != "#not a comment" {
		t.Fatalf("acceptance_criteria = %v", last["acceptance_criteria"])
	}
}

func TestAppendKeepsSmallAnchors(t *testing.T) {
	doc := "defaults: &d\n  priority: low\ntasks:\n  - id: T-1\n    title: x\n    extra: *d\n"
	out, err := Append([]byte(doc), newTask)
	if err != nil {
		t.Fatal(err)
	}
	checkAppended(t, doc, string(out))
}

func TestAppendEmptyLists(t *testing.T) {
	for _, doc := range []string{"tasks:\n", "tasks: []\nmetadata: {}\n", "tasks: null\n", "tasks: # none yet\nx: 1\n", "[]\n"} {
		out, err := Append([]byte(doc), newTask)
		if err != nil {
			t.Fatalf("%q: %v", doc, err)
		}
		var v any
		if err := yaml.Unmarshal(out, &v); err != nil {
			t.Fatalf("%q -> %q: %v", doc, out, err)
		}
	}
}

func TestAppendErrors(t *testing.T) {
	cases := map[string]string{
		"empty":         "  \n",
		"not yaml":      "tasks: [\n",
		"not list":      "tasks: 3\n",
		"entry":         "tasks:\n  - 3\n",
		"no tasks":      "metadata: {}\n",
		"scalar root":   "hello\n",
		"too big":       "tasks:\n" + strings.Repeat("# x\n", MaxBacklogSize/4+1),
		"metadata bomb": "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\ntasks:\n  - id: T-1\n    title: x\n",
		"alias bomb":    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\ntasks: [*c]\n",
	}
	for name, doc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Append([]byte(doc), newTask)
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("err = %v, want *InvalidError", err)
			}
		})
	}
	_, err := Append([]byte("tasks:\n  - id: T-9\n    title: x\n"), newTask)
	if !errors.Is(err, ErrTaskExists) {
		t.Fatalf("duplicate: err = %v", err)
	}
}

// FuzzAppend: whatever the file, Append either refuses it or returns the
// file with one block inserted that parses as a list ending in the task.
func FuzzAppend(f *testing.F) {
	for _, s := range []string{
		"tasks:\n  - id: T-1\n    title: x\n", "tasks:\n- id: a\n", "- id: a\n", "tasks: []\n", "tasks:\n",
		"# c\ntasks: # c\n  - id: T-1 # c\n    title: 'x'\n  # c\nmeta: 1\n", "tasks: [{id: a}]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		out, err := Append(doc, newTask)
		if err != nil {
			return
		}
		seq, _, err := parseTasks(out)
		if err != nil || seq == nil {
			t.Fatalf("result does not parse: %v\n%q", err, out)
		}
		if id := mapValue(seq.Content[len(seq.Content)-1], "id"); id == nil || id.Value != newTask.ID {
			t.Fatalf("last task is not ours:\n%q", out)
		}
		in := string(doc)
		if !onlyInsertion(in, string(out)) && !emptyListReplaced(in) {
			t.Fatalf("original bytes changed:\n%q\n%q", in, out)
		}
	})
}

// emptyListReplaced reports documents whose empty list token ([], null, ~)
// Append legitimately replaces.
func emptyListReplaced(doc string) bool {
	seq, _, err := parseTasks([]byte(doc))
	return err == nil && seq == nil || err == nil && len(seq.Content) == 0
}

// onlyInsertion reports whether after is before with one block inserted:
// the common prefix and suffix together cover all of before.
func onlyInsertion(before, after string) bool {
	p := 0
	for p < len(before) && p < len(after) && before[p] == after[p] {
		p++
	}
	s := 0
	for s < len(before)-p && s < len(after)-p && before[len(before)-1-s] == after[len(after)-1-s] {
		s++
	}
	return p+s == len(before) && len(after) > len(before)
}
