package stage

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/internal/natstest"
)

// TestSnapshotReadsWhatWasStored: the direct read of one-chunk objects
// and the object store's read of larger ones give back the bytes stored,
// and a missing object is the object store's not-found.
func TestSnapshotReadsWhatWasStored(t *testing.T) {
	ns := natstest.Run(t)
	_, js := natstest.Connect(t, ns)
	ctx := context.Background()
	res, err := Ensure(ctx, js, ResourceConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if res.snapshotStream == nil {
		t.Fatal("no snapshot stream: Snapshot would never read directly")
	}
	for _, size := range []int{0, 1, 3000, 128 << 10, 128<<10 + 1, 1 << 20} {
		data := make([]byte, size)
		_, _ = rand.Read(data)
		name := "a/" + string(rune('a'+size%26))
		info, err := res.Snapshots.PutBytes(ctx, name, data)
		if err != nil {
			t.Fatal(err)
		}
		got, err := res.Snapshot(ctx, name)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes (%d chunks): got %d bytes, %v", size, info.Chunks, len(got), err)
		}
		// Written again, the name holds the new bytes.
		data2 := append([]byte("v2"), data...)
		if _, err := res.Snapshots.PutBytes(ctx, name, data2); err != nil {
			t.Fatal(err)
		}
		if got, err := res.Snapshot(ctx, name); err != nil || !bytes.Equal(got, data2) {
			t.Fatalf("%d bytes, rewritten: got %d bytes, %v", size, len(got), err)
		}
	}
	if _, err := res.Snapshot(ctx, "a/missing"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("missing object: %v", err)
	}
	if err := res.Snapshots.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := res.Snapshot(ctx, "a/b"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("deleted object: %v", err)
	}
}
