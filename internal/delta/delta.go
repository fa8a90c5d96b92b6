// Package delta makes and applies binary deltas of the bsdiff kind: a new
// file is described as runs copied from the old one with small bytewise
// differences (a rebuilt program's shifted addresses become runs of tiny
// differences, which compress to almost nothing) plus new bytes. berth sends
// a changed file this way when the device holds the file's previous version.
//
// Matches are found through a hash index of the old file's 8-byte windows
// (every fourth position, chains of bounded depth) instead of bsdiff's suffix
// array: the deltas come out the same size for rebuilt programs, in a tenth
// of a second instead of seconds (BenchmarkDiff), and the work is bounded
// for any input (see Diff). The patch format is bsdiff's, unchanged.
package delta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

const magic = "BDF1"

// MaxOutput bounds the size of a file a patch may produce.
const MaxOutput = 1 << 31

// ErrBadPatch marks a patch that does not apply.
var ErrBadPatch = errors.New("bad delta")

// Diff returns a patch that turns old into nw. Its work is bounded by a
// budget proportional to the inputs' sizes (workPerByte): past it, the rest
// of nw goes as new bytes, so the patch is still right, only larger. Memory:
// the index takes about len(old) bytes plus 4 MiB, the patch's parts up to
// twice len(nw) before compression.
func Diff(old, nw []byte) []byte {
	return diff(old, nw, newHashIndex(old))
}

// matcher finds the longest match of nw's beginning in the old file;
// prefer is the old position that continues the current alignment. diff
// charges it the bytes its extension loops compare too (spend), so that one
// budget bounds the whole: on periodic data bsdiff's backward extension
// covers all since the last match every time, which is quadratic.
type matcher interface {
	longest(nw []byte, prefer int) (pos, n int)
	spend(n int)
}

func diff(old, nw []byte, m matcher) []byte {
	var ctrl []byte
	diff, extra := make([]byte, 0, len(nw)), make([]byte, 0, len(nw)/8)
	oldsize, newsize := len(old), len(nw)
	var scan, pos, length, lastscan, lastpos, lastoffset int
	for scan < newsize {
		oldscore := 0
		scan += length
		scsc := scan
		for scan < newsize {
			pos, length = m.longest(nw[scan:], scan+lastoffset)
			for ; scsc < scan+length; scsc++ {
				if scsc+lastoffset < oldsize && old[scsc+lastoffset] == nw[scsc] {
					oldscore++
				}
			}
			if (length == oldscore && length != 0) || length > oldscore+8 {
				break
			}
			if scan+lastoffset < oldsize && old[scan+lastoffset] == nw[scan] {
				oldscore--
			}
			scan++
		}
		if length == oldscore && scan != newsize {
			continue
		}
		m.spend(4 * (scan - lastscan))
		s, sf, lenf := 0, 0, 0
		for i := 0; lastscan+i < scan && lastpos+i < oldsize; {
			if old[lastpos+i] == nw[lastscan+i] {
				s++
			}
			i++
			if s*2-i > sf*2-lenf {
				sf, lenf = s, i
			}
		}
		lenb := 0
		if scan < newsize {
			s, sb := 0, 0
			for i := 1; scan >= lastscan+i && pos >= i; i++ {
				if old[pos-i] == nw[scan-i] {
					s++
				}
				if s*2-i > sb*2-lenb {
					sb, lenb = s, i
				}
			}
		}
		if lastscan+lenf > scan-lenb {
			overlap := (lastscan + lenf) - (scan - lenb)
			s, ss, lens := 0, 0, 0
			for i := 0; i < overlap; i++ {
				if nw[lastscan+lenf-overlap+i] == old[lastpos+lenf-overlap+i] {
					s++
				}
				if nw[scan-lenb+i] == old[pos-lenb+i] {
					s--
				}
				if s > ss {
					ss, lens = s, i+1
				}
			}
			lenf += lens - overlap
			lenb -= lens
		}
		for i := 0; i < lenf; i++ {
			diff = append(diff, nw[lastscan+i]-old[lastpos+i])
		}
		extraLen := (scan - lenb) - (lastscan + lenf)
		extra = append(extra, nw[lastscan+lenf:lastscan+lenf+extraLen]...)
		ctrl = binary.AppendUvarint(ctrl, uint64(lenf))
		ctrl = binary.AppendUvarint(ctrl, uint64(extraLen))
		ctrl = binary.AppendVarint(ctrl, int64((pos-lenb)-(lastpos+lenf)))
		lastscan, lastpos, lastoffset = scan-lenb, pos-lenb, pos-scan
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
	defer enc.Close()
	out := []byte(magic)
	out = binary.AppendUvarint(out, uint64(newsize))
	for _, part := range [][]byte{ctrl, diff, extra} {
		z := enc.EncodeAll(part, nil)
		out = binary.AppendUvarint(out, uint64(len(z)))
		out = append(out, z...)
	}
	return out
}

// Patch applies a patch made by Diff to old. The patch is untrusted: every
// length is checked, and the output is bounded by MaxOutput and maxOut.
func Patch(old, patch []byte, maxOut int) ([]byte, error) {
	bad := func(what string) ([]byte, error) { return nil, fmt.Errorf("%s: %w", what, ErrBadPatch) }
	if !bytes.HasPrefix(patch, []byte(magic)) {
		return bad("not a berth delta")
	}
	r := bytes.NewReader(patch[len(magic):])
	newsize, err := binary.ReadUvarint(r)
	if err != nil || newsize > MaxOutput || newsize > uint64(maxOut) {
		return bad("bad output size")
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(uint64(maxOut)+1<<20))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	var parts [3][]byte
	for i := range parts {
		n, err := binary.ReadUvarint(r)
		if err != nil || n > uint64(r.Len()) {
			return bad("truncated")
		}
		z := make([]byte, n)
		r.Read(z)
		if parts[i], err = dec.DecodeAll(z, nil); err != nil {
			return bad("bad compression")
		}
	}
	if r.Len() != 0 {
		return bad("trailing bytes")
	}
	ctrl, diff, extra := bytes.NewReader(parts[0]), parts[1], parts[2]
	out := make([]byte, 0, newsize)
	oldpos := int64(0)
	for ctrl.Len() > 0 {
		x, err1 := binary.ReadUvarint(ctrl)
		y, err2 := binary.ReadUvarint(ctrl)
		z, err3 := binary.ReadVarint(ctrl)
		if err1 != nil || err2 != nil || err3 != nil {
			return bad("bad control")
		}
		if x > uint64(len(diff)) || y > uint64(len(extra)) || uint64(len(out))+x+y > newsize {
			return bad("control runs past the data")
		}
		if oldpos < 0 || oldpos+int64(x) > int64(len(old)) {
			return bad("copy outside the old file")
		}
		for i := uint64(0); i < x; i++ {
			out = append(out, old[oldpos+int64(i)]+diff[i])
		}
		diff = diff[x:]
		out = append(out, extra[:y]...)
		extra = extra[y:]
		oldpos += int64(x) + z
	}
	if uint64(len(out)) != newsize {
		return bad("short output")
	}
	return out, nil
}
