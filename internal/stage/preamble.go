package stage

import (
	"context"
	"fmt"

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
// snapshot and loads the other objects it names. Its error is the stage's answer, ready to
// return: a payload or pack that does not decode is permanent; a request
// or object that cannot be loaded now is retried.
func (r *Resources) Begin(ctx context.Context, in *Input, payload any) (Begun, error) {
	var b Begun
	if err := in.Event.DecodePayload(payload); err != nil {
		return b, Fail(events.ExecutionError, err)
	}
	req, err := r.Request(ctx, in.Ref.AttemptID)
	if err != nil {
		return b, Retry(err)
	}
	in.Ref, b.Req = req.Ref, req
	var pack string
	var objects []string
	if refs, ok := payload.(SnapshotRefs); ok {
		pack, objects = refs.SnapshotRefs()
	}
	if pack != "" {
		data, err := r.Snapshot(ctx, pack)
		if err != nil {
			return b, Retry(fmt.Errorf("load snapshot %s: %w", pack, err))
		}
		if b.Repo, err = gitx.OpenPack(data); err != nil {
			return b, Fail(events.ExecutionError, fmt.Errorf("open snapshot %s: %w", pack, err))
		}
	}
	for _, name := range objects {
		data, err := r.Snapshot(ctx, name)
		if err != nil {
			return b, Retry(fmt.Errorf("load snapshot %s: %w", name, err))
		}
		b.Objects = append(b.Objects, data)
	}
	return b, nil
}
