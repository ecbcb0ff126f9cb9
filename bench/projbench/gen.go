package main

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/events/eventgen"
)

// The benchmark's stream is eventgen's, with two changes that make it more
// like a real one: attempt ids as `leviathan submit` makes them (22
// characters rather than eventgen's 9) and attempts spread over 16
// targets rather than 4. Everything else (outcomes, payloads, timestamps,
// actors) is eventgen's.

// benchTargets are the targets the benchmark's attempts are spread over.
var benchTargets = []string{
	"demo", "radix", "orbit", "atlas", "ember", "quill", "harbor", "lumen",
	"cobalt", "sierra", "tundra", "vertex", "willow", "zephyr", "nimbus", "prism",
}

// useBenchTargets makes eventgen spread attempts over benchTargets (it
// reads the exported eventgen.Targets) and returns how to undo it.
func useBenchTargets() (restore func()) {
	old := eventgen.Targets
	eventgen.Targets = benchTargets
	return func() { eventgen.Targets = old }
}

// submitID is the attempt id of attempt i, of the shape `leviathan submit`
// gives an attempt when none is named (cmd/leviathan/submit.go, and
// retry.go the same): "a-", the UTC time as 20060102-150405, "-" and eight
// hex digits (four random bytes), 26 characters in all, such as
// "a-20261126-120003-5f1c09ab". The CLI lives in package main and exports
// nothing, so the format is repeated here. The time is the attempt's own
// (eventgen's: Base plus 3 s per attempt, so it alone is unique) and the
// eight digits come from a hash of i rather than from crypto/rand, so the
// stream is the same on every run.
func submitID(i int) string {
	at := eventgen.Base.Add(time.Duration(i) * 3 * time.Second)
	h := fnv.New32a()
	_, _ = h.Write(strconv.AppendInt(nil, int64(i), 10))
	return "a-" + at.UTC().Format("20060102-150405") + "-" + fmt.Sprintf("%08x", h.Sum32())
}

// benchAttempt returns eventgen's events of attempt i with outcome o, with
// the attempt id replaced by submitID(i) everywhere it occurs (envelope,
// payload: attempt_id, branch name, snapshot names) and the event ids
// derived from the new id, as events.New derives them.
func benchAttempt(i int, o eventgen.Outcome) []events.Envelope {
	evs := eventgen.Attempt(i, o)
	if len(evs) == 0 {
		return evs
	}
	// eventgen's id ("a-" and 7 digits) cannot occur by chance in the
	// payloads: the other strings are hex hashes (no '-'), names and URLs
	// without "a-" and digits.
	old, id := []byte(evs[0].AttemptID), submitID(i)
	for k := range evs {
		e := &evs[k]
		e.AttemptID = id
		e.EventID = events.EventID(id, e.EventType)
		e.Payload = bytes.ReplaceAll(e.Payload, old, []byte(id))
	}
	return evs
}
