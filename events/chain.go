package events

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The hash chain over the event log, as the Python control plane keeps it
// (leviathan/graph/events.py, Event.compute_hash): every event's hash is
// the SHA-256, in lowercase hex, of the canonical JSON of
//
//	{actor_id, event_id, event_type, payload, prev_hash, timestamp}
//
// where prev_hash is the hash of the event before it in the log (null for
// the first) and the JSON is Python's json.dumps(..., sort_keys=True,
// separators=(",", ":")): keys sorted at every level, no spaces, non-ASCII
// escaped as \uXXXX, floats as Python's repr, and timestamp as Python's
// datetime.isoformat() (microseconds only when not zero; the offset as
// "+hh:mm", none for a timestamp without a zone). An event with the same
// fields hashes the same here and there, so either side can check the
// other's chain. Fields of the envelope outside those six (attempt_id,
// target_id) are not covered, as upstream has no such fields.
//
// The canonical JSON is returned in two parts around the prev_hash value
// (Canonical), so that the part which does not depend on the chain can be
// made in parallel and only ChainHash runs in log order.

// Canonical is an event's canonical JSON without its prev_hash value: Head
// ends with `"prev_hash":`, Tail starts with `,"timestamp":`.
type Canonical struct {
	Head, Tail []byte
}

// ChainHash is the hash of the event c whose predecessor's hash is prev
// (nil: the first event).
func ChainHash(c Canonical, prev *[sha256.Size]byte) [sha256.Size]byte {
	return c.Begin().Finish(prev)
}

// Pending is an event's hash begun: its canonical JSON up to prev_hash
// absorbed, which needs no other event. Finish completes it in chain
// order.
type Pending struct {
	s *hasher
}

// hasher is a SHA-256 state with room for what Finish writes and sums,
// so that a pooled one hashes an event without allocating.
type hasher struct {
	h    hash.Hash
	tail []byte // the canonical JSON after prev_hash
	buf  [2*sha256.Size + 2]byte
	sum  [sha256.Size]byte
}

// hashers keeps hashers between a Pending's Begin and its Finish, which a
// projector runs on different goroutines, a million times in a replay.
var hashers = sync.Pool{New: func() any { return &hasher{h: sha256.New()} }}

func begin(head, tail []byte) Pending {
	s := hashers.Get().(*hasher)
	s.h.Reset()
	s.h.Write(head)
	s.tail = append(s.tail[:0], tail...)
	return Pending{s: s}
}

// Begin absorbs c's Head.
func (c Canonical) Begin() Pending { return begin(c.Head, c.Tail) }

// Finish is the hash of the event whose predecessor's hash is prev (nil:
// the first event). A Pending is finished once: Finish hands its state
// back for another Begin, so neither p nor a copy of it may be finished
// again.
func (p Pending) Finish(prev *[sha256.Size]byte) [sha256.Size]byte {
	s := p.s
	if prev == nil {
		s.h.Write([]byte("null"))
	} else {
		s.buf[0], s.buf[len(s.buf)-1] = '"', '"'
		hex.Encode(s.buf[1:], prev[:])
		s.h.Write(s.buf[:])
	}
	s.h.Write(s.tail)
	sum := [sha256.Size]byte(s.h.Sum(s.sum[:0]))
	hashers.Put(s)
	return sum
}

// Valid says the hash is begun (the zero Pending is not).
func (p Pending) Valid() bool { return p.s != nil }

// CanonicalEvent is the canonical form of an event with these fields;
// payload is its JSON. An empty actor is null (upstream's None).
func CanonicalEvent(eventID, eventType, actor, timestamp string, payload []byte) (Canonical, error) {
	p := parsers.Get().(*canonParser)
	defer p.release()
	p.data, p.i = payload, 0
	if err := p.payload(); err != nil {
		return Canonical{}, err
	}
	return p.event(nil, nil, []byte(eventID), []byte(eventType), []byte(actor), []byte(timestamp)), nil
}

// CanonicalJSON is the canonical form of a JSON value (a new slice): keys
// sorted, no whitespace, Python's escapes and floats. It is the same JSON
// value, and New writes every payload in it, so that a projector hashing
// the event can check the payload and copy it instead of rebuilding it.
func CanonicalJSON(v []byte) ([]byte, error) {
	p := parsers.Get().(*canonParser)
	defer p.release()
	p.data, p.i = v, 0
	if err := p.payload(); err != nil {
		return nil, err
	}
	return slices.Clone(p.canon), nil
}

// CanonicalEnvelope is the canonical form of the event in an envelope's
// JSON.
func CanonicalEnvelope(data []byte) (Canonical, error) {
	p := parsers.Get().(*canonParser)
	defer p.release()
	if err := p.envelope(data); err != nil {
		return Canonical{}, err
	}
	return p.event(nil, nil, p.id, p.typ, p.actor, p.ts), nil
}

// BeginEnvelope is CanonicalEnvelope(data).Begin(), without keeping the
// canonical JSON: what a projector does for every event it reads.
func BeginEnvelope(data []byte) (Pending, error) {
	p := parsers.Get().(*canonParser)
	defer p.release()
	if err := p.envelope(data); err != nil {
		return Pending{}, err
	}
	c := p.event(p.head[:0], p.tailBuf[:0], p.id, p.typ, p.actor, p.ts)
	p.head, p.tailBuf = c.Head, c.Tail
	return begin(c.Head, c.Tail), nil
}

// A Visitor is told of an event's members as BeginVisit reads them. At
// level 0 they are the envelope's, other than the payload, and value is
// a string's contents, decoded, or nil for any other value; plain says
// the string was printable ASCII without an escape. At level 1 they are
// the payload's, and value is the member's JSON, which is in canonical
// form; plain says it holds no escape.
//
// A payload object that is not in canonical form (an event written by
// another program, or before New wrote canonical payloads) is rebuilt for
// the hash, and Payload is told where it starts in data instead: it reads
// the payload itself, forgetting what Member told it of it, and says
// false when it cannot.
type Visitor interface {
	Member(level int, key, value []byte, plain bool)
	Payload(data []byte, i int) bool
}

// BeginVisit is BeginEnvelope for an envelope whose payload is an object,
// telling v of its members on the way: a projector reads an event once for
// both its hash and its fields, and the payload once more only when it is
// not in canonical form, as New writes every payload. For any other
// document (one without a payload object, or with two payloads, or that
// BeginEnvelope refuses) ok is false and nothing is begun (v may have been
// told of members before that): such a document is read with
// BeginEnvelope and a decoder of its own.
func BeginVisit(data []byte, v Visitor) (pend Pending, ok bool) {
	p := parsers.Get().(*canonParser)
	defer p.release()
	p.visitor = v
	if err := p.envelope(data); err != nil {
		return Pending{}, false
	}
	c := p.event(p.head[:0], p.tailBuf[:0], p.id, p.typ, p.actor, p.ts)
	p.head, p.tailBuf = c.Head, c.Tail
	return begin(c.Head, c.Tail), true
}

// errNotVisited ends BeginVisit's read of a document it does not take.
var errNotVisited = errors.New("not an envelope with one payload object")

// parsers keeps canonParsers, whose buffers make most canonical forms
// allocate only their result.
var parsers = sync.Pool{New: func() any { return new(canonParser) }}

func (p *canonParser) release() {
	p.data, p.i, p.ms = nil, 0, p.ms[:0]
	p.id, p.typ, p.actor, p.ts = nil, nil, nil, nil
	p.visitor = nil
	parsers.Put(p)
}

// reuse is b emptied, never nil (value only skips for nil).
func reuse(b []byte) []byte {
	if b == nil {
		return make([]byte, 0, 512)
	}
	return b[:0]
}

// payload canonicalizes the JSON value in p.data into p.canon.
func (p *canonParser) payload() error {
	var err error
	if p.canon, _, err = p.payloadValue(reuse(p.canon)); err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	if p.skip(); p.i != len(p.data) {
		return errors.New("payload: data after the value")
	}
	return nil
}

// envelope reads an envelope's six fields, the payload canonicalized.
func (p *canonParser) envelope(data []byte) error {
	p.data, p.i = data, 0
	p.skip()
	if p.i >= len(p.data) || p.data[p.i] != '{' {
		return errCanonSyntax
	}
	hasPayload := false
	err := p.members(func(key []byte, _ bool, _ int) error {
		var err error
		var str []byte // the member's value when it is a string, for the visitor
		var plain bool
		switch string(key) {
		case "event_id":
			p.id, plain, err = p.strBytes()
			str = p.id
		case "event_type":
			p.typ, plain, err = p.strBytes()
			str = p.typ
		case "actor_id":
			if p.literal("null") {
				p.actor = nil
			} else {
				p.actor, plain, err = p.strBytes()
			}
			str = p.actor
		case "timestamp":
			p.ts, plain, err = p.strBytes()
			str = p.ts
		case "payload":
			// With a visitor: once, an object. In canonical form, what New
			// writes, its members are told of on the way; else it is
			// rebuilt and the visitor reads it.
			start := p.i
			if p.visitor != nil && (hasPayload || p.i >= len(p.data) || p.data[p.i] != '{') {
				return errNotVisited
			}
			hasPayload = true
			var copied bool
			if p.canon, copied, err = p.payloadValue(reuse(p.canon)); err != nil {
				return err
			}
			if p.visitor != nil && !copied && !p.visitor.Payload(p.data, start) {
				return errNotVisited
			}
			return nil
		default:
			if p.visitor != nil && p.i < len(p.data) && p.data[p.i] == '"' {
				str, plain, err = p.strBytes()
			} else {
				_, err = p.value(nil, 0)
			}
		}
		if err == nil && p.visitor != nil {
			p.visitor.Member(0, key, str, plain)
		}
		return err
	})
	if err != nil {
		return err
	}
	if p.skip(); p.i != len(p.data) {
		return errCanonSyntax
	}
	if !hasPayload {
		return errors.New("envelope without a payload")
	}
	return nil
}

// payloadValue appends the canonical form of the payload at p.i to b. A
// payload already in canonical form, as events.New writes every payload,
// is checked (canonicalAt) and copied as it is; any other is rebuilt
// (value); copied says which. The check is tried on the payload as a
// whole only, so a hostile payload costs at most one failed check before
// its rebuild.
func (p *canonParser) payloadValue(b []byte) (_ []byte, copied bool, err error) {
	p.skip()
	start := p.i
	if !noVerbatim && p.canonicalAt(0) {
		return append(b, p.data[start:p.i]...), true, nil
	}
	p.i = start
	b, err = p.value(b, 0)
	return b, false, err
}

// noVerbatim turns off payloadValue's check (the tests compare both ways).
var noVerbatim = false

// canonicalAt reports whether the value at p.i is in canonical form: what
// value would write for it is its own bytes. It accepts a part of that
// form only, and says false for anything else, canonical or not: no
// whitespace; objects whose keys, printable ASCII without escapes, are in
// strictly increasing order (no key repeated); strings in canonical form
// (canonString); integers without sign on zero; true, false and null. It
// moves p.i past the value when it says true, and to anywhere when it
// says false. With a visitor, it tells it of the members of the object at
// depth 0 (the payload).
func (p *canonParser) canonicalAt(depth int) bool {
	if depth > maxCanonDepth || p.i >= len(p.data) {
		return false
	}
	switch c := p.data[p.i]; {
	case c == '{':
		p.i++
		if p.i < len(p.data) && p.data[p.i] == '}' {
			p.i++
			return true
		}
		var prev []byte
		for first := true; ; first = false {
			key, ok := p.plainString()
			// Python sorts keys by code point: for ASCII, byte order.
			if !ok || !first && bytes.Compare(prev, key) >= 0 || p.i >= len(p.data) || p.data[p.i] != ':' {
				return false
			}
			prev = key
			p.i++
			vs := p.i
			p.escaped = false
			if !p.canonicalAt(depth+1) || p.i >= len(p.data) {
				return false
			}
			if depth == 0 && p.visitor != nil {
				p.visitor.Member(1, key, p.data[vs:p.i], !p.escaped)
			}
			switch p.data[p.i] {
			case ',':
				p.i++
			case '}':
				p.i++
				return true
			default:
				return false
			}
		}
	case c == '[':
		p.i++
		if p.i < len(p.data) && p.data[p.i] == ']' {
			p.i++
			return true
		}
		for {
			if !p.canonicalAt(depth+1) || p.i >= len(p.data) {
				return false
			}
			switch p.data[p.i] {
			case ',':
				p.i++
			case ']':
				p.i++
				return true
			default:
				return false
			}
		}
	case c == '"':
		return p.canonString()
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		start := p.i
		if c == '-' {
			p.i++
		}
		digits := p.i
		for p.i < len(p.data) && p.data[p.i] >= '0' && p.data[p.i] <= '9' {
			p.i++
		}
		switch n := p.i - digits; {
		case n == 0, n > 1 && p.data[digits] == '0': // "-", "01"
			return false
		case n == 1 && p.data[digits] == '0' && digits > start: // "-0" is written 0
			return false
		}
		// A fraction or an exponent makes a float, written as Python's
		// repr writes it: not checked here.
		return p.i >= len(p.data) || p.data[p.i] != '.' && p.data[p.i] != 'e' && p.data[p.i] != 'E'
	}
	return false
}

// canonString reads the string at p.i when it is in canonical form, as
// appendPyString writes it: printable ASCII and the escapes Python's
// json.dumps writes (\" \\ \n \r \t \b \f, and \u with lowercase hex for
// other control characters, DEL and beyond ASCII, a surrogate pair beyond
// U+FFFF). It says false for any other string, and for anything that is
// not one.
func (p *canonParser) canonString() bool {
	if p.i >= len(p.data) || p.data[p.i] != '"' {
		return false
	}
	for p.i++; ; {
		p.skipSafe()
		if p.i+1 >= len(p.data) {
			return false
		}
		switch p.data[p.i] {
		case '"':
			p.i++
			return true
		case '\\':
			p.escaped = true
		default: // a raw control character, DEL or beyond ASCII
			return false
		}
		switch p.data[p.i+1] {
		case '"', '\\', 'n', 'r', 't', 'b', 'f':
			p.i += 2
			continue
		case 'u':
		default:
			return false
		}
		r, ok := lowerHex4(p.data, p.i+2)
		if !ok {
			return false
		}
		p.i += 6
		switch {
		case r >= 0xd800 && r < 0xdc00: // a pair's first half, then its second
			if p.i+6 > len(p.data) || p.data[p.i] != '\\' || p.data[p.i+1] != 'u' {
				return false
			}
			if r2, ok := lowerHex4(p.data, p.i+2); !ok || r2 < 0xdc00 || r2 >= 0xe000 {
				return false
			}
			p.i += 6
		case r >= 0xdc00 && r < 0xe000: // a second half alone
			return false
		case r < 0x20 && r != '\b' && r != '\t' && r != '\n' && r != '\f' && r != '\r', r >= 0x7f:
		default: // written as itself, or with its short escape
			return false
		}
	}
}

// skipSafe moves p.i past the bytes strSafe marks, eight at a time while
// it can.
func (p *canonParser) skipSafe() {
	for p.i+8 <= len(p.data) {
		if m := strUnsafe(binary.LittleEndian.Uint64(p.data[p.i:])); m != 0 {
			p.i += bits.TrailingZeros64(m) / 8
			return
		}
		p.i += 8
	}
	for p.i < len(p.data) && strSafe[p.data[p.i]] {
		p.i++
	}
}

// lowerHex4 reads the four lowercase hex digits at data[i].
func lowerHex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// plainString reads the string at p.i when it is printable ASCII without
// an escape (its own canonical form) and returns its contents; ok is false
// for any other string and for anything that is not one.
func (p *canonParser) plainString() (s []byte, ok bool) {
	if p.i >= len(p.data) || p.data[p.i] != '"' {
		return nil, false
	}
	start := p.i + 1
	p.i++
	p.skipSafe()
	if p.i >= len(p.data) || p.data[p.i] != '"' {
		return nil, false
	}
	p.i++
	return p.data[start : p.i-1], true
}

// event appends the Head of the event (its payload canonicalized in
// p.canon) to head and its Tail to tail (nil: a new slice).
func (p *canonParser) event(head, tail, id, typ, actor, ts []byte) Canonical {
	if head == nil {
		head = make([]byte, 0, len(p.canon)+len(id)+len(typ)+len(actor)+64)
	}
	head = append(head, `{"actor_id":`...)
	if len(actor) == 0 {
		head = append(head, "null"...)
	} else {
		head = appendPyString(head, actor)
	}
	head = append(head, `,"event_id":`...)
	head = appendPyString(head, id)
	head = append(head, `,"event_type":`...)
	head = appendPyString(head, typ)
	head = append(head, `,"payload":`...)
	head = append(head, p.canon...)
	head = append(head, `,"prev_hash":`...)
	if tail == nil {
		tail = make([]byte, 0, 56)
	}
	tail = append(tail, `,"timestamp":`...)
	p.iso = appendIsoFormat(p.iso[:0], ts)
	tail = appendPyString(tail, p.iso)
	tail = append(tail, '}')
	return Canonical{Head: head, Tail: tail}
}

// IsoFormat writes an event timestamp as Python's datetime.isoformat()
// writes the datetime pydantic parses from it: at microsecond precision
// (truncated), the fraction only when not zero, the zone as "+hh:mm" and
// none for a timestamp without one. A timestamp that parses as neither is
// kept as it is.
func IsoFormat(ts string) string { return string(appendIsoFormat(nil, []byte(ts))) }

func appendIsoFormat(b, ts []byte) []byte {
	// The form Leviathan writes, YYYY-MM-DDTHH:MM:SS[.f…]Z, without
	// parsing: digits are kept as they are (an impossible date, which
	// Python would refuse, hashes as written).
	if n := len(ts); n >= 20 && ts[n-1] == 'Z' && ts[4] == '-' && ts[7] == '-' && ts[10] == 'T' && ts[13] == ':' && ts[16] == ':' && allDigits(ts[:4], ts[5:7], ts[8:10], ts[11:13], ts[14:16], ts[17:19]) {
		frac := ts[19 : n-1]
		if len(frac) == 0 || frac[0] == '.' && len(frac) > 1 && allDigits(frac[1:]) {
			b = append(b, ts[:19]...)
			if len(frac) > 1 {
				us := [6]byte{'0', '0', '0', '0', '0', '0'}
				copy(us[:], frac[1:min(len(frac), 7)])
				if string(us[:]) != "000000" {
					b = append(b, '.')
					b = append(b, us[:]...)
				}
			}
			return append(b, "+00:00"...)
		}
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	naive := false
	if err != nil {
		var nerr error
		for _, layout := range []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"} {
			if t, nerr = time.Parse(layout, string(ts)); nerr == nil {
				break
			}
		}
		if nerr != nil {
			return append(b, ts...)
		}
		naive = true
	}
	b = t.AppendFormat(b, "2006-01-02T15:04:05")
	if us := t.Nanosecond() / 1000; us != 0 {
		b = fmt.Appendf(b, ".%06d", us)
	}
	if !naive {
		if _, off := t.Zone(); off == 0 {
			b = append(b, "+00:00"...)
		} else {
			b = t.AppendFormat(b, "-07:00")
		}
	}
	return b
}

func allDigits(parts ...[]byte) bool {
	for _, p := range parts {
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

var errCanonSyntax = errors.New("invalid JSON")

// strSafe marks the bytes a string's canonical form keeps as they are.
var strSafe = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// maxCanonDepth bounds nesting, as the stream's bytes may be hostile.
const maxCanonDepth = 200

// canonParser reads JSON and writes it in canonical form.
type canonParser struct {
	data []byte
	i    int
	// ms holds the members of the objects being read (each object's
	// above the ones of the objects around it); bufs[d] their canonical
	// values at depth d, until the object is written out sorted.
	ms    []member
	order []int32 // sortMembers
	bufs  [][]byte

	// visitor, when set, is told of the members read (BeginVisit);
	// escaped says canonString met an escape since it was last cleared.
	visitor Visitor
	escaped bool

	// The envelope's fields (in data, or decoded), its payload
	// canonicalized, and the buffers of the canonical form.
	id, typ, actor, ts []byte
	canon, head, iso   []byte
	tailBuf            []byte
}

// member is an object's member: its key (decoded) and its canonical value
// at bufs[depth][vs:ve].
type member struct {
	key       []byte
	pre       uint64 // keyPrefix(key)
	printable bool   // key is its own canonical form
	vs, ve    int
}

// keyPrefix is the first eight bytes of a key, big endian, zero-padded:
// two keys whose prefixes differ compare as their prefixes do.
func keyPrefix(k []byte) uint64 {
	if len(k) >= 8 {
		return binary.BigEndian.Uint64(k)
	}
	var b [8]byte
	copy(b[:], k)
	return binary.BigEndian.Uint64(b[:])
}

// compareKeys orders members by key as Python's sort does (by code point:
// the order of their UTF-8).
func compareKeys(x, y *member) int {
	if x.pre != y.pre {
		if x.pre < y.pre {
			return -1
		}
		return 1
	}
	return bytes.Compare(x.key, y.key)
}

// sortMembers sets p.order to the indexes of ms sorted by key, stably.
// Indexes move, not members: a member holds a pointer, and moving one
// while the collector runs costs a write barrier.
func (p *canonParser) sortMembers(ms []member) []int32 {
	order := p.order[:0]
	for i := range ms {
		order = append(order, int32(i))
	}
	if len(order) <= 16 { // the usual payload: insertion sort, stable
		for i := 1; i < len(order); i++ {
			for j := i; j > 0 && compareKeys(&ms[order[j-1]], &ms[order[j]]) > 0; j-- {
				order[j-1], order[j] = order[j], order[j-1]
			}
		}
	} else {
		slices.SortStableFunc(order, func(x, y int32) int { return compareKeys(&ms[x], &ms[y]) })
	}
	p.order = order
	return order
}

func (p *canonParser) skip() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *canonParser) literal(s string) bool {
	if strings.HasPrefix(string(p.data[p.i:min(len(p.data), p.i+len(s))]), s) {
		p.i += len(s)
		return true
	}
	return false
}

// members calls f for each member of the object at p.i with p.i at its
// value (start is the same position), which f must consume.
func (p *canonParser) members(f func(key []byte, printable bool, start int) error) error {
	p.i++ // '{'
	p.skip()
	if p.i < len(p.data) && p.data[p.i] == '}' {
		p.i++
		return nil
	}
	for {
		p.skip()
		key, printable, err := p.strBytes()
		if err != nil {
			return err
		}
		p.skip()
		if p.i >= len(p.data) || p.data[p.i] != ':' {
			return errCanonSyntax
		}
		p.i++
		p.skip()
		if err := f(key, printable, p.i); err != nil {
			return err
		}
		p.skip()
		if p.i >= len(p.data) {
			return errCanonSyntax
		}
		switch p.data[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return nil
		default:
			return errCanonSyntax
		}
	}
}

// strBytes reads the string at p.i, decoded: in place when it has no
// escape. printable says it is also its own canonical form: nothing
// outside ' '..'~' and no escape.
func (p *canonParser) strBytes() (s []byte, printable bool, err error) {
	if p.i >= len(p.data) || p.data[p.i] != '"' {
		return nil, false, errCanonSyntax
	}
	start := p.i
	plain, ascii := true, true
	for p.i++; ; p.i++ {
		// Eight bytes at a time over the common case: printable ASCII
		// other than '"' and '\\'.
		for p.i+8 <= len(p.data) {
			if m := strUnsafe(binary.LittleEndian.Uint64(p.data[p.i:])); m != 0 {
				p.i += bits.TrailingZeros64(m) / 8
				break
			}
			p.i += 8
		}
		if p.i >= len(p.data) {
			return nil, false, errCanonSyntax
		}
		c := p.data[p.i]
		switch {
		case strSafe[c]:
		case c == '"':
			p.i++
			if plain {
				return p.data[start+1 : p.i-1], ascii, nil
			}
			var s string
			if err := json.Unmarshal(p.data[start:p.i], &s); err != nil {
				return nil, false, errCanonSyntax
			}
			return []byte(s), false, nil
		case c == '\\':
			plain = false
			p.i++
		case c < 0x20:
			return nil, false, errCanonSyntax
		case c >= 0x7f:
			plain = plain && c == 0x7f // DEL needs no decoding, only escaping
			ascii = false
		}
	}
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// strUnsafe flags (with its high bit) the lowest byte of w, read little
// endian, that strSafe does not mark: below ' ', '"', '\\', DEL or above.
// Each test may also flag bytes above one it rightly flags, never below,
// so the lowest flag is exact.
func strUnsafe(w uint64) uint64 {
	below := (w - ones*0x20) &^ w & highs
	quote, bslash, del := w^(ones*'"'), w^(ones*'\\'), w^(ones*0x7f)
	return below | (quote-ones)&^quote&highs | (bslash-ones)&^bslash&highs | (del-ones)&^del&highs | w&highs
}

// value appends the canonical form of the value at p.i to b (b nil: only
// skips it).
func (p *canonParser) value(b []byte, depth int) ([]byte, error) {
	if depth > maxCanonDepth {
		return nil, errors.New("nested too deeply")
	}
	p.skip()
	if p.i >= len(p.data) {
		return nil, errCanonSyntax
	}
	switch c := p.data[p.i]; {
	case c == '{':
		if b == nil { // only skipping
			err := p.members(func([]byte, bool, int) error {
				_, err := p.value(nil, depth+1)
				return err
			})
			return nil, err
		}
		base := len(p.ms)
		for len(p.bufs) <= depth+1 {
			p.bufs = append(p.bufs, make([]byte, 0, 256)) // not nil: nil only skips
		}
		err := p.members(func(key []byte, printable bool, _ int) error {
			vs := len(p.bufs[depth+1])
			v, err := p.value(p.bufs[depth+1], depth+1)
			if err != nil {
				return err
			}
			p.bufs[depth+1] = v
			p.ms = append(p.ms, member{key: key, pre: keyPrefix(key), printable: printable, vs: vs, ve: len(v)})
			return nil
		})
		if err != nil {
			return nil, err
		}
		ms := p.ms[base:]
		// Python sorts str keys by code point: the order of their UTF-8.
		// A repeated key keeps its last value, as a dict does.
		order := p.sortMembers(ms)
		vals := p.bufs[depth+1]
		b = append(b, '{')
		first := true
		for i, k := range order {
			m := &ms[k]
			if i+1 < len(order) && bytes.Equal(m.key, ms[order[i+1]].key) {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			if m.printable {
				b = append(b, '"')
				b = append(b, m.key...)
				b = append(b, '"')
			} else {
				b = appendPyString(b, m.key)
			}
			b = append(b, ':')
			b = append(b, vals[m.vs:m.ve]...)
		}
		b = append(b, '}')
		p.ms = p.ms[:base]
		p.bufs[depth+1] = p.bufs[depth+1][:0]
		return b, nil
	case c == '[':
		p.i++
		p.skip()
		if b != nil {
			b = append(b, '[')
		}
		if p.i < len(p.data) && p.data[p.i] == ']' {
			p.i++
			if b != nil {
				b = append(b, ']')
			}
			return b, nil
		}
		for n := 0; ; n++ {
			if n > 0 && b != nil {
				b = append(b, ',')
			}
			var err error
			if b, err = p.value(b, depth+1); err != nil {
				return nil, err
			}
			p.skip()
			if p.i >= len(p.data) {
				return nil, errCanonSyntax
			}
			if p.data[p.i] == ']' {
				p.i++
				if b != nil {
					b = append(b, ']')
				}
				return b, nil
			}
			if p.data[p.i] != ',' {
				return nil, errCanonSyntax
			}
			p.i++
		}
	case c == '"':
		start := p.i
		s, printable, err := p.strBytes()
		switch {
		case err != nil || b == nil:
			return nil, err
		case printable:
			return append(b, p.data[start:p.i]...), nil
		}
		return appendPyString(b, s), nil
	case c == 't' || c == 'f' || c == 'n':
		for _, lit := range []string{"true", "false", "null"} {
			if p.literal(lit) {
				if b != nil {
					b = append(b, lit...)
				}
				return b, nil
			}
		}
		return nil, errCanonSyntax
	case c == '-' || c >= '0' && c <= '9':
		start := p.i
		for p.i < len(p.data) && strings.IndexByte("+-0123456789.eE", p.data[p.i]) >= 0 {
			p.i++
		}
		lit := string(p.data[start:p.i])
		if !json.Valid(p.data[start:p.i]) {
			return nil, errCanonSyntax
		}
		if b == nil {
			return nil, nil
		}
		if !strings.ContainsAny(lit, ".eE") {
			if lit == "-0" { // Python's int("-0") is 0
				lit = "0"
			}
			return append(b, lit...), nil
		}
		f, _ := strconv.ParseFloat(lit, 64) // out of range: ±Inf, as Python has it
		return appendPyFloat(b, f), nil
	}
	return nil, errCanonSyntax
}

// appendPyString appends s as Python's json.dumps writes a str with
// ensure_ascii: the short escapes, \u00XX for other control characters,
// and \uXXXX (UTF-16, lowercase hex) for everything beyond ASCII.
func appendPyString[S ~string | ~[]byte](b []byte, s S) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	plain := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			plain = false
			break
		}
	}
	if plain {
		b = append(b, s...)
		return append(b, '"')
	}
	for _, r := range string(s) {
		switch {
		case r == '"':
			b = append(b, '\\', '"')
		case r == '\\':
			b = append(b, '\\', '\\')
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == '\t':
			b = append(b, '\\', 't')
		case r == '\b':
			b = append(b, '\\', 'b')
		case r == '\f':
			b = append(b, '\\', 'f')
		case r < 0x20 || r > 0x7e:
			u := func(v rune) {
				b = append(b, '\\', 'u', hexDigits[v>>12&0xf], hexDigits[v>>8&0xf], hexDigits[v>>4&0xf], hexDigits[v&0xf])
			}
			if r > 0xffff {
				r -= 0x10000
				u(0xd800 + r>>10)
				u(0xdc00 + r&0x3ff)
			} else {
				u(r)
			}
		default:
			b = append(b, byte(r))
		}
	}
	return append(b, '"')
}

// appendPyFloat appends f as Python's repr(float) writes it: the shortest
// digits that round-trip, in fixed notation with at least one decimal
// when the decimal point falls within (-4, 16], else as d.ddde±XX.
func appendPyFloat(b []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(b, "Infinity"...)
	case math.IsInf(f, -1):
		return append(b, "-Infinity"...)
	case math.IsNaN(f):
		return append(b, "NaN"...)
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // -d.ddde±XX
	if e[0] == '-' {
		b = append(b, '-')
		e = e[1:]
	}
	mant, exp, _ := strings.Cut(e, "e")
	x, _ := strconv.Atoi(exp)
	digits := strings.Replace(mant, ".", "", 1)
	decpt := x + 1 // value = 0.digits × 10^decpt
	if decpt <= -4 || decpt > 16 {
		b = append(b, digits[0])
		if len(digits) > 1 {
			b = append(b, '.')
			b = append(b, digits[1:]...)
		}
		b = append(b, 'e')
		if x < 0 {
			b = append(b, '-')
			x = -x
		} else {
			b = append(b, '+')
		}
		if x < 10 {
			b = append(b, '0')
		}
		return strconv.AppendInt(b, int64(x), 10)
	}
	switch {
	case decpt <= 0:
		b = append(b, "0."...)
		b = append(b, strings.Repeat("0", -decpt)...)
		b = append(b, digits...)
	case decpt >= len(digits):
		b = append(b, digits...)
		b = append(b, strings.Repeat("0", decpt-len(digits))...)
		b = append(b, ".0"...)
	default:
		b = append(b, digits[:decpt]...)
		b = append(b, '.')
		b = append(b, digits[decpt:]...)
	}
	return b
}

// HashHex is a chain hash as the log shows it.
func HashHex(h [sha256.Size]byte) string { return hex.EncodeToString(h[:]) }
