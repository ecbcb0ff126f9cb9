package events

import (
	"encoding/binary"
	"math/bits"
	"testing"
)

// TestStrUnsafeFindsTheFirstUnsafeByte checks the eight-bytes-at-a-time
// scan against strSafe: for every byte value at every place of a word,
// alone and after or before another one, the lowest flag is the first
// byte strSafe does not mark.
func TestStrUnsafeFindsTheFirstUnsafeByte(t *testing.T) {
	first := func(w [8]byte) int {
		for i, c := range w {
			if !strSafe[c] {
				return i
			}
		}
		return 8
	}
	got := func(w [8]byte) int {
		if m := strUnsafe(binary.LittleEndian.Uint64(w[:])); m != 0 {
			return bits.TrailingZeros64(m) / 8
		}
		return 8
	}
	for a := range 256 {
		for i := range 8 {
			for b := range 256 {
				w := [8]byte{'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'}
				w[i] = byte(a)
				w[(i+3)%8] = byte(b)
				if f, g := first(w), got(w); f != g {
					t.Fatalf("%q: first unsafe byte at %d, strUnsafe says %d", w, f, g)
				}
			}
		}
	}
}
