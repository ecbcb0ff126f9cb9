package gitx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/storage/memory"
)

// PushResult says what Push did.
type PushResult struct {
	// UpToDate: the branch already pointed at the commit (a redelivered
	// push); nothing was sent.
	UpToDate bool
}

// Push creates branch on r at c.Hash, sending a pack of exactly c.Objects.
// It only ever creates: if the branch exists at c.Hash the push is a no-op
// (UpToDate), at any other commit it fails with ErrBranchConflict, and a ref
// that makes the name impossible fails with ErrRefBlocked naming that ref.
//
// Errors: ErrAuth, ErrRepoNotFound, ErrBranchConflict, ErrRefBlocked,
// ErrPushRejected, ErrInvalidRemote, ErrInvalidBranch, *StatusError, a
// context error, or a network error (*url.Error, net.Error). Push does not
// retry.
func Push(ctx context.Context, r Remote, branch string, c *NewCommit) (PushResult, error) {
	res, err := push(ctx, r, branch, c)
	return res, redact(err, r.Password)
}

func push(ctx context.Context, r Remote, branch string, c *NewCommit) (PushResult, error) {
	if c == nil || c.Hash.IsZero() {
		return PushResult{}, errors.New("gitx: push: no commit")
	}
	ref, err := branchRef(branch)
	if err != nil {
		return PushResult{}, err
	}
	ep, err := r.endpoint()
	if err != nil {
		return PushResult{}, err
	}
	var n atomic.Int64
	sess, err := r.gitTransport(&n).NewReceivePackSession(ep, r.auth())
	if err != nil {
		return PushResult{}, transportError("push", r, err)
	}
	defer sess.Close()

	// No ref advertisement first: that is a round trip (and, on the
	// server, a walk of every ref) spent only to learn what a create
	// learns anyway. The create is sent at once with the capabilities
	// every git server has offered for a decade (report-status, and
	// side-band-64k so the server's reasons reach us); when it is
	// refused, rejection reads the refs to tell "already there",
	// "exists elsewhere" and "blocked" apart.
	pack, err := packObjects(c.Objects)
	if err != nil {
		return PushResult{}, err
	}
	req := packp.NewReferenceUpdateRequest()
	_ = req.Capabilities.Set(capability.ReportStatus)
	_ = req.Capabilities.Set(capability.Sideband64k)
	_ = req.Capabilities.Set(capability.Agent, capability.DefaultAgent())
	var remoteMsgs syncBuffer
	req.Progress = &remoteMsgs
	req.Commands = []*packp.Command{{Name: ref, Old: plumbing.ZeroHash, New: c.Hash}}
	req.Packfile = io.NopCloser(bytes.NewReader(pack))

	report, err := sess.ReceivePack(ctx, req)
	if report == nil {
		if err == nil {
			err = errors.New("the server sent no report-status")
		}
		if isTransportErr(err) {
			return PushResult{}, transportError("push", r, err)
		}
		return PushResult{}, fmt.Errorf("gitx: push %s to %s: %w", ref.Short(), r.displayURL(), err)
	}
	if report.UnpackStatus != "ok" {
		return PushResult{}, fmt.Errorf("%w: %s: the server could not unpack the pack: %s", ErrPushRejected, ref.Short(), report.UnpackStatus)
	}
	for _, st := range report.CommandStatuses {
		if st.ReferenceName != ref {
			continue
		}
		if st.Status == "ok" {
			return PushResult{}, nil
		}
		upToDate, err := rejection(ctx, r, ref, c.Hash, st.Status, remoteMsgs.String())
		return PushResult{UpToDate: upToDate}, err
	}
	return PushResult{}, fmt.Errorf("gitx: push %s to %s: the report-status does not mention the branch", ref.Short(), r.displayURL())
}

// checkRefs decides from the advertised refs whether ref can be created at
// h: done when it already points there, an error when it exists elsewhere or
// another ref blocks the name.
func checkRefs(refs map[string]plumbing.Hash, ref plumbing.ReferenceName, h plumbing.Hash, r Remote) (done bool, err error) {
	if cur, ok := refs[ref.String()]; ok {
		if cur == h {
			return true, nil
		}
		return false, fmt.Errorf("%w: %s is at %s, not %s (%s)", ErrBranchConflict, ref.Short(), cur, h, r.displayURL())
	}
	// Refs are files under refs/: a ref cannot be created where another
	// ref is a directory of it, or inside a path another ref is a file at.
	name := ref.String()
	var blocking []string
	for other := range refs {
		if strings.HasPrefix(name, other+"/") || strings.HasPrefix(other, name+"/") {
			blocking = append(blocking, other)
		}
	}
	if len(blocking) > 0 {
		sort.Strings(blocking)
		return false, fmt.Errorf("%w: %s cannot be created because %s exists (%s)", ErrRefBlocked, name, blocking[0], r.displayURL())
	}
	return false, nil
}

// rejection maps a refused ref update onto an error. receive-pack reports
// most failures as a bare "failed to update ref" (the reason goes to
// stderr), so rather than parse prose, the refs are advertised again: a
// branch created concurrently or a ref that blocks the name is then plain
// to see. What that does not explain is ErrPushRejected with the server's
// words.
func rejection(ctx context.Context, r Remote, ref plumbing.ReferenceName, h plumbing.Hash, status, msgs string) (upToDate bool, err error) {
	var n atomic.Int64
	if ep, err := r.endpoint(); err == nil {
		if sess, err := r.gitTransport(&n).NewReceivePackSession(ep, r.auth()); err == nil {
			defer sess.Close()
			if adv, err := sess.AdvertisedReferencesContext(ctx); err == nil {
				// done: someone pushed the same commit concurrently, a
				// create that lost the race but reached the goal.
				if done, err := checkRefs(adv.References, ref, h, r); done || err != nil {
					return done, err
				}
			}
		}
	}
	detail := status
	if m := strings.TrimSpace(msgs); m != "" {
		detail += ": " + strings.Join(strings.Fields(m), " ")
	}
	if strings.Contains(detail, "cannot lock ref") || strings.Contains(detail, "unable to lock") {
		return false, fmt.Errorf("%w: %s: %s", ErrRefLocked, ref.Short(), detail)
	}
	return false, fmt.Errorf("%w: %s: %s", ErrPushRejected, ref.Short(), detail)
}

// packObjects encodes objs, in order, as one pack.
func packObjects(objs []plumbing.EncodedObject) ([]byte, error) {
	s := memory.NewStorage()
	hashes := make([]plumbing.Hash, 0, len(objs))
	for _, o := range objs {
		h, err := s.SetEncodedObject(o)
		if err != nil {
			return nil, fmt.Errorf("gitx: push: %w", err)
		}
		hashes = append(hashes, h)
	}
	return encodePack(s, hashes)
}

// syncBuffer collects the server's side-band messages, bounded, safe to
// write from the demultiplexer while read after it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := 4096 - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
