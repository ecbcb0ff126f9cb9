package stage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/leviathan-dev/leviathan/events"
)

// Names of the NATS resources every service shares (DESIGN.md §3).
const (
	StreamName     = "LEVIATHAN_EVENTS"
	SnapshotBucket = "leviathan-snapshots"
	AttemptsBucket = "leviathan-attempts"
	ConfigBucket   = "leviathan-config"
	LocksBucket    = "leviathan-locks"
)

// ResourceConfig sizes the shared resources. The zero value is a working
// single-node configuration.
type ResourceConfig struct {
	// Replicas of the stream, buckets and consumers (1 dev, 3 prod).
	Replicas int
	// MaxAge of events in the stream (default 90 days).
	MaxAge time.Duration
	// SnapshotTTL of repository snapshots (default 24 h).
	SnapshotTTL time.Duration
	// Duplicates is the stream's de-duplication window (default 20 min,
	// longer than any redelivery backoff so a republished event is dropped).
	Duplicates time.Duration
}

func (c *ResourceConfig) setDefaults() {
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.MaxAge <= 0 {
		c.MaxAge = 90 * 24 * time.Hour
	}
	if c.SnapshotTTL <= 0 {
		c.SnapshotTTL = 24 * time.Hour
	}
	if c.Duplicates <= 0 {
		c.Duplicates = 20 * time.Minute
	}
}

// Resources are handles on the shared stream and buckets.
type Resources struct {
	JS        jetstream.JetStream
	Stream    jetstream.Stream
	Snapshots jetstream.ObjectStore
	Attempts  jetstream.KeyValue
	Config    jetstream.KeyValue
	Locks     jetstream.KeyValue
}

// Ensure creates or updates the shared resources. Every service calls it at
// start-up, so the order services start in does not matter.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg ResourceConfig) (*Resources, error) {
	cfg.setDefaults()
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Leviathan attempt lifecycle events",
		Subjects:    []string{events.StreamSubjects},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      cfg.MaxAge,
		Duplicates:  cfg.Duplicates,
		Replicas:    cfg.Replicas,
		// Direct gets let the projector catch up with batched reads.
		AllowDirect: true,
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamName, err)
	}
	snaps, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      SnapshotBucket,
		Description: "repository snapshots of running attempts",
		TTL:         cfg.SnapshotTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", SnapshotBucket, err)
	}
	attempts, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      AttemptsBucket,
		Description: "attempt id -> stream sequence of the request that claimed it",
		TTL:         cfg.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", AttemptsBucket, err)
	}
	conf, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      ConfigBucket,
		Description: "per-target policy (JSON)",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", ConfigBucket, err)
	}
	locks, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      LocksBucket,
		Description: "leases that serialize work across replicas (Resources.Lock)",
		TTL:         LockTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", LocksBucket, err)
	}
	return &Resources{JS: js, Stream: st, Snapshots: snaps, Attempts: attempts, Config: conf, Locks: locks}, nil
}

// ErrDuplicate is returned by Claim when another request already claimed
// the attempt id.
var ErrDuplicate = errors.New("attempt id already claimed by another request")

// Claim records that the request at stream sequence seq owns attemptID.
// A redelivery of the same message (same seq) may carry on; any other
// message with that id gets ErrDuplicate.
func (r *Resources) Claim(ctx context.Context, attemptID string, seq uint64) error {
	val := []byte(strconv.FormatUint(seq, 10))
	if _, err := r.Attempts.Create(ctx, attemptID, val); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("claim attempt %s: %w", attemptID, err)
	}
	owner, err := r.claimedSeq(ctx, attemptID)
	if err != nil {
		return err
	}
	if owner != seq {
		return fmt.Errorf("%w (request at sequence %d)", ErrDuplicate, owner)
	}
	return nil
}

func (r *Resources) claimedSeq(ctx context.Context, attemptID string) (uint64, error) {
	e, err := r.Attempts.Get(ctx, attemptID)
	if err != nil {
		return 0, fmt.Errorf("read claim of attempt %s: %w", attemptID, err)
	}
	seq, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("claim of attempt %s is corrupt: %w", attemptID, err)
	}
	return seq, nil
}

// Request loads the attempt.requested message that claimed attemptID, so
// later stages know the task and target without copying them into every
// event.
func (r *Resources) Request(ctx context.Context, attemptID string) (*events.Request, error) {
	seq, err := r.claimedSeq(ctx, attemptID)
	if err != nil {
		return nil, err
	}
	m, err := r.Stream.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("load request of attempt %s (seq %d): %w", attemptID, seq, err)
	}
	return events.ParseRequest(m.Data, attemptID)
}
