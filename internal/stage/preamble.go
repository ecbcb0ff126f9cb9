package stage

import (
	"context"
	"fmt"
	"sync"

	"github.com/leviathan-dev/leviathan/events"
	"github.com/leviathan-dev/leviathan/internal/gitx"
)

// SnapshotRefs is a payload that names objects of the snapshot bucket
// (events.Fetched, events.Edited): a repository pack and other objects.
type SnapshotRefs interface {
	SnapshotRefs() (pack string, objects []string)
}

// Begun is what Begin loaded for a handler.
type Begun struct {
	// Req is the attempt's request, as clone claimed it.
	Req *events.Request
	// Repo is the repository snapshot the payload names, opened; nil when
	// it names none.
	Repo *gitx.Repo
	// Objects are the other objects the payload names, in order.
	Objects [][]byte
}

// Begin is the preamble of every stage after clone. It decodes the input
// event's payload into payload, loads the attempt's request from the
// stream (in.Ref becomes the request's, so that attempt.failed carries it
// all) and, when the payload is SnapshotRefs, opens the repository
// snapshot and loads the other objects it names. Its error is the stage's
// answer, ready to return: a payload or pack that does not decode is
// permanent; a request or object that cannot be loaded now is retried.
//
// The request and each object are read at the same time: each read is
// two round trips to the server (a claim and its message, an object's
// info and its chunk), and one after the other they were most of push's
// preamble at concurrency 1.
func (r *Resources) Begin(ctx context.Context, in *Input, payload any) (Begun, error) {
	var b Begun
	if err := in.Event.DecodePayload(payload); err != nil {
		return b, Fail(events.ExecutionError, err)
	}
	var names []string
	pack := false
	if refs, ok := payload.(SnapshotRefs); ok {
		p, objects := refs.SnapshotRefs()
		if pack = p != ""; pack {
			names = append(names, p)
		}
		names = append(names, objects...)
	}
	data := make([][]byte, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { data[i], errs[i] = r.Snapshot(ctx, name) })
	}
	req, err := r.Request(ctx, in.Ref.AttemptID)
	wg.Wait()
	if err != nil {
		return b, Retry(err)
	}
	in.Ref, b.Req = req.Ref, req
	for i, name := range names {
		if errs[i] != nil {
			return b, Retry(fmt.Errorf("load snapshot %s: %w", name, errs[i]))
		}
	}
	if pack {
		if b.Repo, err = gitx.OpenPack(data[0]); err != nil {
			return b, Fail(events.ExecutionError, fmt.Errorf("open snapshot %s: %w", names[0], err))
		}
		data = data[1:]
	}
	if len(data) > 0 {
		b.Objects = data
	}
	return b, nil
}
