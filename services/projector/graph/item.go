package graph

import (
	"errors"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/leviathan-dev/leviathan/events"
)

// Item is one stream message decoded for ApplyItems: a projector decodes
// messages on one goroutine (Decode) and applies them, in stream order, on
// another.
type Item struct {
	rec    record
	uid    uuid.UUID // rec.id parsed (parseUUID), when isUUID
	isUUID bool
	// Pending is the number of messages in the stream after this one.
	Pending uint64
	err     error  // not an event
	subject string // for the log line when err is set
	f       fields // the payload's fallbacks, while decodeOnce reads
}

// Decode decodes the message at stream sequence seq: an event envelope,
// or the bare request body a user published with `nats pub`. A message
// that is neither is kept as an error (Err) that ApplyItems skips.
func (it *Item) Decode(seq uint64, subject string, data []byte, at time.Time) {
	*it = Item{rec: record{seq: seq}, Pending: it.Pending}
	if !it.decodeOnce(data) {
		*it = Item{rec: record{seq: seq}, Pending: it.Pending}
		if bare, err := decodeMessage(subject, data, at, &it.rec); err != nil {
			it.err, it.subject = err, subject
		} else {
			it.rec.canonicalize(data, bare, at)
		}
	}
	it.uid, it.isUUID = parseUUID(it.rec.id)
}

// ErrNeedsSubject marks a message read without its subject (and time)
// that cannot be decoded without them.
var ErrNeedsSubject = errors.New("needs the message's subject")

// DecodeEnvelope decodes the message at seq read without its subject or
// time: only an envelope that names its attempt can be. Otherwise Err is
// ErrNeedsSubject and the message must be read again with its headers.
func (it *Item) DecodeEnvelope(seq uint64, data []byte) {
	*it = Item{rec: record{seq: seq}, Pending: it.Pending}
	if !it.decodeOnce(data) {
		*it = Item{rec: record{seq: seq}, Pending: it.Pending}
		if ok, err := decodeEnvelope(data, &it.rec); !ok || err != nil || len(it.rec.attempt) == 0 {
			it.err = ErrNeedsSubject
		} else {
			it.rec.canonicalize(data, false, time.Time{})
		}
	}
	it.uid, it.isUUID = parseUUID(it.rec.id)
}

// decodeOnce reads an envelope with a payload object in one pass for both
// its fields and its hash (events.BeginVisit; a payload not in the
// chain's canonical form, as events.New writes it, is read twice), where
// any other message is read twice (decodeEnvelope, then canonicalize).
// It gives the same record as those two (FuzzDecodeEnvelope compares
// them) and says false, having begun nothing, for any message it does not
// take.
func (it *Item) decodeOnce(data []byte) bool {
	if noOnePass {
		return false
	}
	pend, ok := events.BeginVisit(data, it)
	r := &it.rec
	if ok {
		it.f.resolve(r)
	}
	if !ok || len(r.typ) == 0 || len(r.attempt) == 0 {
		if ok {
			pend.Finish(nil) // hands the hash's state back
		}
		return false
	}
	r.pending, r.chain = pend, true
	if events.Type(r.typ) == events.AttemptRequested {
		if _, what := events.FindCredential(data); what != "" {
			pend.Finish(nil)
			r.pending, r.chain = events.Pending{}, false
		}
	}
	return true
}

// noOnePass turns decodeOnce off (the tests compare both ways).
var noOnePass = false

// Member takes the members events.BeginVisit reads (decodeOnce): the
// envelope's, as decodeEnvelope reads them, and the payload's, each in
// canonical form, as payloadAt reads them.
func (it *Item) Member(level int, key, value []byte, plain bool) {
	r := &it.rec
	if level > 0 {
		str := plainCanonical
		if !plain {
			str = stringAt
		}
		_, _ = r.payloadMember(&it.f, key, value, 0, str)
		return
	}
	if !plain {
		value = fixUTF8(value) // decoded, as stringAt decodes
	}
	switch string(key) {
	case "event_id":
		r.id = value
	case "event_type":
		r.typ = value
	case "timestamp":
		r.ts = parseTime(value)
	case "actor_id":
		r.actor = value
	case "attempt_id":
		r.attempt = value
	case "target_id":
		r.target = value
	}
}

// Payload reads a payload that is not in canonical form, at data[i], for
// events.BeginVisit (decodeOnce), as decodeEnvelope reads it.
func (it *Item) Payload(data []byte, i int) bool {
	it.rec.clearPayload()
	it.f = fields{}
	_, err := payloadAt(data, i, &it.rec, &it.f)
	return err == nil
}

// plainCanonical is stringAt for a whole value in canonical form without
// an escape: a string is its contents in quotes.
func plainCanonical(data []byte, i int) ([]byte, int, error) {
	if i < len(data) && data[i] == '"' {
		return data[i+1 : len(data)-1], len(data), nil
	}
	return nil, len(data), nil
}

// Seq is the message's stream sequence.
func (it *Item) Seq() uint64 { return it.rec.seq }

// Err says why the message is not an event; nil when it is one.
func (it *Item) Err() error { return it.err }

// Subject is the message's subject when Err is set (for a log line).
func (it *Item) Subject() string { return it.subject }

// decodeMessage decodes a stream message into r: an envelope, or the bare
// request body a user published with `nats pub`, which gets its attempt id
// and type from the subject and an id from its sequence (two bare copies
// of one request are two messages, and both show).
func decodeMessage(subject string, data []byte, at time.Time, r *record) (bare bool, err error) {
	isEnvelope, err := decodeEnvelope(data, r)
	if err != nil && !errors.Is(err, errNotObject) {
		return false, err
	}
	attemptID, typ, serr := events.ParseSubject(subject)
	if isEnvelope {
		if len(r.attempt) == 0 && serr == nil {
			r.attempt = []byte(attemptID)
		}
		return false, nil
	}
	if serr != nil || typ != events.AttemptRequested || err != nil {
		return false, errors.New("neither an event envelope nor a bare request")
	}
	if err := decodeBareRequest(data, r); err != nil {
		return false, err
	}
	r.id = []byte("seq-" + strconv.FormatUint(r.seq, 10))
	r.typ, r.attempt, r.actor = []byte(typ), []byte(attemptID), []byte("user:nats")
	r.ts = at.UTC().UnixNano()
	return true, nil
}
