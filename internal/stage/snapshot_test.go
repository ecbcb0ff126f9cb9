package stage

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
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
	// Objects written by the object store and by PutSnapshot.
	writers := map[string]func(name string, data []byte) error{
		"object store": func(name string, data []byte) error {
			_, err := res.Snapshots.PutBytes(ctx, name, data)
			return err
		},
		"PutSnapshot": func(name string, data []byte) error { return res.PutSnapshot(ctx, name, data) },
	}
	for w, put := range writers {
		for _, size := range []int{0, 1, 3000, 128 << 10, 128<<10 + 1, 1 << 20} {
			data := make([]byte, size)
			_, _ = rand.Read(data)
			name := "a/" + string(rune('a'+size%26))
			if err := put(name, data); err != nil {
				t.Fatalf("%s, %d bytes: %v", w, size, err)
			}
			got, err := res.Snapshot(ctx, name)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s, %d bytes: got %d bytes, %v", w, size, len(got), err)
			}
			// The object store reads it too, with its size and digest.
			info, err := res.Snapshots.GetInfo(ctx, name)
			if err != nil || info.Size != uint64(size) || info.Digest != objectDigest(data) {
				t.Fatalf("%s, %d bytes: object store info %+v, %v", w, size, info, err)
			}
			if got, err := res.Snapshots.GetBytes(ctx, name); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s, %d bytes: object store read %d bytes, %v", w, size, len(got), err)
			}
			// Written again, the name holds the new bytes.
			data2 := append([]byte("v2"), data...)
			if err := put(name, data2); err != nil {
				t.Fatal(err)
			}
			if got, err := res.Snapshot(ctx, name); err != nil || !bytes.Equal(got, data2) {
				t.Fatalf("%s, %d bytes, rewritten: got %d bytes, %v", w, size, len(got), err)
			}
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

// TestPutSnapshotAgainKeepsOneChunk: a name PutSnapshot writes again (a
// redelivery) holds its new chunk alone, not the old one until the
// bucket's TTL; its info says where that chunk is, for the object store.
func TestPutSnapshotAgainKeepsOneChunk(t *testing.T) {
	res, _ := setup(t)
	ctx := context.Background()
	names := []string{"a1/base.pack", "a1/backlog.yaml", "a2/base.pack"}
	for round := range 3 {
		for _, name := range names {
			if err := res.PutSnapshot(ctx, name, []byte(fmt.Sprint(name, " round ", round))); err != nil {
				t.Fatal(err)
			}
		}
	}
	info, err := res.snapshotStream.Info(ctx, jetstream.WithSubjectFilter("$O."+SnapshotBucket+".C.>"))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.State.Subjects) != len(names) {
		t.Fatalf("chunk subjects %v, want one for each of %d names", info.State.Subjects, len(names))
	}
	for subject, n := range info.State.Subjects {
		if n != 1 {
			t.Errorf("%s holds %d chunks, want 1", subject, n)
		}
	}
	for _, name := range names {
		want := fmt.Sprint(name, " round 2")
		if got, err := res.Snapshot(ctx, name); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want)
		}
		if got, err := res.Snapshots.GetBytes(ctx, name); err != nil || string(got) != want {
			t.Errorf("%s through the object store: %q, %v; want %q", name, got, err, want)
		}
	}
}

// BenchmarkPutSnapshot: one pack of a minimal fetch's size, stored by the
// object store's Put and by PutSnapshot (embedded server, one connection).
func BenchmarkPutSnapshot(b *testing.B) {
	_, js := natstest.Connect(b, natstest.Run(b))
	ctx := context.Background()
	res, err := Ensure(ctx, js, ResourceConfig{})
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 2500)
	_, _ = rand.Read(data)
	b.Run("object-store", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, err := res.Snapshots.PutBytes(ctx, fmt.Sprint("os/", i), data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("PutSnapshot", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if err := res.PutSnapshot(ctx, fmt.Sprint("ps/", i), data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
