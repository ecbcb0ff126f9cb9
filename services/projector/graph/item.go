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
}

// Decode decodes the message at stream sequence seq: an event envelope,
// or the bare request body a user published with `nats pub`. A message
// that is neither is kept as an error (Err) that ApplyItems skips.
func (it *Item) Decode(seq uint64, subject string, data []byte, at time.Time) {
	*it = Item{rec: record{seq: seq}, Pending: it.Pending}
	if bare, err := decodeMessage(subject, data, at, &it.rec); err != nil {
		it.err, it.subject = err, subject
	} else {
		it.rec.canonicalize(data, bare, at)
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
	if ok, err := decodeEnvelope(data, &it.rec); !ok || err != nil || len(it.rec.attempt) == 0 {
		it.err = ErrNeedsSubject
	} else {
		it.rec.canonicalize(data, false, time.Time{})
	}
	it.uid, it.isUUID = parseUUID(it.rec.id)
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
