package delta

import (
	"bytes"
	"sort"
)

// The suffix-array matcher berth's deltas used before the hash index: kept
// for the tests and BenchmarkDiff's comparison (qsufsort takes seconds for a
// 9 MB program, and 8 bytes of memory a byte of the old file).

// saIndex finds the longest match through a suffix array, as bsdiff does.
type saIndex struct {
	old []byte
	sa  []int32
}

func newSAIndex(old []byte) *saIndex { return &saIndex{old: old, sa: suffixArray(old)} }

func (x *saIndex) spend(int) {}

func (x *saIndex) longest(nw []byte, _ int) (pos, n int) {
	st, en := 0, len(x.old)
	for en-st >= 2 {
		m := st + (en-st)/2
		if bytes.Compare(x.old[x.sa[m]:], nw) < 0 {
			st = m
		} else {
			en = m
		}
	}
	a := matchLen(x.old[x.sa[st]:], nw, len(nw))
	b := matchLen(x.old[x.sa[en]:], nw, len(nw))
	if a > b {
		return int(x.sa[st]), a
	}
	return int(x.sa[en]), b
}

// suffixArray returns the suffix array of b (plus the empty suffix first,
// as bsdiff's search expects), built with Larsson–Sadakane prefix doubling
// (qsufsort): O(n log n), 8 bytes a byte of input.
func suffixArray(b []byte) []int32 {
	n := len(b)
	I := make([]int32, n+1)
	V := make([]int32, n+1)
	var buckets [256]int32
	for _, c := range b {
		buckets[c]++
	}
	for i := 1; i < 256; i++ {
		buckets[i] += buckets[i-1]
	}
	copy(buckets[1:], buckets[:255])
	buckets[0] = 0
	for i, c := range b {
		buckets[c]++
		I[buckets[c]] = int32(i)
	}
	I[0] = int32(n)
	for i, c := range b {
		V[i] = buckets[c]
	}
	V[n] = 0
	for i := 1; i < 256; i++ {
		if buckets[i] == buckets[i-1]+1 {
			I[buckets[i]] = -1
		}
	}
	I[0] = -1
	for h := int32(1); I[0] != -(int32(n) + 1); h += h {
		var l int32
		i := int32(0)
		for i < int32(n)+1 {
			if I[i] < 0 {
				l -= I[i]
				i -= I[i]
				continue
			}
			if l != 0 {
				I[i-l] = -l
			}
			l = V[I[i]] + 1 - i
			split(I, V, i, l, h)
			i += l
			l = 0
		}
		if l != 0 {
			I[i-l] = -l
		}
	}
	for i := 0; i < n+1; i++ {
		I[V[i]] = int32(i)
	}
	return I
}

// split sorts I[start:start+length] by V[I[k]+h] (ternary split).
func split(I, V []int32, start, length, h int32) {
	if length < 16 {
		for k := start; k < start+length; {
			j := int32(1)
			x := V[I[k]+h]
			for i := int32(1); k+i < start+length; i++ {
				if V[I[k+i]+h] < x {
					x = V[I[k+i]+h]
					j = 0
				}
				if V[I[k+i]+h] == x {
					I[k+j], I[k+i] = I[k+i], I[k+j]
					j++
				}
			}
			for i := int32(0); i < j; i++ {
				V[I[k+i]] = k + j - 1
			}
			if j == 1 {
				I[k] = -1
			}
			k += j
		}
		return
	}
	x := V[I[start+length/2]+h]
	var jj, kk int32
	for i := start; i < start+length; i++ {
		if V[I[i]+h] < x {
			jj++
		}
		if V[I[i]+h] == x {
			kk++
		}
	}
	jj += start
	kk += jj
	i, j, k := start, int32(0), int32(0)
	for i < jj {
		switch {
		case V[I[i]+h] < x:
			i++
		case V[I[i]+h] == x:
			I[i], I[jj+j] = I[jj+j], I[i]
			j++
		default:
			I[i], I[kk+k] = I[kk+k], I[i]
			k++
		}
	}
	for jj+j < kk {
		if V[I[jj+j]+h] == x {
			j++
		} else {
			I[jj+j], I[kk+k] = I[kk+k], I[jj+j]
			k++
		}
	}
	if jj > start {
		split(I, V, start, jj-start, h)
	}
	for i := int32(0); i < kk-jj; i++ {
		V[I[jj+i]] = kk - 1
	}
	if jj == kk-1 {
		I[jj] = -1
	}
	if start+length > kk {
		split(I, V, kk, start+length-kk, h)
	}
}

// naiveSuffixArray is the reference for tests.
func naiveSuffixArray(b []byte) []int32 {
	sa := make([]int32, len(b)+1)
	for i := range sa {
		sa[i] = int32(i)
	}
	sort.Slice(sa, func(i, j int) bool { return string(b[sa[i]:]) < string(b[sa[j]:]) })
	return sa
}
