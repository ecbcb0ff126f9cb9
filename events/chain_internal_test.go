package events

import (
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"testing"
	"time"
)

// TestStrUnsafeFindsTheFirstUnsafeByte checks the eight-bytes-at-a-time
// scan against strSafe: for every byte value at every place of a word,
// alone and after or before another one, the lowest flag is the first
// byte strSafe does not mark.
func TestStrUnsafeFindsTheFirstUnsafeByte(t *testing.T) {
	first := func(w [8]byte) int {
		for i, c := range w {
			if !strSafe[c] {
				return i
			}
		}
		return 8
	}
	got := func(w [8]byte) int {
		if m := strUnsafe(binary.LittleEndian.Uint64(w[:])); m != 0 {
			return bits.TrailingZeros64(m) / 8
		}
		return 8
	}
	for a := range 256 {
		for i := range 8 {
			for b := range 256 {
				w := [8]byte{'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'}
				w[i] = byte(a)
				w[(i+3)%8] = byte(b)
				if f, g := first(w), got(w); f != g {
					t.Fatalf("%q: first unsafe byte at %d, strUnsafe says %d", w, f, g)
				}
			}
		}
	}
}

// canonicalBothWays is CanonicalJSON of v with the verbatim check and
// without it (the rebuild alone), and whether the check took v as it is.
func canonicalBothWays(t *testing.T, v []byte) (fast, slow []byte, fastErr, slowErr error, verbatim bool) {
	t.Helper()
	fast, fastErr = CanonicalJSON(v)
	noVerbatim = true
	slow, slowErr = CanonicalJSON(v)
	noVerbatim = false
	p := &canonParser{data: v}
	verbatim = p.canonicalAt(0) && p.i == len(v)
	return
}

// verbatimCases are payloads around the edges of canonicalAt: canonical
// ones it must take as they are, and near misses it must leave to the
// rebuild.
var verbatimCases = []string{
	`{}`, `[]`, `""`, `0`, `-1`, `12`, `true`, `false`, `null`, `"a b"`,
	`{"a":1,"b":[1,2,{"c":null}],"d":{"e":"f"}}`,
	`{"attempt_id":"a-1","pr_number":17,"task_id":"T-1"}`,
	// Not canonical, or not taken as it is.
	`{"b":1,"a":2}`, `{"a":1,"a":2}`, `{"a": 1}`, ` {"a":1}`, `{"a":1} `, `[1, 2]`,
	`-0`, `01`, `-01`, `-`, `1.5`, `1e3`, `1E3`, `10.0`, `1.0e-7`, `123456789012345678901234567890`,
	`"\u00e9"`, `"é"`, `"a\"b"`, `"a\\b"`, `"\n"`, "\"\x7f\"", `"\u0041"`, `"a/b"`, `"\/"`,
	`{"\u0061":1}`, `{"é":1,"z":2}`, `{"z":1,"é":2}`, `{"B":1,"a":2}`, `{"a":1,"B":2}`, `{"ab":1,"a":2}`,
	`{"a":1,}`, `{"a":}`, `{"a"1}`, `[1,]`, `[,1]`, `{`, `[`, `"abc`, `tru`, `nul`, `{"a":tru}`, `[1 2]`,
	`{"a":[{"b":[{"c":[]}]}]}`, `[[[[[[[[[[]]]]]]]]]]`,
	// Escapes: those Python writes, and others.
	`"\u00E9"`, `"\u000a"`, `"\u0001"`, `"\u001f"`, `"\u007f"`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ude00"`, `"\ud83d\u0041"`,
	`"\ud83dx"`, `"\u0022"`, `"\u0020"`, `"\t\b\f\r"`, `"\x"`, `"\u12"`, `"a\"`, `"\ufffd"`, `"\uffff"`, `{"a":"\"","b":"\\"}`,
}

// TestVerbatimMatchesRebuild: whatever the payload, the verbatim check
// gives what the rebuild gives (the same canonical form, or an error for
// both), and takes as it is exactly what is already canonical.
func TestVerbatimMatchesRebuild(t *testing.T) {
	for _, c := range verbatimCases {
		fast, slow, fastErr, slowErr, verbatim := canonicalBothWays(t, []byte(c))
		if (fastErr == nil) != (slowErr == nil) || string(fast) != string(slow) {
			t.Errorf("%s: verbatim check gives %s (%v), rebuild %s (%v)", c, fast, fastErr, slow, slowErr)
		}
		if verbatim && (slowErr != nil || string(slow) != c) {
			t.Errorf("%s: taken as it is, but its canonical form is %s (%v)", c, slow, slowErr)
		}
	}
}

// TestNewWritesCanonicalPayloads: every payload New writes is taken as it
// is by the projector's check (so replays take the fast path), and the
// envelope's JSON keeps it so.
func TestNewWritesCanonicalPayloads(t *testing.T) {
	ref := Ref{AttemptID: "a-20261130-034108-9f2c", TaskID: "T-42", TargetID: "atlas"}
	pr := 17
	for _, payload := range []any{
		Request{Ref: ref, Target: Target{Name: "atlas", RepoURL: "https://github.com/acme/atlas.git", Branch: "main"},
			Task: Task{ID: "T-42", Title: "Add <b>bold</b> & \"more\": café, 😀\n\x7f", AllowedPaths: []string{BacklogPath}}},
		PROpened{Ref: ref, PRNumber: 17, PRURL: "https://github.com/acme/atlas/pull/17", Title: "Leviathan: <x> & y", State: "open"},
		Succeeded{Ref: ref, Status: "succeeded", PRNumber: &pr},
		Failed{Ref: ref, Status: "failed", Stage: "push", FailureType: PathViolation, ErrorSummary: "changed README.md", Deliveries: 1},
	} {
		env, err := New(PRCreated, "pr-1", ref, payload, time.Date(2026, 11, 30, 3, 41, 8, 0, time.UTC))
		if err != nil {
			t.Fatal(err)
		}
		data, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		if p := (&canonParser{data: back.Payload}); !p.canonicalAt(0) || p.i != len(back.Payload) {
			t.Errorf("%T: payload %s is not taken as it is", payload, back.Payload)
		}
		if !json.Valid(data) {
			t.Errorf("%s: not JSON", data)
		}
	}
}

func FuzzVerbatimMatchesRebuild(f *testing.F) {
	for _, c := range verbatimCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		fast, slow, fastErr, slowErr, verbatim := canonicalBothWays(t, v)
		if (fastErr == nil) != (slowErr == nil) || string(fast) != string(slow) {
			t.Fatalf("%q: verbatim check gives %q (%v), rebuild %q (%v)", v, fast, fastErr, slow, slowErr)
		}
		if verbatim && string(slow) != string(v) {
			t.Fatalf("%q: taken as it is, but its canonical form is %q", v, slow)
		}
	})
}
