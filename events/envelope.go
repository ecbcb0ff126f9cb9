package events

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// SubjectPrefix is the first two tokens of every event subject.
const SubjectPrefix = "leviathan.attempts"

// StreamSubjects are the attempts' events in the LEVIATHAN_EVENTS stream.
const StreamSubjects = SubjectPrefix + ".>"

// RecordPrefix is the subject prefix of record events: what outside
// producers report that belongs to no attempt (target.registered,
// task.created, artifact.created), on leviathan.records.<event_type>. No
// stage consumes them.
const RecordPrefix = "leviathan.records"

// RecordSubjects are the record events in the stream.
const RecordSubjects = RecordPrefix + ".>"

// AllStreamSubjects is what the LEVIATHAN_EVENTS stream captures.
var AllStreamSubjects = []string{StreamSubjects, RecordSubjects}

// RecordSubject is the subject of a record event of type t.
func RecordSubject(t Type) string { return RecordPrefix + "." + string(t) }

// Envelope is the JSON wrapper of every event. Payload holds the event's
// payload struct (see types.go) as raw JSON, so an envelope can be decoded
// without knowing its type and unknown types survive a round trip.
type Envelope struct {
	EventID   string          `json:"event_id"`
	EventType Type            `json:"event_type"`
	Timestamp time.Time       `json:"timestamp"`
	ActorID   string          `json:"actor_id"`
	AttemptID string          `json:"attempt_id"`
	TargetID  string          `json:"target_id"`
	Payload   json.RawMessage `json:"payload"`
}

// namespace is the UUIDv5 namespace of event ids. Changing it changes
// every event id, so it is fixed forever.
var namespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://leviathan.dev/events"))

// EventID is the deterministic id of the event of type t for an attempt.
// Attempt ids cannot contain ':', so the joined name is unambiguous.
func EventID(attemptID string, t Type) string {
	return uuid.NewSHA1(namespace, []byte(attemptID+":"+string(t))).String()
}

// DuplicateEventID is the id of the request.duplicate event about the
// request at stream sequence seq: one per ignored request, however often
// it is handled.
func DuplicateEventID(attemptID string, seq uint64) string {
	return uuid.NewSHA1(namespace, []byte(attemptID+":"+string(RequestDuplicate)+":"+strconv.FormatUint(seq, 10))).String()
}

// Subject is the subject an event of type t for an attempt is published on.
//
// An attempt id made elsewhere (ingest: upstream's ids may hold dots) is
// carried in the subject encoded (SubjectToken); ParseSubject decodes it.
func Subject(attemptID string, t Type) string {
	return SubjectPrefix + "." + SubjectToken(attemptID) + "." + string(t)
}

// SubjectToken is the subject token of an attempt id: the id itself when
// it is one of ours (ValidAttemptID), else "~" and the id's bytes in hex,
// which no id of ours can be and every id round-trips through.
func SubjectToken(attemptID string) string {
	if ValidAttemptID(attemptID) {
		return attemptID
	}
	return "~" + hex.EncodeToString([]byte(attemptID))
}

// externalIDPattern is what an attempt id made elsewhere may be: upstream's
// attempt-<task_id>-<hex>, task ids with dots or colons included.
var externalIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.:@+=-]{1,128}$`)

// ValidExternalAttemptID reports whether id may name an attempt that an
// outside producer reports (ingest): ours, or upstream's forms.
func ValidExternalAttemptID(id string) bool { return externalIDPattern.MatchString(id) }

// SubjectFilter is the subject filter that matches events of type t for all
// attempts (the filter of a stage's consumer).
func SubjectFilter(t Type) string {
	return SubjectPrefix + ".*." + string(t)
}

// AttemptSubjects matches every event of one attempt.
func AttemptSubjects(attemptID string) string {
	return SubjectPrefix + "." + SubjectToken(attemptID) + ".>"
}

// ParseSubject splits an event subject into its attempt id and event type.
func ParseSubject(subject string) (attemptID string, t Type, err error) {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix+".")
	if !ok {
		return "", "", fmt.Errorf("events: subject %q is not under %s", subject, SubjectPrefix)
	}
	attemptID, typ, ok := strings.Cut(rest, ".")
	if !ok || attemptID == "" || typ == "" {
		return "", "", fmt.Errorf("events: subject %q has no attempt id and event type", subject)
	}
	if enc, ok := strings.CutPrefix(attemptID, "~"); ok {
		b, err := hex.DecodeString(enc)
		if err != nil || !ValidExternalAttemptID(string(b)) {
			return "", "", fmt.Errorf("events: subject %q has a badly encoded attempt id", subject)
		}
		attemptID = string(b)
	}
	return attemptID, Type(typ), nil
}

// New builds the envelope of an event; ref supplies the attempt and target
// ids of the envelope. The payload is marshalled in the chain's canonical
// form (CanonicalJSON): the same JSON, with its keys sorted, which a
// projector checks and hashes as it is.
func New(t Type, actor string, ref Ref, payload any, now time.Time) (Envelope, error) {
	raw, err := json.Marshal(payload)
	if err == nil {
		raw, err = CanonicalJSON(raw)
	}
	if err != nil {
		return Envelope{}, fmt.Errorf("events: marshal %s payload: %w", t, err)
	}
	return Envelope{
		EventID:   EventID(ref.AttemptID, t),
		EventType: t,
		Timestamp: now.UTC(),
		ActorID:   actor,
		AttemptID: ref.AttemptID,
		TargetID:  ref.TargetID,
		Payload:   raw,
	}, nil
}

// Subject is the subject this envelope is published on.
func (e Envelope) Subject() string { return Subject(e.AttemptID, e.EventType) }

// Marshal encodes the envelope as JSON. '<', '>' and '&' are written as
// they are, not as \u003c and the like, which would take a canonical
// payload out of its canonical form.
func (e Envelope) Marshal() ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// ErrNotEnvelope is returned by Decode for JSON that is not an envelope,
// such as the bare request body a user publishes with `nats pub`.
var ErrNotEnvelope = errors.New("events: not an event envelope")

// Decode parses an envelope. It fails with ErrNotEnvelope when the document
// has no event_type or no payload.
func Decode(data []byte) (Envelope, error) {
	var e Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&e); err != nil {
		return Envelope{}, fmt.Errorf("events: decode envelope: %w", err)
	}
	if e.EventType == "" || len(e.Payload) == 0 {
		return Envelope{}, ErrNotEnvelope
	}
	return e, nil
}

// DecodePayload unmarshals the envelope's payload into v.
func (e Envelope) DecodePayload(v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return fmt.Errorf("events: decode %s payload: %w", e.EventType, err)
	}
	return nil
}
