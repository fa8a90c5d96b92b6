package content

import "math/bits"

// Content-defined chunking (FastCDC, normalized chunking level 2): a cut
// point depends only on the bytes around it, so an insertion early in a large
// file changes the chunks near the edit and leaves the rest identical.
const (
	minChunk = 16 << 10
	avgChunk = 64 << 10
	maxChunk = 256 << 10
	// ChunkThreshold: files up to this size are one piece.
	ChunkThreshold = 2 * avgChunk
)

var (
	maskS = uint64(1)<<(bits.Len(avgChunk)+1) - 1 // harder to cut before the average
	maskL = uint64(1)<<(bits.Len(avgChunk)-3) - 1 // easier after
)

// gear is a fixed table of 256 pseudo-random 64-bit values (splitmix64 from a
// constant seed), so chunk boundaries are the same on every machine.
var gear = func() (g [256]uint64) {
	x := uint64(0x9E3779B97F4A7C15)
	for i := range g {
		x += 0x9E3779B97F4A7C15
		z := x
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		g[i] = z ^ (z >> 31)
	}
	return g
}()

// cut returns the length of the first chunk of b.
func cut(b []byte) int {
	n := len(b)
	if n <= minChunk {
		return n
	}
	if n > maxChunk {
		n = maxChunk
	}
	normal := avgChunk
	if n < normal {
		normal = n
	}
	var h uint64
	i := minChunk
	for ; i < normal; i++ {
		h = (h << 1) + gear[b[i]]
		if h&maskS == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = (h << 1) + gear[b[i]]
		if h&maskL == 0 {
			return i + 1
		}
	}
	return n
}

// Chunks splits b into content-defined chunks (one chunk if b is small).
func Chunks(b []byte) [][]byte {
	if len(b) <= ChunkThreshold {
		return [][]byte{b}
	}
	var out [][]byte
	for len(b) > 0 {
		n := cut(b)
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}
