package stage

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Snapshot reads the object called name from the snapshot bucket. An
// object of one chunk (every backlog, and the pack of a minimal fetch) is
// read with two direct gets on the bucket's stream, its info and its
// chunk, checked against the info's size and SHA-256 digest, instead of
// the object store's ordered consumer, which costs a consumer's creation
// and deletion on every read (0.8 ms against 0.1 ms measured on
// loopback, three times per attempt). Anything else (several chunks, a
// link, a chunk that does not match) is read through the object store.
func (r *Resources) Snapshot(ctx context.Context, name string) ([]byte, error) {
	if r.snapshotStream == nil {
		return r.Snapshots.GetBytes(ctx, name)
	}
	info, err := r.Snapshots.GetInfo(ctx, name)
	if err != nil {
		return nil, err
	}
	if info.Chunks != 1 || (info.Opts != nil && info.Opts.Link != nil) {
		return r.Snapshots.GetBytes(ctx, name)
	}
	m, err := r.snapshotStream.GetLastMsgForSubject(ctx, "$O."+SnapshotBucket+".C."+info.NUID)
	if err != nil || uint64(len(m.Data)) != info.Size || objectDigest(m.Data) != info.Digest {
		return r.Snapshots.GetBytes(ctx, name)
	}
	return m.Data, nil
}

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
// object: a round trip and a subscription more, twice per attempt. A name
// written again (a redelivery after a crash) leaves its previous chunk to
// the bucket's TTL. Anything larger or empty goes through the object
// store.
func (r *Resources) PutSnapshot(ctx context.Context, name string, data []byte) error {
	if r.snapshotStream == nil || len(data) == 0 || len(data) > snapshotChunk {
		_, err := r.Snapshots.PutBytes(ctx, name, data)
		return err
	}
	id := nuid.Next()
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
	// The server stores a connection's messages in the order sent: the
	// chunk is in the bucket before the info that names it.
	chunkAck, err := r.JS.PublishMsgAsync(&nats.Msg{Subject: "$O." + SnapshotBucket + ".C." + id, Data: data})
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
