package stage

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Snapshot reads the object called name from the snapshot bucket. An
// object of one chunk (every backlog, and the pack of a minimal fetch) is
// read with two direct gets on the bucket's stream, its info and its
// chunk, checked against the info's size and SHA-256 digest, instead of
// the object store's ordered consumer, which costs a consumer's creation
// and deletion on every read (0.8 ms against 0.1 ms measured on
// loopback, three times per attempt). The two gets are sent together when
// PutSnapshot wrote the object: its chunk's subject follows from the name
// (chunkID). Anything else (several chunks, a link, a chunk that does not
// match) is read through the object store.
func (r *Resources) Snapshot(ctx context.Context, name string) ([]byte, error) {
	if r.snapshotStream == nil {
		return r.Snapshots.GetBytes(ctx, name)
	}
	id := chunkID(name)
	var chunk *jetstream.RawStreamMsg
	var chunkErr error
	var wg sync.WaitGroup
	wg.Go(func() { chunk, chunkErr = r.snapshotStream.GetLastMsgForSubject(ctx, chunkSubject(id)) })
	info, err := r.Snapshots.GetInfo(ctx, name)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if info.Chunks != 1 || (info.Opts != nil && info.Opts.Link != nil) {
		return r.Snapshots.GetBytes(ctx, name)
	}
	if info.NUID != id || chunkErr != nil {
		// Written by the object store (or read while being rewritten):
		// its chunk is where its info says.
		chunk, chunkErr = r.snapshotStream.GetLastMsgForSubject(ctx, chunkSubject(info.NUID))
	}
	if chunkErr != nil || uint64(len(chunk.Data)) != info.Size || objectDigest(chunk.Data) != info.Digest {
		return r.Snapshots.GetBytes(ctx, name)
	}
	return chunk.Data, nil
}

// chunkID is the NUID PutSnapshot gives the object called name: a
// function of the name, so that Snapshot can ask for the chunk before it
// has the info, and a rewrite of the name replaces the chunk (a rollup of
// its subject). 32 hex digits: never one of the object store's own
// NUIDs, which have 22 characters.
func chunkID(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:16])
}

// chunkSubject is the subject of the chunks of the object whose NUID is id.
func chunkSubject(id string) string { return "$O." + SnapshotBucket + ".C." + id }

// objectDigest is an object store's digest of data ("SHA-256=" and the
// URL-safe base64 of the sum), as jetstream.GetObjectDigestValue makes it.
func objectDigest(data []byte) string {
	sum := sha256.Sum256(data)
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])
}

// snapshotChunk is the object store's default chunk size: an object of up
// to this many bytes is one chunk.
const snapshotChunk = 128 << 10

// PutSnapshot stores data in the snapshot bucket as the object called
// name, readable by Snapshot and by the object store alike. An object of
// one chunk (every backlog, and the pack of a minimal fetch) is written
// with two publishes sent together on the stage's connection: the chunk,
// then the object's info in the object store's own format, which replaces
// the name's previous info. The object store's Put would first read the
// name's previous info, to purge its chunks afterwards, and set up a
// JetStream context with a reply subscription of its own for every
// object: a round trip and a subscription more, twice per attempt. The
// chunk's subject is the name's own (chunkID) and the chunk rolls it up,
// so a name written again (a redelivery after a crash) keeps one chunk,
// the new one. Anything larger or empty goes through the object store.
func (r *Resources) PutSnapshot(ctx context.Context, name string, data []byte) error {
	if r.snapshotStream == nil || len(data) == 0 || len(data) > snapshotChunk {
		_, err := r.Snapshots.PutBytes(ctx, name, data)
		return err
	}
	id := chunkID(name)
	meta, err := json.Marshal(jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: snapshotChunk}},
		Bucket:     SnapshotBucket, NUID: id, Size: uint64(len(data)), Chunks: 1, Digest: objectDigest(data),
	})
	if err != nil {
		return err
	}
	info := nats.NewMsg("$O." + SnapshotBucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name)))
	info.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	info.Data = meta
	chunk := nats.NewMsg(chunkSubject(id))
	chunk.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	chunk.Data = data
	// The server stores a connection's messages in the order sent: the
	// chunk is in the bucket before the info that names it.
	chunkAck, err := r.JS.PublishMsgAsync(chunk)
	if err != nil {
		return err
	}
	infoAck, err := r.JS.PublishMsgAsync(info)
	if err != nil {
		return err
	}
	if err := waitAcks(ctx, chunkAck, infoAck); err != nil {
		return fmt.Errorf("store snapshot %s: %w", name, err)
	}
	return nil
}
