package delta

import "encoding/binary"

// hashIndex finds long exact matches of a new file in the old one: every
// fourth 8-byte window of the old file is hashed into a table of chains;
// a lookup hashes the new file's next 8 bytes, walks at most maxChain
// candidates and extends each as far as it matches. A match that starts
// between indexed positions is found a few bytes later, and bsdiff's
// backward extension recovers the bytes before it.
type hashIndex struct {
	old   []byte
	head  []int32 // by hash: 1 + the last indexed position, 0 for none
	prev  []int32 // by position/indexStride: the position before in its chain
	shift uint
	left  int64 // compare budget; at 0, no more matches are found
}

const (
	window      = 8       // bytes hashed
	indexStride = 4       // every so many old positions are indexed
	maxChain    = 8       // candidates tried per lookup
	maxMatch    = 1 << 20 // a match is extended at most this far per try
	maxTableLog = 20      // 4 MiB of heads: fits the caches, which matters more than fewer collisions
	// workPerByte: bytes compared per byte of input before the index gives up.
	workPerByte = 64
)

func newHashIndex(old []byte) *hashIndex {
	bits := uint(10)
	for bits < maxTableLog && 1<<bits < len(old)/indexStride {
		bits++
	}
	x := &hashIndex{old: old, head: make([]int32, 1<<bits), shift: 64 - bits}
	if len(old) >= window {
		x.prev = make([]int32, (len(old)-window)/indexStride+1)
		for i := 0; i+window <= len(old); i += indexStride {
			h := x.hash(old[i:])
			x.prev[i/indexStride] = x.head[h]
			x.head[h] = int32(i + 1)
		}
	}
	x.left = workPerByte*int64(len(old)) + workPerByte*1024
	return x
}

func (x *hashIndex) hash(b []byte) uint64 {
	return (binary.LittleEndian.Uint64(b) * 0x9E3779B97F4A7C15) >> x.shift
}

// longest returns the longest match of nw's beginning among the candidates
// (the current alignment's position prefer, then the hash chain), or n = 0.
func (x *hashIndex) longest(nw []byte, prefer int) (pos, n int) {
	if len(nw) < window || len(x.old) < window || x.left <= 0 {
		return 0, 0
	}
	try := func(i int) {
		l := matchLen(x.old[i:], nw, maxMatch)
		x.left -= int64(l) + window
		if l > n {
			pos, n = i, l
		}
	}
	if prefer >= 0 && prefer < len(x.old) {
		try(prefer)
		if n < window {
			n = 0
		}
	}
	c := x.head[x.hash(nw)]
	for depth := 0; c != 0 && depth < maxChain && x.left > 0; depth++ {
		i := int(c - 1)
		try(i)
		c = x.prev[i/indexStride]
	}
	return pos, n
}

func (x *hashIndex) spend(n int) { x.left -= int64(n) }

// matchLen is the length of the common prefix of a and b, at most limit.
func matchLen(a, b []byte, limit int) int {
	n := min(len(a), len(b), limit)
	i := 0
	for ; i+8 <= n; i += 8 {
		if d := binary.LittleEndian.Uint64(a[i:]) ^ binary.LittleEndian.Uint64(b[i:]); d != 0 {
			for d&0xff == 0 {
				d >>= 8
				i++
			}
			return i
		}
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}
