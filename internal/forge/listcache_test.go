package forge

import (
	"fmt"
	"strings"
	"testing"
)

// TestListCacheIsBounded: pages go when the cache's bound is reached, a
// page rewritten counts once, and a page too large is not kept at all.
func TestListCacheIsBounded(t *testing.T) {
	var c listCache
	body := strings.Repeat("x", 64<<10)
	page := []listedPR{{Number: 1, Body: &body}}
	for i := range 1000 {
		c.put(fmt.Sprint("repos/o/r", i, "/pulls"), `W/"e"`, page, 0)
		if c.bytes > listCacheBytes {
			t.Fatalf("after %d pages: %d bytes kept, bound %d", i+1, c.bytes, listCacheBytes)
		}
	}
	if len(c.pages) < listCacheBytes/(2*len(body)) {
		t.Fatalf("%d pages kept of 1000, each %d bytes: the bound is %d", len(c.pages), len(body), listCacheBytes)
	}
	sum := 0
	for _, p := range c.pages {
		sum += p.bytes
	}
	if sum != c.bytes {
		t.Fatalf("pages hold %d bytes, the count says %d", sum, c.bytes)
	}
	c = listCache{}
	for range 3 {
		c.put("k", `W/"e"`, page, 2)
	}
	if p := c.get("k"); len(c.pages) != 1 || p == nil || p.next != 2 || c.bytes != p.bytes {
		t.Fatalf("one page put three times: %d pages, %d bytes", len(c.pages), c.bytes)
	}
	huge := strings.Repeat("x", listCacheBytes/4)
	c.put("huge", `W/"h"`, []listedPR{{Body: &huge}}, 0)
	if c.get("huge") != nil {
		t.Fatal("a page of a quarter of the bound was kept")
	}
}

// TestSendableETag: only an ETag that can go back in a header as it came
// is kept.
func TestSendableETag(t *testing.T) {
	for etag, want := range map[string]bool{
		`W/"0f3c"`: true, `"abc"`: true, "": false, strings.Repeat("e", 257): false,
		"W/\"a\x00\"": false, "\"a\tb\"": false, "\"é\"": false, "\"a\x7f\"": false,
	} {
		if got := sendableETag(etag); got != want {
			t.Errorf("sendableETag(%q) = %v, want %v", etag, got, want)
		}
	}
}
