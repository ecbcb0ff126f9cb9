package gitx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"
)

// Strategy names how much of a repository Fetch asks the server for.
type Strategy string

// Fetch strategies, best first. Each fetches the tip commit alone (depth 1)
// and every one ends with the file's blob in the snapshot.
const (
	// StrategyMinimal fetches the commit, the trees on the path and the
	// blob, nothing else: one request for the commit and its root tree,
	// one per directory on the path, one for the blob. Needs the server's
	// "filter" capability and wants by object id (see planStrategies).
	StrategyMinimal Strategy = "minimal"
	// StrategyBlobNone fetches the commit and every tree of it, then the
	// one blob: two requests. Needs the same; the fallback when a server
	// refuses tree:<depth> filters (uploadpackfilter.tree.allow=false).
	StrategyBlobNone Strategy = "blob-none"
	// StrategyShallow fetches the whole tip snapshot, blobs included. Any
	// server that supports shallow clones can do it.
	StrategyShallow Strategy = "shallow"
)

// FetchOptions tunes Fetch.
type FetchOptions struct {
	// Strategy forces a strategy; "" picks the best the server supports
	// and falls back to the next one if the server refuses it. A forced
	// strategy the server cannot do fails with ErrNoFilterSupport.
	Strategy Strategy
}

// Snapshot is what Fetch got: enough of one commit to read and rewrite one
// file.
type Snapshot struct {
	// Commit is the tip of the branch when it was fetched.
	Commit plumbing.Hash
	// Strategy is the strategy that produced the snapshot.
	Strategy Strategy
	// BytesFetched counts the bytes read off the wire: every response
	// body (ref advertisement and protocol framing included), also those
	// of a strategy that the server refused before the one that worked.
	BytesFetched int64
	// Pack is a valid packfile holding only fetched objects, at least the
	// commit, the trees on the path and the blob; open it with OpenPack.
	// (minimal keeps all it fetched; blob-none and shallow keep the path.)
	Pack []byte
}

// Fetch fetches from branch of r the base commit, the trees on the path to
// path and the blob at path, using the best strategy the server offers (or
// opt.Strategy). A path that does not exist in the commit is not an error
// here: the snapshot then holds the trees down to where the path stops, so
// ReadFile answers ErrFileNotFound and Commit can create the file.
//
// Errors: ErrAuth, ErrRepoNotFound, ErrBranchNotFound, ErrNoFilterSupport,
// ErrInvalidRemote, ErrInvalidBranch, ErrInvalidPath, *StatusError, a
// context error, or a network error (*url.Error, net.Error). Fetch does not
// retry.
func Fetch(ctx context.Context, r Remote, branch string, path string, opt FetchOptions) (*Snapshot, error) {
	snap, err := fetch(ctx, r, branch, path, opt)
	if err != nil {
		return nil, redact(err, r.Password)
	}
	return snap, nil
}

func fetch(ctx context.Context, r Remote, branch string, path string, opt FetchOptions) (*Snapshot, error) {
	elems, err := splitPath(path)
	if err != nil {
		return nil, err
	}
	ref, err := branchRef(branch)
	if err != nil {
		return nil, err
	}
	ep, err := r.endpoint()
	if err != nil {
		return nil, err
	}
	var fetched atomic.Int64
	sess, err := r.gitTransport(&fetched).NewUploadPackSession(ep, r.auth())
	if err != nil {
		return nil, transportError("fetch", r, err)
	}
	defer sess.Close()

	adv, err := sess.AdvertisedReferencesContext(ctx)
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		return nil, fmt.Errorf("%w: %s in %s (the repository is empty)", ErrBranchNotFound, branch, r.displayURL())
	}
	if err != nil {
		return nil, transportError("fetch", r, err)
	}
	tip, ok := adv.References[ref.String()]
	if !ok {
		return nil, fmt.Errorf("%w: %s in %s", ErrBranchNotFound, branch, r.displayURL())
	}
	plan, err := planStrategies(adv.Capabilities, opt.Strategy)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, r.displayURL())
	}

	for _, s := range plan {
		f := &fetcher{remote: r, sess: sess, caps: adv.Capabilities, strategy: s, store: memory.NewStorage()}
		var pack []byte
		if pack, err = f.snapshot(ctx, tip, elems); err != nil {
			// Fall back only when choosing automatically and only on a
			// refusal: a network or auth failure would fail again.
			if opt.Strategy == "" && errors.Is(err, errRefused) {
				continue
			}
			break
		}
		return &Snapshot{Commit: tip, Strategy: s, BytesFetched: fetched.Load(), Pack: pack}, nil
	}
	if opt.Strategy != "" && opt.Strategy != StrategyShallow && errors.Is(err, errRefused) {
		// The server advertised "filter" but would not serve this one
		// (a banned filter kind, or wants by id refused).
		return nil, fmt.Errorf("%w: %w", ErrNoFilterSupport, err)
	}
	return nil, err
}

// planStrategies lists the strategies to try in order, from what the
// server advertises.
//
// minimal and blob-none also want trees and blobs by id. Over smart HTTP
// that works without any want-by-id capability on git's own server (and the
// forges built on it): upload-pack in stateless-RPC mode cannot know what it
// advertised, so it accepts any want reachable from a ref and checks that
// instead. The capability is therefore no requirement here; a server that
// does refuse such wants ("not our ref") makes the automatic choice fall
// back, and a forced strategy fail with ErrNoFilterSupport.
func planStrategies(caps *capability.List, forced Strategy) ([]Strategy, error) {
	shallow := caps.Supports(capability.Shallow)
	partial := shallow && caps.Supports(capability.Filter)
	switch forced {
	case "":
		var plan []Strategy
		if partial {
			plan = append(plan, StrategyMinimal, StrategyBlobNone)
		}
		if shallow {
			plan = append(plan, StrategyShallow)
		}
		if len(plan) == 0 {
			return nil, fmt.Errorf("%w: the server supports no shallow fetch", ErrNoFilterSupport)
		}
		return plan, nil
	case StrategyMinimal, StrategyBlobNone:
		if !partial {
			return nil, fmt.Errorf("%w: %s needs the %q and %q capabilities", ErrNoFilterSupport, forced, capability.Filter, capability.Shallow)
		}
	case StrategyShallow:
		if !shallow {
			return nil, fmt.Errorf("%w: %s needs the %q capability", ErrNoFilterSupport, forced, capability.Shallow)
		}
	default:
		return nil, fmt.Errorf("gitx: unknown fetch strategy %q", forced)
	}
	return []Strategy{forced}, nil
}

// fetcher runs one strategy over an upload-pack session, collecting the
// objects of every response in store.
type fetcher struct {
	remote   Remote
	sess     transport.UploadPackSession
	caps     *capability.List // advertised by the server
	strategy Strategy
	store    *memory.Storage
	packs    [][]byte // every pack received, in order
	// noCombine is set once the server refused fileDirFilter.
	noCombine bool
	// keep lists the objects on the path (commit, trees, blob): all that
	// a snapshot of a blob-none or shallow fetch needs to hold.
	keep []plumbing.Hash
	// spilled are the answers too large to hold in memory (a shallow
	// fetch of a large repository): kept in temporary files, indexed,
	// and read object by object as the walk needs them (has).
	spilled []*spilledPack
}

// snapshot runs the strategy and returns the snapshot's pack.
func (f *fetcher) snapshot(ctx context.Context, tip plumbing.Hash, elems []string) ([]byte, error) {
	defer f.closeSpilled()
	if err := f.run(ctx, tip, elems); err != nil {
		return nil, err
	}
	return f.snapshotPack()
}

// run fetches the tip commit, then walks the path, fetching whatever is
// missing on the way.
func (f *fetcher) run(ctx context.Context, tip plumbing.Hash, elems []string) error {
	var filter packp.Filter
	switch f.strategy {
	case StrategyMinimal:
		// From a commit, tree:1 keeps the root tree and drops everything
		// below it: commit + root tree.
		filter = packp.FilterTreeDepth(1)
	case StrategyBlobNone:
		filter = packp.FilterBlobNone()
	}
	if err := f.uploadPack(ctx, []plumbing.Hash{tip}, 1, filter); err != nil {
		return err
	}
	if _, err := f.has(tip); err != nil {
		return err
	}
	commit, err := object.GetCommit(f.store, tip)
	if err != nil {
		return fmt.Errorf("gitx: fetch %s: the server did not send commit %s: %w", f.remote.displayURL(), tip, err)
	}
	f.keep = append(f.keep, tip)
	cur := commit.TreeHash
	for i, name := range elems {
		tree, err := f.tree(ctx, cur, i == len(elems)-1)
		if err != nil {
			return err
		}
		f.keep = append(f.keep, cur)
		e := findEntry(tree.Entries, name)
		if e == nil {
			return nil // the file does not exist; ReadFile will say so
		}
		if i < len(elems)-1 {
			if e.Mode != filemode.Dir {
				return nil // a file stands where a directory should
			}
			cur = e.Hash
			continue
		}
		if !isRegular(e.Mode) {
			return nil
		}
		f.keep = append(f.keep, e.Hash)
		if ok, err := f.has(e.Hash); ok || err != nil {
			return err
		}
		// No filter for the blob: an explicitly wanted object is always
		// sent, exactly as git's own lazy fetch of a missing blob does.
		if err := f.uploadPack(ctx, []plumbing.Hash{e.Hash}, 0, ""); err != nil {
			return err
		}
		if ok, err := f.has(e.Hash); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("gitx: fetch %s: %w: the server did not send blob %s", f.remote.displayURL(), errRefused, e.Hash)
		}
	}
	return nil
}

// fileDirFilter fetches the directory that holds the file together with
// its files in one request: tree:1 on a wanted tree sends the tree and its
// direct children, and blob:limit leaves out any sibling as large as the
// biggest backlog we would accept (the file itself, if that large, is then
// fetched on its own and refused later for its size).
const fileDirFilter packp.Filter = "combine:tree:1+blob:limit=1m"

// tree returns tree h, fetching it first if the snapshot lacks it. fileDir
// says h is the directory holding the file.
func (f *fetcher) tree(ctx context.Context, h plumbing.Hash, fileDir bool) (*object.Tree, error) {
	ok, err := f.has(h)
	if err != nil {
		return nil, err
	}
	if !ok {
		if f.strategy != StrategyMinimal {
			return nil, fmt.Errorf("gitx: fetch %s: %w: the server did not send tree %s", f.remote.displayURL(), errRefused, h)
		}
		// git counts depth differently for an explicitly wanted tree than
		// for a commit's root tree: tree:1 on a wanted tree sends it plus
		// its direct children, blobs included (every file of a directory
		// we only pass through), while tree:0 sends the wanted tree alone.
		// So tree:0 for each directory we pass through, and for the
		// file's own directory tree:1 with a size cap, which saves the
		// round trip for the blob; a server that refuses the combined
		// filter gets tree:0 and a separate request for the blob.
		err := errRefused
		if fileDir && !f.noCombine {
			if err = f.uploadPack(ctx, []plumbing.Hash{h}, 0, fileDirFilter); errors.Is(err, errRefused) {
				f.noCombine = true
			}
		}
		if errors.Is(err, errRefused) {
			err = f.uploadPack(ctx, []plumbing.Hash{h}, 0, packp.FilterTreeDepth(0))
		}
		if err != nil {
			return nil, err
		}
		if _, err := f.has(h); err != nil {
			return nil, err
		}
	}
	t, err := object.GetTree(f.store, h)
	if err != nil {
		return nil, fmt.Errorf("gitx: fetch %s: %w: the server did not send tree %s", f.remote.displayURL(), errRefused, h)
	}
	return t, nil
}

// uploadPack sends one upload-pack request (stateless RPC: wants, optional
// deepen and filter, then "done") and stores the objects of the answer.
func (f *fetcher) uploadPack(ctx context.Context, wants []plumbing.Hash, depth int, filter packp.Filter) error {
	req := packp.NewUploadPackRequest()
	req.Wants = wants
	c := req.Capabilities
	var band sideband.Type
	useBand := true
	switch {
	case f.caps.Supports(capability.Sideband64k):
		band = sideband.Sideband64k
		_ = c.Set(capability.Sideband64k)
	case f.caps.Supports(capability.Sideband):
		band = sideband.Sideband
		_ = c.Set(capability.Sideband)
	default:
		useBand = false
	}
	if useBand && f.caps.Supports(capability.NoProgress) {
		// Progress lines would only cost bytes; errors still come on
		// channel 3.
		_ = c.Set(capability.NoProgress)
	}
	if f.caps.Supports(capability.OFSDelta) {
		_ = c.Set(capability.OFSDelta)
	}
	if f.caps.Supports(capability.Agent) {
		_ = c.Set(capability.Agent, capability.DefaultAgent())
	}
	if depth > 0 {
		_ = c.Set(capability.Shallow)
		req.Depth = packp.DepthCommits(depth)
	}
	if filter != "" {
		// The capability must be on the first want line, or upload-pack
		// dies with "filtering capability not negotiated".
		_ = c.Set(capability.Filter)
		req.Filter = filter
	}
	// No multi_ack, no haves, no thin-pack: we have nothing to negotiate
	// with, and a non-thin pack is self-contained.

	res, err := f.sess.UploadPack(ctx, req)
	if err != nil {
		return f.requestError(err)
	}
	defer res.Close()
	var body io.Reader = res
	if useBand {
		// Progress is nil: channel 2 is dropped, channel 3 becomes an error.
		body = sideband.NewDemuxer(band, res)
	}
	pack, file, err := readPack(body)
	if errors.Is(err, errSpill) {
		return fmt.Errorf("gitx: fetch %s (%s): %w", f.remote.displayURL(), f.strategy, err)
	}
	if err != nil {
		return f.readError(err)
	}
	// The demuxer stops at the flush-pkt; read what follows so the byte
	// count is complete and the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(res, 64<<10))
	if file != nil {
		sp, err := indexSpilled(file)
		if err != nil {
			return fmt.Errorf("gitx: fetch %s: %w", f.remote.displayURL(), err)
		}
		f.spilled = append(f.spilled, sp)
		return nil
	}
	if len(pack) == 0 {
		return fmt.Errorf("gitx: fetch %s: %w: empty pack", f.remote.displayURL(), errRefused)
	}
	if err := parsePack(f.store, pack); err != nil {
		return fmt.Errorf("gitx: fetch %s: %w", f.remote.displayURL(), err)
	}
	f.packs = append(f.packs, pack)
	return nil
}

// requestError sorts an UploadPack failure: HTTP and network failures are
// wrapped in go-git's UnexpectedError or carry a transport sentinel; the
// rest is the server refusing the request (an ERR line while decoding).
func (f *fetcher) requestError(err error) error {
	if isTransportErr(err) {
		return transportError("fetch", f.remote, err)
	}
	return fmt.Errorf("gitx: fetch %s (%s): %w: %w", f.remote.displayURL(), f.strategy, errRefused, err)
}

// readError sorts a failure while reading the pack: a broken connection
// stays a network error, anything else (a fatal side-band message) is a
// refusal.
func (f *fetcher) readError(err error) error {
	if errors.As(err, new(net.Error)) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("gitx: fetch %s: reading pack: %w", f.remote.displayURL(), err)
	}
	return fmt.Errorf("gitx: fetch %s (%s): %w: %w", f.remote.displayURL(), f.strategy, errRefused, err)
}

// snapshotPack is the pack the later stages read. For minimal that is
// every fetched object (little more than the path); blob-none and shallow
// fetch whole trees or the whole commit, of which the edit and the push
// need only the path, so only the path is kept: a shallow fetch of a large
// repository must not become a snapshot of the same size.
func (f *fetcher) snapshotPack() ([]byte, error) {
	hashes := f.keep
	if f.strategy == StrategyMinimal && len(f.spilled) == 0 {
		if len(f.packs) == 1 {
			return f.packs[0], nil
		}
		hashes = make([]plumbing.Hash, 0, len(f.store.Objects))
		for h := range f.store.Objects {
			hashes = append(hashes, h)
		}
	}
	objs := f.store.Objects
	slices.SortFunc(hashes, func(a, b plumbing.Hash) int {
		if ta, tb := objs[a].Type(), objs[b].Type(); ta != tb {
			return int(ta) - int(tb) // commits, trees, blobs
		}
		return bytes.Compare(a[:], b[:])
	})
	return encodePack(f.store, hashes) // which writes an object named twice once
}

// parsePack stores every object of pack in s.
func parsePack(s *memory.Storage, pack []byte) error {
	p, err := packfile.NewParserWithStorage(packfile.NewScanner(bytes.NewReader(pack)), s)
	if err != nil {
		return fmt.Errorf("reading pack: %w", err)
	}
	if _, err := p.Parse(); err != nil {
		return fmt.Errorf("reading pack: %w", err)
	}
	return nil
}
