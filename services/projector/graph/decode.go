package graph

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/leviathan-dev/leviathan/events"
)

// record is the projector's view of one event: the envelope fields and the
// few payload fields the graph uses, nothing else. Decoding only this, with
// a scanner that skips every other value without building it, is what makes
// a full replay fast (encoding/json into events.Envelope and then into each
// payload struct costs several times more, and the replay is bound by it).
//
// Byte slices point into the message (or into a scratch buffer when a
// string had escapes); the graph copies what it keeps.
type record struct {
	seq uint64 // stream sequence; 0 when applied outside a stream
	ts  int64  // unix nanoseconds, UTC; 0 when absent or unparsable

	id, typ, actor, attempt, target []byte

	// Payload fields.
	task, title, status, repoURL, branch []byte
	branchName, commit                   []byte
	prNumber                             int64
	prURL, prTitle, prState, repo        []byte
	stage, failureType, summary          []byte
	reason, field, note                  []byte
	// artifact.created
	artifactID, sha256, artifactType, storagePath []byte
	sizeBytes                                     int64
	// request.duplicate: the ignored request's sequence
	dupSeq int64

	// pending is the event's hash chain link begun, when chain says it
	// is chained (canonicalize).
	pending events.Pending
	chain   bool
}

// errNotObject is returned for a document that is not a JSON object.
var errNotObject = errors.New("projector: event is not a JSON object")

// fields collects the payload fields that have a fallback, resolved once
// the whole document is read (JSON members come in any order).
type fields struct {
	attempt, target, taskTitle, summary   []byte // payload attempt_id, target_id, task_title, error_summary
	errText                               []byte // payload error (the Python worker's error_summary)
	reqTarget, reqRepo, reqTask, reqTitle []byte // a request's target.name, target.repo_url, task.id, task.title
}

// decodeEnvelope fills r from an event envelope. It reports whether the
// document was an envelope (it has an event_type and a payload object); a
// bare request body is not, and is decoded with decodeBareRequest instead.
// r is zero but for its seq.
func decodeEnvelope(data []byte, r *record) (bool, error) {
	var f fields
	hasPayload := false
	end, err := members(data, skipSpace(data, 0), 0, func(key []byte, i int) (int, error) {
		var next int
		var err error
		switch string(key) {
		case "event_id":
			r.id, next, err = stringAt(data, i)
		case "event_type":
			r.typ, next, err = stringAt(data, i)
		case "timestamp":
			var ts []byte
			ts, next, err = stringAt(data, i)
			r.ts = parseTime(ts)
		case "actor_id":
			r.actor, next, err = stringAt(data, i)
		case "attempt_id":
			r.attempt, next, err = stringAt(data, i)
		case "target_id":
			r.target, next, err = stringAt(data, i)
		case "payload":
			again := hasPayload
			hasPayload = i < len(data) && data[i] == '{'
			if hasPayload {
				if again { // a repeated payload key: the last wins
					r.clearPayload()
					f = fields{}
				}
				return payloadAt(data, i, r, &f)
			}
			next, err = skipValue(data, i, 0)
		default:
			next, err = skipValue(data, i, 0)
		}
		return next, err
	})
	if err != nil {
		return false, err
	}
	if skipSpace(data, end) != len(data) {
		return false, errSyntax
	}
	if len(r.typ) == 0 || !hasPayload {
		*r = record{seq: r.seq}
		return false, nil
	}
	f.resolve(r)
	return true, nil
}

// decodeBareRequest fills the payload fields of r from a bare
// attempt.requested body (what `nats pub` sends: the request without an
// envelope).
func decodeBareRequest(data []byte, r *record) error {
	var f fields
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return errNotObject
	}
	end, err := payloadAt(data, i, r, &f)
	if err != nil {
		return err
	}
	if skipSpace(data, end) != len(data) {
		return errSyntax
	}
	f.resolve(r)
	return nil
}

// clearPayload forgets the payload fields (a repeated payload key: the
// last wins).
func (r *record) clearPayload() {
	*r = record{seq: r.seq, ts: r.ts, id: r.id, typ: r.typ, actor: r.actor, attempt: r.attempt, target: r.target}
}

// resolve applies the fallbacks: the envelope's ids before the payload's,
// the payload's before a request's nested target and task.
func (f *fields) resolve(r *record) {
	r.attempt = firstBytes(r.attempt, f.attempt)
	r.target = firstBytes(r.target, f.target, f.reqTarget)
	r.task = firstBytes(r.task, f.reqTask)
	r.title = firstBytes(f.taskTitle, f.reqTitle)
	r.repoURL = firstBytes(r.repoURL, f.reqRepo)
	r.summary = firstBytes(f.summary, f.errText)
}

func firstBytes(bs ...[]byte) []byte {
	for _, b := range bs {
		if len(b) > 0 {
			return b
		}
	}
	return nil
}

// payloadAt reads the payload object at data[i] in place: every payload
// embeds attempt_id, task_id and target_id; a request nests target and
// task.
func payloadAt(data []byte, i int, r *record, f *fields) (int, error) {
	return members(data, i, 1, func(key []byte, i int) (int, error) {
		return r.payloadMember(f, key, data, i, stringAt)
	})
}

// payloadMember reads the payload member key whose value is at data[i],
// and returns the index just past it; str reads a string field's value.
func (r *record) payloadMember(f *fields, key, data []byte, i int, str func([]byte, int) ([]byte, int, error)) (int, error) {
	var next int
	var err error
	switch string(key) {
	case "attempt_id":
		f.attempt, next, err = str(data, i)
	case "target_id":
		f.target, next, err = str(data, i)
	case "task_id":
		r.task, next, err = str(data, i)
	case "task_title":
		f.taskTitle, next, err = str(data, i)
	case "status":
		r.status, next, err = str(data, i)
	case "repo_url":
		r.repoURL, next, err = str(data, i)
	case "branch":
		r.branch, next, err = str(data, i)
	case "branch_name":
		r.branchName, next, err = str(data, i)
	case "commit_sha":
		r.commit, next, err = str(data, i)
	case "pr_number":
		r.prNumber, next, err = integerAt(data, i)
	case "seq":
		r.dupSeq, next, err = integerAt(data, i)
	case "pr_url":
		r.prURL, next, err = str(data, i)
	case "title":
		r.prTitle, next, err = str(data, i)
	case "state":
		r.prState, next, err = str(data, i)
	case "repo":
		r.repo, next, err = str(data, i)
	case "stage":
		r.stage, next, err = str(data, i)
	case "failure_type":
		r.failureType, next, err = str(data, i)
	case "error_summary":
		f.summary, next, err = str(data, i)
	case "error":
		f.errText, next, err = str(data, i)
	case "reason":
		r.reason, next, err = str(data, i)
	case "field":
		r.field, next, err = str(data, i)
	case "note":
		r.note, next, err = str(data, i)
	case "artifact_id":
		r.artifactID, next, err = str(data, i)
	case "sha256":
		r.sha256, next, err = str(data, i)
	case "artifact_type":
		r.artifactType, next, err = str(data, i)
	case "storage_path":
		r.storagePath, next, err = str(data, i)
	case "size_bytes":
		r.sizeBytes, next, err = integerAt(data, i)
	case "target":
		f.reqTarget, f.reqRepo = nil, nil
		if i < len(data) && data[i] == '{' {
			return members(data, i, 2, func(key []byte, i int) (int, error) {
				switch string(key) {
				case "name":
					f.reqTarget, next, err = stringAt(data, i)
				case "repo_url":
					f.reqRepo, next, err = stringAt(data, i)
				default:
					next, err = skipValue(data, i, 2)
				}
				return next, err
			})
		}
		next, err = skipValue(data, i, 1)
	case "task":
		f.reqTask, f.reqTitle = nil, nil
		if i < len(data) && data[i] == '{' {
			return members(data, i, 2, func(key []byte, i int) (int, error) {
				switch string(key) {
				case "id":
					f.reqTask, next, err = stringAt(data, i)
				case "title":
					f.reqTitle, next, err = stringAt(data, i)
				default:
					next, err = skipValue(data, i, 2)
				}
				return next, err
			})
		}
		next, err = skipValue(data, i, 1)
	default:
		next, err = skipValue(data, i, 1)
	}
	return next, err
}

// stringAt reads the value at data[i]: its contents if it is a string, nil
// (after skipping it) if it is anything else: a field of the wrong type
// counts as absent.
func stringAt(data []byte, i int) ([]byte, int, error) {
	if i < len(data) && data[i] == '"' {
		if s, next, ok := plainString(data, i); ok {
			return s, next, nil
		}
		s, next, err := readString(data, i)
		if err != nil {
			return nil, next, err
		}
		if s == nil {
			s = []byte{}
		}
		return fixUTF8(s), next, nil
	}
	next, err := skipValue(data, i, 1)
	return nil, next, err
}

// integerAt reads a number with an integral value; 0 for anything else.
func integerAt(data []byte, i int) (int64, int, error) {
	if i < len(data) && (data[i] == '-' || (data[i] >= '0' && data[i] <= '9')) {
		next, err := skipNumber(data, i)
		if err != nil {
			return 0, next, err
		}
		f, err := strconv.ParseFloat(string(data[i:next]), 64)
		if err != nil || f != float64(int64(f)) || f > 1<<53 || f < -(1<<53) {
			return 0, next, nil
		}
		return int64(f), next, nil
	}
	next, err := skipValue(data, i, 1)
	return 0, next, err
}

// parseTime parses an RFC 3339 timestamp, or one without a zone (taken as
// UTC, as the Python worker writes them), into unix nanoseconds.
func parseTime(b []byte) int64 {
	if len(b) == 0 {
		return 0
	}
	s := string(b)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UnixNano()
	}
	if t, err := ParseTimestamp(s); err == nil {
		return t.UnixNano()
	}
	return 0
}

// ParseTimestamp parses the timestamp of an event: RFC 3339, or ISO 8601
// without a zone (what Python's datetime.utcnow().isoformat() writes),
// which is taken as UTC.
func ParseTimestamp(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, errors.New("not an RFC 3339 or ISO 8601 timestamp")
}

var errSyntax = errors.New("projector: malformed JSON")

// maxDepth bounds nesting, as encoding/json does, so hostile input cannot
// recurse without limit.
const maxDepth = 10000

// members walks the JSON object at data[i] (a '{'), calling f for each
// member with its key and the index of its value; f reads or skips the
// value and returns the index just past it. members returns the index just
// past the closing '}'. Values are read in place: nothing is scanned twice.
// A key that repeats is passed each time (the last wins, as in
// encoding/json).
func members(data []byte, i, depth int, f func(key []byte, i int) (int, error)) (int, error) {
	if i >= len(data) || data[i] != '{' {
		return i, errNotObject
	}
	if depth >= maxDepth {
		return i, errSyntax
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return i, errSyntax
		}
		key, next, err := readString(data, i)
		if err != nil {
			return next, err
		}
		i = skipSpace(data, next)
		if i >= len(data) || data[i] != ':' {
			return i, errSyntax
		}
		if i, err = f(key, skipSpace(data, i+1)); err != nil {
			return i, err
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return i, errSyntax
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return i + 1, nil
		default:
			return i, errSyntax
		}
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the index just past the value at data[i].
func skipValue(data []byte, i, depth int) (int, error) {
	if i >= len(data) {
		return i, errSyntax
	}
	switch c := data[i]; {
	case c == '"':
		return skipString(data, i)
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return i, errSyntax
		}
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == closing {
			return i + 1, nil
		}
		for {
			var err error
			if c == '{' {
				if i >= len(data) || data[i] != '"' {
					return i, errSyntax
				}
				if i, err = skipString(data, i); err != nil {
					return i, err
				}
				i = skipSpace(data, i)
				if i >= len(data) || data[i] != ':' {
					return i, errSyntax
				}
				i = skipSpace(data, i+1)
			}
			if i, err = skipValue(data, i, depth+1); err != nil {
				return i, err
			}
			i = skipSpace(data, i)
			switch {
			case i >= len(data):
				return i, errSyntax
			case data[i] == ',':
				i = skipSpace(data, i+1)
			case data[i] == closing:
				return i + 1, nil
			default:
				return i, errSyntax
			}
		}
	case c == 't':
		return skipWord(data, i, "true")
	case c == 'f':
		return skipWord(data, i, "false")
	case c == 'n':
		return skipWord(data, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(data, i)
	}
	return i, errSyntax
}

func skipWord(data []byte, i int, word string) (int, error) {
	if len(data)-i < len(word) || string(data[i:i+len(word)]) != word {
		return i, errSyntax
	}
	return i + len(word), nil
}

// skipNumber checks the JSON number grammar: -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?
func skipNumber(data []byte, i int) (int, error) {
	if i < len(data) && data[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(data) && data[i] >= '0' && data[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(data) && data[i] == '0' {
		i++
	} else if digits() == 0 {
		return i, errSyntax
	}
	if i < len(data) && data[i] == '.' {
		i++
		if digits() == 0 {
			return i, errSyntax
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if digits() == 0 {
			return i, errSyntax
		}
	}
	return i, nil
}

// skipString returns the index just past the string at data[i], checking
// its escapes without decoding them. A plain string is scanned eight bytes
// at a time (plainString); any other with bytes.IndexByte (vectorised):
// strings are most of an event's bytes.
// Raw control characters, which JSON forbids in strings, are not looked
// for: the projector need not reject what encoding/json would, only read
// what it accepts the same way.
func skipString(data []byte, i int) (int, error) {
	if _, next, ok := plainString(data, i); ok {
		return next, nil
	}
	j := i + 1
	for {
		q := bytes.IndexByte(data[j:], '"')
		if q < 0 {
			return len(data), errSyntax
		}
		seg := data[j : j+q]
		b := bytes.IndexByte(seg, '\\')
		if b < 0 {
			return j + q + 1, nil
		}
		// An escape before the quote: step over it and look again.
		j += b
		if j+1 >= len(data) {
			return j, errSyntax
		}
		switch data[j+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			j += 2
		case 'u':
			if _, ok := hex4(data, j+2); !ok {
				return j, errSyntax
			}
			j += 6
		default:
			return j, errSyntax
		}
	}
}

// plainString reads the string starting at data[i] (a '"') when it is
// plain: ASCII without escapes, what almost every string of an event is,
// and what needs neither unescaping nor a UTF-8 check. Its contents are
// returned as a sub-slice of data, with the index just past the closing
// quote; ok is false for any other string (or none).
func plainString(data []byte, i int) (s []byte, next int, ok bool) {
	j := i + 1
	// Eight bytes at a time: the lowest byte that is a quote, a backslash
	// or not ASCII. (hasZero may also flag bytes above a zero byte, never
	// below one, so the lowest flag is exact.)
	for ; j+8 <= len(data); j += 8 {
		w := binary.LittleEndian.Uint64(data[j:])
		if m := hasZero(w^(ones*'"')) | hasZero(w^(ones*'\\')) | w&highs; m != 0 {
			j += bits.TrailingZeros64(m) / 8
			break
		}
	}
	for j < len(data) && !stringStop[data[j]] {
		j++
	}
	if j < len(data) && data[j] == '"' {
		return data[i+1 : j], j + 1, true
	}
	return nil, i, false
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// hasZero flags (with its high bit) the lowest zero byte of w.
func hasZero(w uint64) uint64 { return (w - ones) &^ w & highs }

// stringStop holds the bytes that end a plain string, or make it not
// plain: the quote, the backslash and every non-ASCII byte.
var stringStop = func() (t [256]bool) {
	t['"'], t['\\'] = true, true
	for c := 0x80; c < len(t); c++ {
		t[c] = true
	}
	return t
}()

// readString reads the string starting at data[i] (a '"'). It returns the
// contents, unescaped (a sub-slice of data when there were no escapes), and
// the index just past the closing quote.
func readString(data []byte, i int) ([]byte, int, error) {
	if s, next, ok := plainString(data, i); ok {
		return s, next, nil
	}
	start := i + 1
	q := bytes.IndexByte(data[start:], '"')
	if q < 0 {
		return nil, len(data), errSyntax
	}
	if b := bytes.IndexByte(data[start:start+q], '\\'); b >= 0 {
		return unescape(data, start, start+b)
	}
	return data[start : start+q], start + q + 1, nil
}

// unescape decodes a string with escapes into a new buffer. Invalid UTF-8
// and lone surrogates become U+FFFD, as encoding/json does.
func unescape(data []byte, start, j int) ([]byte, int, error) {
	out := make([]byte, 0, j-start+16)
	out = append(out, data[start:j]...)
	for j < len(data) {
		c := data[j]
		switch {
		case c == '"':
			return fixUTF8(out), j + 1, nil
		case c < 0x20:
			return nil, j, errSyntax
		case c != '\\':
			out = append(out, c)
			j++
			continue
		}
		if j+1 >= len(data) {
			return nil, j, errSyntax
		}
		switch e := data[j+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
			j += 2
		case 'b':
			out = append(out, '\b')
			j += 2
		case 'f':
			out = append(out, '\f')
			j += 2
		case 'n':
			out = append(out, '\n')
			j += 2
		case 'r':
			out = append(out, '\r')
			j += 2
		case 't':
			out = append(out, '\t')
			j += 2
		case 'u':
			r, ok := hex4(data, j+2)
			if !ok {
				return nil, j, errSyntax
			}
			j += 6
			if utf16.IsSurrogate(r) {
				// A pair is \uD8xx\uDCxx; anything else is a lone surrogate.
				if j+6 <= len(data) && data[j] == '\\' && data[j+1] == 'u' {
					if r2, ok := hex4(data, j+2); ok {
						if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
							out = utf8.AppendRune(out, dec)
							j += 6
							continue
						}
					}
				}
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, j, errSyntax
		}
	}
	return nil, j, errSyntax
}

func hex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// fixUTF8 replaces invalid UTF-8 sequences with U+FFFD.
func fixUTF8(b []byte) []byte {
	if utf8.Valid(b) {
		return b
	}
	out := make([]byte, 0, len(b)+8)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		out = utf8.AppendRune(out, r)
		b = b[size:]
	}
	return out
}
