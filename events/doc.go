// Package events is the contract between Leviathan's services: the event
// envelope, every event type with its payload, the subject scheme, event ids
// and the validation of an attempt request.
//
// Every event travels on the subject
//
//	leviathan.attempts.<attempt_id>.<event_type>
//
// of the LEVIATHAN_EVENTS stream, and its id is a UUIDv5 of
// (attempt_id, event_type). The id doubles as the JetStream Nats-Msg-Id, so a
// stage that is redelivered and publishes the same event again produces a
// duplicate that JetStream drops and the projector ignores.
package events
