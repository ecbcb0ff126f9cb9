package forge

import (
	"sync"
)

// Conditional lists.
//
// pr lists a repository's open pull requests twice per attempt (push's
// question, then the guard before the create); at a steady pace the list
// seldom changes between the two. Each page of such a list is asked for
// with the ETag of its last answer (If-None-Match): an
// unchanged page is a 304 without a body, which GitHub does not count
// against the primary rate limit, and which costs no decoding here. The
// page's pull requests are then the ones kept from that last answer.

// listCacheBytes bounds the pages kept (their bodies, titles and refs,
// roughly): a few hundred repositories' pages of open pull requests.
const listCacheBytes = 16 << 20

// sendableETag reports whether a forge's ETag can be sent back as it
// came: not empty, at most 256 bytes, printable ASCII only. Another would
// make every later request of its list fail (or carry what the forge put
// in it), so its page is not kept.
func sendableETag(etag string) bool {
	if etag == "" || len(etag) > 256 {
		return false
	}
	for i := 0; i < len(etag); i++ {
		if etag[i] < 0x20 || etag[i] > 0x7e {
			return false
		}
	}
	return true
}

// listPage is a page of a list as last answered.
type listPage struct {
	etag  string
	prs   []listedPR
	next  int // the next page's number, 0 on the last
	bytes int
}

// listCache keeps the last answer of each list page, by its request URL
// (the token is the driver's own: one cache per driver).
type listCache struct {
	mu    sync.Mutex
	pages map[string]*listPage
	bytes int
}

func (c *listCache) get(key string) *listPage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pages[key]
}

// put keeps a page's answer; the pull requests must not change after.
// Other pages go, in no particular order, when the bound is reached.
func (c *listCache) put(key, etag string, prs []listedPR, next int) {
	p := &listPage{etag: etag, prs: prs, next: next, bytes: 64 + len(key) + len(etag)}
	for i := range prs {
		p.bytes += pageBytes(&prs[i])
	}
	if p.bytes > listCacheBytes/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pages == nil {
		c.pages = map[string]*listPage{}
	}
	if old, ok := c.pages[key]; ok {
		c.bytes -= old.bytes
		delete(c.pages, key)
	}
	for k, old := range c.pages {
		if c.bytes+p.bytes <= listCacheBytes {
			break
		}
		c.bytes -= old.bytes
		delete(c.pages, k)
	}
	c.pages[key] = p
	c.bytes += p.bytes
}

// pageBytes is about what a listed pull request holds.
func pageBytes(pr *listedPR) int {
	n := 128 + len(pr.State) + len(pr.HTMLURL) + len(pr.Title) + len(pr.Head.Ref) + len(pr.Head.SHA) + len(pr.Head.Label) + len(pr.Base.Ref)
	if pr.Body != nil {
		n += len(*pr.Body)
	}
	if pr.MergedAt != nil {
		n += len(*pr.MergedAt)
	}
	return n
}
