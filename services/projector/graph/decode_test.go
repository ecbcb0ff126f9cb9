package graph

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
)

// reference decodes what decodeEnvelope decodes, with encoding/json: the
// specification the fast decoder is checked against. Keys match exactly
// and the last of a repeated key wins (map decoding); a field of the wrong
// type counts as absent.
func reference(data []byte) (rec map[string]string, isEnvelope bool, ok bool) {
	var top map[string]any
	if json.Unmarshal(data, &top) != nil {
		return nil, false, false
	}
	str := func(m map[string]any, k string) string {
		s, _ := m[k].(string)
		return s
	}
	payload, _ := top["payload"].(map[string]any)
	if str(top, "event_type") == "" || payload == nil {
		return nil, false, true
	}
	rec = map[string]string{
		"id": str(top, "event_id"), "typ": str(top, "event_type"), "actor": str(top, "actor_id"),
		"attempt": str(top, "attempt_id"), "target": str(top, "target_id"),
		"task": str(payload, "task_id"), "status": str(payload, "status"), "commit": str(payload, "commit_sha"),
		"prURL": str(payload, "pr_url"), "prTitle": str(payload, "title"), "summary": str(payload, "error_summary"),
		"reason": str(payload, "reason"), "title": str(payload, "task_title"),
	}
	if rec["attempt"] == "" {
		rec["attempt"] = str(payload, "attempt_id")
	}
	if rec["target"] == "" {
		rec["target"] = str(payload, "target_id")
	}
	if rec["summary"] == "" {
		rec["summary"] = str(payload, "error")
	}
	if t, ok := payload["target"].(map[string]any); ok && rec["target"] == "" {
		rec["target"] = str(t, "name")
	}
	if t, ok := payload["task"].(map[string]any); ok {
		if rec["task"] == "" {
			rec["task"] = str(t, "id")
		}
		if rec["title"] == "" {
			rec["title"] = str(t, "title")
		}
	}
	n := int64(0)
	if f, ok := payload["pr_number"].(float64); ok && f == math.Trunc(f) && math.Abs(f) <= 1<<53 {
		n = int64(f)
	}
	rec["prNumber"] = fmt.Sprint(n)
	return rec, true, true
}

func recordFields(r *record) map[string]string {
	return map[string]string{
		"id": string(r.id), "typ": string(r.typ), "actor": string(r.actor), "attempt": string(r.attempt),
		"target": string(r.target), "task": string(r.task), "status": string(r.status), "commit": string(r.commit),
		"prURL": string(r.prURL), "prTitle": string(r.prTitle), "summary": string(r.summary),
		"reason": string(r.reason), "title": string(r.title), "prNumber": fmt.Sprint(r.prNumber),
	}
}

// checkAgainstReference fails when the fast decoder and encoding/json
// disagree on a document encoding/json accepts.
func checkAgainstReference(t *testing.T, data []byte) {
	t.Helper()
	want, wantEnv, valid := reference(data)
	var r record
	gotEnv, err := decodeEnvelope(data, &r)
	if !valid {
		return // malformed JSON: the fast decoder may reject it or not
	}
	var top any
	_ = json.Unmarshal(data, &top)
	if _, isObject := top.(map[string]any); !isObject {
		return
	}
	if err != nil {
		t.Fatalf("rejected what encoding/json accepts: %v\n%q", err, data)
	}
	if gotEnv != wantEnv {
		t.Fatalf("envelope = %v, want %v\n%q", gotEnv, wantEnv, data)
	}
	if !wantEnv {
		return
	}
	got := recordFields(&r)
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("%s = %q, want %q\n%q", k, got[k], v, data)
		}
	}
}

func TestDecodeMatchesEncodingJSON(t *testing.T) {
	for _, env := range eventgen.Stream(200) {
		data, _ := env.Marshal()
		checkAgainstReference(t, data)
	}
	for _, doc := range []string{
		`{"event_type":"x","payload":{"task_id":"a\"b\\c\u00e9\ud83d\ude00\n","pr_number":12.0}}`,
		`{"event_type":"x","payload":{"pr_number":1e3,"pr_url":null,"status":5,"reason":["x"]}}`,
		`{"event_type":"x","payload":{"task_id":"first","task_id":"second"},"event_id":"e"}`,
		`{"event_type":"x","payload":{"a":{"b":[1,2,{"c":"}"}]},"attempt_id":"p"},"attempt_id":""}`,
		`{"event_type":"x","payload":{"task_id":"\ud800 lone","reason":"bad \xff utf8"}}`,
		`{"event_type":"x","payload":{"target":{"name":"t","repo_url":"u"},"task":{"id":"T","title":"tt"}}}`,
		`{"event_type":"x","payload":{},"target_id":"top"}`,
		`  {"event_type" : "x" , "payload" : { } }  `,
		`{"payload":{"a":1}}`,
		`{"event_type":"","payload":{}}`,
		`{"event_type":"x","payload":[]}`,
		`{}`,
	} {
		checkAgainstReference(t, []byte(doc))
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	for _, doc := range []string{
		``, `[]`, `"x"`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1} x`, `{"a":tru}`, `{"a":01}`,
		`{"a":"\x"}`, `{"a":"\u12"}`, `{"a":[1,]}`, `{"a":{"b":1,}}`, `{"a":-}`, `{"a":1.}`,
	} {
		var r record
		if _, err := decodeEnvelope([]byte(doc), &r); err == nil {
			t.Errorf("accepted %q", doc)
		}
	}
}

func TestParseTimestamp(t *testing.T) {
	for in, want := range map[string]time.Time{
		"2026-01-28T12:34:56.123456":      time.Date(2026, 1, 28, 12, 34, 56, 123456000, time.UTC),
		"2026-01-28T12:34:56":             time.Date(2026, 1, 28, 12, 34, 56, 0, time.UTC),
		"2026-01-28T12:34:56Z":            time.Date(2026, 1, 28, 12, 34, 56, 0, time.UTC),
		"2026-01-28T13:34:56.5+01:00":     time.Date(2026, 1, 28, 12, 34, 56, 500000000, time.UTC),
		"2026-01-28 12:34:56.000001":      time.Date(2026, 1, 28, 12, 34, 56, 1000, time.UTC),
		"2026-01-28T12:34:56.123456+0000": {},
	} {
		got, err := ParseTimestamp(in)
		if want.IsZero() {
			if err == nil {
				t.Errorf("%s accepted", in)
			}
			continue
		}
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("%s = %v, %v; want %v", in, got, err, want)
		}
	}
}

// FuzzDecodeEnvelope checks the fast decoder against encoding/json on any
// input: same fields for every document encoding/json accepts, and never
// a panic.
func FuzzDecodeEnvelope(f *testing.F) {
	for _, env := range eventgen.Stream(20)[:12] {
		data, _ := env.Marshal()
		f.Add(data)
	}
	f.Add([]byte(`{"event_type":"x","payload":{"task_id":"a\"b\u00e9\ud83d\ude00","pr_number":1e2}}`))
	// Strings whose quote, escape or first non-ASCII byte falls anywhere in
	// an eight-byte word, and invalid UTF-8.
	f.Add([]byte(`{"event_type":"abcdefg","payload":{"task_id":"abcdefgh\\","status":"1234567é","title":"12345678\"x"}}`))
	f.Add([]byte("{\"event_type\":\"x\",\"payload\":{\"task_id\":\"ab\xffcdefghij\",\"status\":\"\x80\"}}"))
	for _, doc := range onePassCases {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgainstReference(t, data)
		checkOnePass(t, data)
		var r record
		_ = decodeBareRequest(data, &r)
	})
}

// BenchmarkDecodeEnvelope is a replay's decode worker: the graph's fields
// and the chain's hash begun, per event of a realistic stream (the
// stream's mix of types). "canonical" is the events as the services write
// them, read in one pass. The others are read in two after the one pass
// gave up: "struct-order" the same events as the services wrote them
// before their payloads were canonical (keys in the Go struct's order,
// json.Marshal's escapes), which the one pass refuses at the first key
// out of order; "worst" the canonical events with a space added before
// the payload's closing brace, which it refuses only there.
func BenchmarkDecodeEnvelope(b *testing.B) {
	var canonical, worst [][]byte
	size := 0
	for _, env := range eventgen.Stream(800) {
		data, err := env.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		canonical = append(canonical, data)
		size += len(data)
		end := bytes.LastIndexByte(data, '}') // the envelope's; the payload's is the one before
		end = bytes.LastIndexByte(data[:end], '}')
		worst = append(worst, append(append(append([]byte{}, data[:end]...), ' '), data[end:]...))
	}
	structOrder := structOrderStream(b, 800)
	for _, bench := range []struct {
		name string
		msgs [][]byte
	}{{"canonical", canonical}, {"struct-order", structOrder}, {"worst", worst}} {
		b.Run(bench.name, func(b *testing.B) {
			b.SetBytes(int64(size / len(canonical)))
			b.ReportAllocs()
			var it Item
			i := 0
			for b.Loop() {
				it.DecodeEnvelope(uint64(i+1), bench.msgs[i%len(bench.msgs)])
				if it.Err() != nil || !it.rec.chain {
					b.Fatalf("message %d: %v, chained %v", i, it.Err(), it.rec.chain)
				}
				it.rec.pending.Finish(nil)
				i++
			}
		})
	}
}

// allFields is every field of r but its hash, by name, bytes as strings.
func allFields(r *record) map[string]string {
	out := map[string]string{}
	v := reflect.ValueOf(r).Elem()
	for i := range v.NumField() {
		switch f := v.Field(i); f.Kind() {
		case reflect.Slice:
			out[v.Type().Field(i).Name] = string(f.Bytes())
		case reflect.Int64, reflect.Uint64:
			out[v.Type().Field(i).Name] = fmt.Sprint(f)
		}
	}
	return out
}

// checkOnePass decodes data with decodeOnce allowed and without it, and
// fails unless both give the same item: the same fields, error and hash.
func checkOnePass(t *testing.T, data []byte) (tookOnePass bool) {
	t.Helper()
	decode := func(once bool) (it Item, hash events.Pending) {
		noOnePass = !once
		defer func() { noOnePass = false }()
		it.DecodeEnvelope(7, data)
		if once {
			var probe Item
			tookOnePass = probe.decodeOnce(data)
			if probe.rec.pending.Valid() {
				probe.rec.pending.Finish(nil)
			}
		}
		hash, it.rec.pending = it.rec.pending, events.Pending{}
		it.f = fields{}
		return it, hash
	}
	a, ha := decode(true)
	b, hb := decode(false)
	if fa, fb := allFields(&a.rec), allFields(&b.rec); !reflect.DeepEqual(fa, fb) || a.rec.chain != b.rec.chain ||
		(a.err == nil) != (b.err == nil) || ha.Valid() != hb.Valid() {
		t.Fatalf("one pass %v (chained %v, err %v)\ntwo passes %v (chained %v, err %v)\n%q",
			fa, a.rec.chain, a.err, fb, b.rec.chain, b.err, data)
	}
	if ha.Valid() {
		if x, y := ha.Finish(nil), hb.Finish(nil); x != y {
			t.Fatalf("one pass hashes %x, two passes %x\n%q", x, y, data)
		}
	}
	return tookOnePass
}

// TestOnePassMatchesTwo: an event as the services write it is read in one
// pass, and whatever the message, that pass gives what the two give.
func TestOnePassMatchesTwo(t *testing.T) {
	for i, env := range eventgen.Stream(400) {
		data, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !checkOnePass(t, data) {
			t.Errorf("event %d (%s) was not read in one pass: %s", i, env.EventType, data)
		}
	}
	for _, data := range structOrderStream(t, 400) {
		checkOnePass(t, data)
	}
	for _, env := range eventgen.Python("a-1", "demo") {
		data, _ := env.Marshal()
		checkOnePass(t, data)
	}
	for _, doc := range onePassCases {
		checkOnePass(t, []byte(doc))
	}
}

// onePassCases are envelopes around the edges of what decodeOnce takes.
var onePassCases = []string{
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{"a":1,"task_id":"T"}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{"task_id":"T","a":1}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{"a":1},"payload":{"b":2}}`,
	`{"event_id":"e","event_type":"x","payload":{"attempt_id":"p","pr_number":12,"size_bytes":-3}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":[1]}`,
	`{"event_id":"e","event_type":"","attempt_id":"a","payload":{}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"","payload":{}}`,
	`{"event_id":5,"event_type":"x","attempt_id":"a","payload":{}}`,
	`{"event_id":"e","event_type":"x","attempt_id":5,"target_id":null,"payload":{"attempt_id":"p","target_id":"q"}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a\u00e9\ud800","actor_id":null,"payload":{}}`,
	"{\"event_id\":\"e\",\"event_type\":\"x\",\"attempt_id\":\"a\xff\",\"actor_id\":\"\x01\",\"payload\":{}}",
	"{\"event_id\":\"e\",\"event_type\":\"x\",\"attempt_id\":\"a\",\"other\":\"\x01\",\"payload\":{}}",
	`{"event_id":"e","event_type":"x","attempt_id":"a","timestamp":"2026-01-01T00:00:00.5Z","payload":{}} `,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{"target":{"name":"t","repo_url":"u"},"task":{"id":"T","title":"tt"}}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{"target":"t","task":[{"id":"T"}]}}`,
	`{"event_id":"e","event_type":"attempt.requested","attempt_id":"a","payload":{"target":{"repo_url":"https://x:ghp_abcdefghijklmnopqrstuvwxyz0123456789@h/r"}}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{"pr_number":1.5,"seq":1e2}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{"pr_number":9007199254740993}}`,
	`{"event_id":"e","event_type":"x","attempt_id":"a","payload":{}}x`,
}

// structOrderStream is eventgen's stream as the services wrote it before
// payloads were canonical: each payload marshalled from its Go struct
// (keys in the struct's order, json.Marshal's escapes), and the envelope
// too.
func structOrderStream(tb testing.TB, n int) [][]byte {
	payloadOf := map[events.Type]func() any{
		events.AttemptRequested: func() any { return new(events.Request) },
		events.AttemptCreated:   func() any { return new(events.Created) },
		events.AttemptStarted:   func() any { return new(events.Started) },
		events.RepoFetched:      func() any { return new(events.Fetched) },
		events.BacklogEdited:    func() any { return new(events.Edited) },
		events.BacklogUnchanged: func() any { return new(events.Edited) },
		events.BranchPushed:     func() any { return new(events.Pushed) },
		events.PRCreated:        func() any { return new(events.PROpened) },
		events.AttemptSucceeded: func() any { return new(events.Succeeded) },
		events.AttemptFailed:    func() any { return new(events.Failed) },
		events.AttemptRejected:  func() any { return new(events.Rejected) },
	}
	var out [][]byte
	for _, env := range eventgen.Stream(n) {
		v := payloadOf[env.EventType]()
		if err := json.Unmarshal(env.Payload, v); err != nil {
			tb.Fatal(err)
		}
		var err error
		if env.Payload, err = json.Marshal(v); err != nil {
			tb.Fatal(err)
		}
		data, err := json.Marshal(env)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}
