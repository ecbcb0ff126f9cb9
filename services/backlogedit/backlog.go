package backlogedit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/leviathan-dev/leviathan/events"
)

// MaxBacklogSize bounds the backlog file an attempt will parse.
const MaxBacklogSize = 1 << 20

// ErrTaskExists is returned by Append when the backlog already has an entry
// with the task's id.
var ErrTaskExists = errors.New("task id already in the backlog")

// InvalidError says why a backlog file cannot be edited.
type InvalidError struct{ Reason string }

func (e *InvalidError) Error() string { return "backlog invalid: " + e.Reason }

func invalidf(format string, args ...any) error {
	return &InvalidError{Reason: fmt.Sprintf(format, args...)}
}

// NewBacklog is the content of a backlog created for a repository that has
// none (create_backlog: true).
func NewBacklog(task events.Task) []byte {
	return []byte("tasks:\n" + renderTask(task, layout{dash: 2, offset: 2, nested: 2, nl: "\n"}))
}

// Append returns doc with task appended to its task list. Every byte of
// doc outside the appended entry is kept: the edit is a text insertion at
// the end of the list, placed and indented from the yaml.v3 node positions,
// not a re-encoding (which would lose comments, quoting and spacing).
func Append(doc []byte, task events.Task) ([]byte, error) {
	seq, keyIndent, err := parseTasks(doc)
	if err != nil {
		return nil, err
	}
	if seq != nil {
		for i, item := range seq.Content {
			if item.Kind == yaml.AliasNode {
				return nil, invalidf("tasks[%d] is an alias; entries must be written out", i)
			}
			if item.Kind != yaml.MappingNode {
				return nil, invalidf("tasks[%d] is not a mapping", i)
			}
			if id := mapValue(item, "id"); id != nil && id.Kind == yaml.ScalarNode && id.Value == task.ID {
				return nil, ErrTaskExists
			}
		}
	}
	lines := splitLines(doc)
	nl := "\n"
	if bytes.Contains(doc, []byte("\r\n")) {
		nl = "\r\n"
	}
	var out []byte
	switch {
	case seq != nil && len(seq.Content) > 0 && seq.Style&yaml.FlowStyle == 0:
		out = appendToBlock(doc, lines, seq, task, nl)
	case seq != nil && len(seq.Content) > 0:
		return nil, invalidf("tasks is a flow-style list ([...]); only block lists can be appended to")
	default:
		out, err = replaceEmpty(doc, lines, seq, keyIndent, task, nl)
		if err != nil {
			return nil, err
		}
	}
	// The insertion is computed from positions; prove it parses to what we
	// meant before anyone commits it.
	check, _, err := parseTasks(out)
	if err != nil || check == nil || len(check.Content) != countOf(seq)+1 {
		return nil, invalidf("appending would not produce a valid task list (unsupported layout)")
	}
	last := check.Content[len(check.Content)-1]
	if id := mapValue(last, "id"); id == nil || id.Value != task.ID {
		return nil, invalidf("appending would not produce a valid task list (unsupported layout)")
	}
	return out, nil
}

func countOf(seq *yaml.Node) int {
	if seq == nil {
		return 0
	}
	return len(seq.Content)
}

// parseTasks finds the task list. It returns a nil seq when the list is
// present but empty or null; keyIndent is the column of the `tasks` key
// (-1 for a bare top-level list or an empty document).
func parseTasks(doc []byte) (seq *yaml.Node, keyIndent int, err error) {
	if len(doc) > MaxBacklogSize {
		return nil, 0, invalidf("file is %d bytes, over the %d byte limit", len(doc), MaxBacklogSize)
	}
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil, 0, invalidf("file is empty")
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	if err := dec.Decode(&root); err != nil {
		return nil, 0, invalidf("not YAML: %v", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, 0, invalidf("file holds more than one YAML document")
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil, 0, invalidf("file is empty")
	}
	// The node tree keeps aliases unexpanded, but anything that later
	// decodes this file into values would expand them: refuse a file
	// whose aliases would blow up (a "billion laughs").
	if n := expandedSize(&root, map[*yaml.Node]int{}); n > maxExpandedNodes {
		return nil, 0, invalidf("YAML aliases expand to more than %d nodes", maxExpandedNodes)
	}
	top := root.Content[0]
	switch top.Kind {
	case yaml.SequenceNode:
		return top, -1, nil
	case yaml.MappingNode:
		for i := 0; i+1 < len(top.Content); i += 2 {
			k, v := top.Content[i], top.Content[i+1]
			if k.Value != "tasks" {
				continue
			}
			switch {
			case v.Kind == yaml.SequenceNode:
				return v, k.Column - 1, nil
			case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
				return nil, k.Column - 1, nil
			default:
				return nil, 0, invalidf("tasks is not a list (line %d)", v.Line)
			}
		}
		return nil, 0, invalidf("no tasks key at the top level")
	default:
		return nil, 0, invalidf("top level is neither a mapping with tasks nor a list")
	}
}

// maxExpandedNodes bounds the size of the document with every alias
// expanded. A real backlog has a few thousand nodes at most.
const maxExpandedNodes = 1_000_000

// expandedSize counts the nodes of n with aliases expanded, memoised per
// node so the count itself is linear in the document, and saturating so
// it cannot overflow.
func expandedSize(n *yaml.Node, memo map[*yaml.Node]int) int {
	if v, ok := memo[n]; ok {
		return v
	}
	memo[n] = maxExpandedNodes + 1 // a cycle counts as a bomb
	size := 1
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		size = expandedSize(n.Alias, memo)
	}
	for _, c := range n.Content {
		size += expandedSize(c, memo)
		if size > maxExpandedNodes {
			size = maxExpandedNodes + 1
			break
		}
	}
	memo[n] = size
	return size
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// layout is how the file indents its task entries.
type layout struct {
	dash   int    // spaces before an entry's '-'
	offset int    // columns from the '-' to the entry's keys
	nested int    // extra indent of a list under a key: 0 (indentless) or more
	nl     string // line ending
}

// lineInfo is one line of the document with its byte span.
type lineInfo struct {
	start, end int // end excludes the line ending
	next       int // start of the following line
}

func splitLines(doc []byte) []lineInfo {
	var ls []lineInfo
	for start := 0; start < len(doc); {
		i := bytes.IndexByte(doc[start:], '\n')
		if i < 0 {
			ls = append(ls, lineInfo{start: start, end: len(doc), next: len(doc)})
			break
		}
		end := start + i
		next := end + 1
		if end > start && doc[end-1] == '\r' {
			end--
		}
		ls = append(ls, lineInfo{start: start, end: end, next: next})
		start = next
	}
	return ls
}

func indentOf(doc []byte, l lineInfo) (n int, blankOrComment bool) {
	s := doc[l.start:l.end]
	t := bytes.TrimLeft(s, " ")
	return len(s) - len(t), len(bytes.TrimSpace(t)) == 0 || t[0] == '#'
}

// appendToBlock inserts the entry after the last line of a block sequence.
func appendToBlock(doc []byte, lines []lineInfo, seq *yaml.Node, task events.Task, nl string) []byte {
	first := seq.Content[0]
	lay := layout{nl: nl, nested: 2}
	lay.dash, _ = indentOf(doc, lines[seq.Line-1])
	lay.offset = first.Column - seq.Column
	if lay.offset < 2 {
		lay.offset = 2
	}
	if n, ok := nestedIndent(seq); ok {
		lay.nested = n
	}
	// The list runs until the first content line at or left of the dash
	// column after its last entry starts.
	last := seq.Content[len(seq.Content)-1]
	end := last.Line - 1 // index of the last line that belongs to the list
	for i := last.Line; i < len(lines); i++ {
		ind, skip := indentOf(doc, lines[i])
		if skip {
			continue
		}
		if ind <= lay.dash {
			break
		}
		end = i
	}
	// Trailing comments at the dash column or left of it, and blank lines,
	// introduce what follows; the new entry goes above them.
	at := lines[end].next
	var out []byte
	out = append(out, doc[:at]...)
	if at == len(doc) && (len(doc) == 0 || doc[len(doc)-1] != '\n') {
		out = append(out, nl...)
	}
	out = append(out, renderTask(task, lay)...)
	out = append(out, doc[at:]...)
	return out
}

// nestedIndent learns how the file indents a list under a key inside an
// entry (allowed_paths: ...), from the first such list it finds.
func nestedIndent(seq *yaml.Node) (int, bool) {
	for _, item := range seq.Content {
		if item.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(item.Content); i += 2 {
			k, v := item.Content[i], item.Content[i+1]
			if v.Kind == yaml.SequenceNode && v.Style&yaml.FlowStyle == 0 && len(v.Content) > 0 && v.Line > k.Line {
				return max(v.Column-k.Column, 0), true
			}
		}
	}
	return 0, false
}

// replaceEmpty writes the first entry of an empty list: `tasks:`,
// `tasks: []`, `tasks: null`, or a top-level `[]`.
func replaceEmpty(doc []byte, lines []lineInfo, seq *yaml.Node, keyIndent int, task events.Task, nl string) ([]byte, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(doc, &root); err != nil {
		return nil, invalidf("not YAML: %v", err)
	}
	value := emptyValueNode(&root)
	if value == nil {
		return nil, invalidf("cannot find the empty task list")
	}
	lay := layout{dash: keyIndent + 2, offset: 2, nested: 2, nl: nl}
	if keyIndent < 0 {
		lay.dash = 0
	}
	entry := renderTask(task, lay)
	if keyIndent >= 0 && value.Kind == yaml.ScalarNode && value.Value == "" {
		// `tasks:` with nothing after it: the entry goes on the next line.
		at := lineEndAfterKey(doc, lines, value)
		out := append([]byte{}, doc[:at]...)
		out = append(out, nl...)
		out = append(out, strings.TrimSuffix(entry, nl)...)
		return append(out, doc[at:]...), nil
	}
	// Replace the token ([], null, ~) where it stands.
	l := lines[value.Line-1]
	startTok := l.start + value.Column - 1
	tok := tokenAt(doc[startTok:l.end])
	if tok == "" {
		return nil, invalidf("unsupported empty task list at line %d", value.Line)
	}
	out := append([]byte{}, doc[:startTok]...)
	out = bytes.TrimRight(out, " ")
	if keyIndent >= 0 {
		out = append(out, nl...)
	}
	out = append(out, strings.TrimSuffix(entry, nl)...)
	return append(out, doc[startTok+len(tok):]...), nil
}

// emptyValueNode returns the node of the empty list itself.
func emptyValueNode(root *yaml.Node) *yaml.Node {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil
	}
	top := root.Content[0]
	if top.Kind == yaml.SequenceNode {
		return top
	}
	return mapValue(top, "tasks")
}

// lineEndAfterKey is the end of the `tasks:` line: the empty value node
// sits at the key's line (or where the next token starts), so search back
// for the key line.
func lineEndAfterKey(doc []byte, lines []lineInfo, value *yaml.Node) int {
	for i := min(value.Line-1, len(lines)-1); i >= 0; i-- {
		s := string(doc[lines[i].start:lines[i].end])
		if strings.HasPrefix(strings.TrimLeft(s, " "), "tasks:") {
			// Keep a trailing comment on the key line where it is.
			return lines[i].end
		}
	}
	return len(doc)
}

func tokenAt(s []byte) string {
	for _, tok := range []string{"[ ]", "[]", "null", "Null", "NULL", "~"} {
		if bytes.HasPrefix(s, []byte(tok)) {
			return tok
		}
	}
	return ""
}

// renderTask writes one entry in the file's layout, fields in Task order.
func renderTask(t events.Task, lay layout) string {
	var b strings.Builder
	pad := strings.Repeat(" ", lay.dash)
	keyPad := pad + strings.Repeat(" ", lay.offset)
	itemPad := keyPad + strings.Repeat(" ", lay.nested)
	first := true
	key := func(k string) {
		if first {
			b.WriteString(pad + "-" + strings.Repeat(" ", lay.offset-1))
			first = false
		} else {
			b.WriteString(keyPad)
		}
		b.WriteString(k + ":")
	}
	scalar := func(k, v string) {
		if v == "" {
			return
		}
		key(k)
		b.WriteString(" " + quote(v) + lay.nl)
	}
	list := func(k string, vs []string) {
		if len(vs) == 0 {
			return
		}
		key(k)
		b.WriteString(lay.nl)
		for _, v := range vs {
			b.WriteString(itemPad + "- " + quote(v) + lay.nl)
		}
	}
	scalar("id", t.ID)
	scalar("title", t.Title)
	scalar("scope", t.Scope)
	scalar("priority", t.Priority)
	if t.Ready != nil {
		key("ready")
		fmt.Fprintf(&b, " %t%s", *t.Ready, lay.nl)
	}
	scalar("estimated_size", t.EstimatedSize)
	list("allowed_paths", t.AllowedPaths)
	list("acceptance_criteria", t.AcceptanceCriteria)
	list("dependencies", t.Dependencies)
	scalar("description", t.Description)
	list("labels", t.Labels)
	scalar("status", t.Status)
	return b.String()
}

// quote renders a string as a YAML scalar: plain when yaml.v3 would write
// it plain on one line, else double-quoted (JSON strings are valid YAML).
func quote(s string) string {
	out, err := yaml.Marshal(s)
	if err == nil {
		line := strings.TrimSuffix(string(out), "\n")
		if !strings.ContainsAny(line, "\n") && !strings.HasPrefix(line, "|") && !strings.HasPrefix(line, ">") {
			return line
		}
	}
	j, _ := json.Marshal(s)
	return string(j)
}
