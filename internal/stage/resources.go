package stage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
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
	// ProjectorBucket holds the projector's graph snapshot. It is not
	// leviathan-snapshots: that one has a TTL for repository snapshots,
	// and a graph snapshot must outlive any TTL.
	ProjectorBucket = "leviathan-projector"
)

// ErrNotSetUp says a stream, bucket or consumer does not exist yet: the
// set-up step (`leviathan setup`, the overlays' Job) creates them.
var ErrNotSetUp = errors.New("not set up yet (run `leviathan setup`)")

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
	// LockTTL is the leviathan-locks bucket's TTL: how long a dead
	// holder's lock lasts (default LockTTL; tests shorten it).
	LockTTL time.Duration
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
	if c.LockTTL <= 0 {
		c.LockTTL = LockTTL
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
	// snapshotStream is Snapshots' stream (nil: unknown).
	snapshotStream jetstream.Stream
	// lockRenew is how often a lock holder renews its lock: a quarter of
	// the locks bucket's TTL.
	lockRenew time.Duration
	// abandonLocks, in tests, receives for each lock taken a function that
	// stops renewing it without releasing it: the holder's death.
	abandonLocks func(die func())
	// Manage is set when this process may create and update resources
	// (it ran Setup): its runners then create or update their consumers.
	// Without it they bind to the consumers Setup made.
	Manage bool
}

// Setup creates or updates the shared stream and buckets: the one-shot
// set-up step, run by `leviathan setup` (a Job on Kubernetes) with a NATS
// user that may manage JetStream, or by a process that runs everything
// (`leviathan dev`). It is idempotent.
func Setup(ctx context.Context, js jetstream.JetStream, cfg ResourceConfig) error {
	cfg.setDefaults()
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "Leviathan attempt lifecycle events",
		Subjects:    events.AllStreamSubjects,
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		MaxAge:      cfg.MaxAge,
		Duplicates:  cfg.Duplicates,
		Replicas:    cfg.Replicas,
		// Direct gets let the projector catch up with batched reads.
		AllowDirect: true,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", StreamName, err)
	}
	for _, obs := range []jetstream.ObjectStoreConfig{
		{Bucket: SnapshotBucket, Description: "repository snapshots of running attempts", TTL: cfg.SnapshotTTL},
		{Bucket: ProjectorBucket, Description: "the projector's graph snapshot and its stream sequence"},
	} {
		obs.Storage, obs.Replicas = jetstream.FileStorage, cfg.Replicas
		if _, err := js.CreateOrUpdateObjectStore(ctx, obs); err != nil {
			return fmt.Errorf("object store %s: %w", obs.Bucket, err)
		}
	}
	for _, kv := range []jetstream.KeyValueConfig{
		{Bucket: AttemptsBucket, Description: "attempt id -> stream sequence of the request that claimed it", TTL: cfg.MaxAge},
		{Bucket: ConfigBucket, Description: "per-target policy (JSON)", History: 5},
		{Bucket: LocksBucket, Description: "per-repository locks and forge pacing turns of the pr replicas", TTL: cfg.LockTTL},
	} {
		kv.Storage, kv.Replicas = jetstream.FileStorage, cfg.Replicas
		if _, err := js.CreateOrUpdateKeyValue(ctx, kv); err != nil {
			return fmt.Errorf("kv %s: %w", kv.Bucket, err)
		}
	}
	return nil
}

// Open binds to the shared stream and buckets that Setup made; a missing
// one is ErrNotSetUp. It needs only read access to their configuration.
func Open(ctx context.Context, js jetstream.JetStream) (*Resources, error) {
	res := &Resources{JS: js}
	notSetUp := func(what string, err error) error {
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("%s: %w", what, ErrNotSetUp)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	var err error
	if res.Stream, err = js.Stream(ctx, StreamName); err != nil {
		return nil, notSetUp("stream "+StreamName, err)
	}
	if res.Snapshots, err = js.ObjectStore(ctx, SnapshotBucket); err != nil {
		return nil, notSetUp("object store "+SnapshotBucket, err)
	}
	// The bucket's stream, for Snapshot's direct reads; without it,
	// Snapshot reads through the object store.
	res.snapshotStream, _ = js.Stream(ctx, "OBJ_"+SnapshotBucket)
	for _, b := range []struct {
		name string
		kv   *jetstream.KeyValue
	}{{AttemptsBucket, &res.Attempts}, {ConfigBucket, &res.Config}, {LocksBucket, &res.Locks}} {
		if *b.kv, err = js.KeyValue(ctx, b.name); err != nil {
			return nil, notSetUp("kv "+b.name, err)
		}
	}
	res.lockRenew = LockTTL / 4
	if st, err := res.Locks.Status(ctx); err == nil && st.TTL() > 0 {
		res.lockRenew = st.TTL() / 4
	}
	return res, nil
}

// Ensure runs Setup and opens the resources, for a process that manages
// them itself (`leviathan dev`, tests, a one-user installation): its
// runners create their consumers too.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg ResourceConfig) (*Resources, error) {
	if err := Setup(ctx, js, cfg); err != nil {
		return nil, err
	}
	res, err := Open(ctx, js)
	if err != nil {
		return nil, err
	}
	res.Manage = true
	return res, nil
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

// ClaimedSeq is the stream sequence of the request that claimed attemptID.
func (r *Resources) ClaimedSeq(ctx context.Context, attemptID string) (uint64, error) {
	return r.claimedSeq(ctx, attemptID)
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
//
// The claim names the request's sequence, and reading that message after
// it made two round trips in every stage's preamble. The claiming request
// is nearly always the last one published with the attempt's id (a
// duplicate that came after it is the exception), so the claim and the
// last request on the attempt's subject are asked for at once; the message
// is read again by sequence only when they differ.
func (r *Resources) Request(ctx context.Context, attemptID string) (*events.Request, error) {
	var last *jetstream.RawStreamMsg
	var lastErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		last, lastErr = r.Stream.GetLastMsgForSubject(ctx, events.Subject(attemptID, events.AttemptRequested))
	})
	seq, err := r.claimedSeq(ctx, attemptID)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	m := last
	if lastErr != nil || last.Sequence != seq {
		if m, err = r.Stream.GetMsg(ctx, seq); err != nil {
			return nil, fmt.Errorf("load request of attempt %s (seq %d): %w", attemptID, seq, err)
		}
	}
	return events.ParseRequest(m.Data, attemptID)
}
