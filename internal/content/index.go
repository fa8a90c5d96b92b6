// Package content is berth's content store: a layer (an uncompressed tar) is
// split into its skeleton (tar headers, padding, end blocks) and its file
// contents; large files are cut further into content-defined chunks; every
// piece is named by its SHA-256. A device keeps the pieces of the layers it
// holds, compressed at rest and verified on read, and rebuilds any layer byte
// for byte from its index and pieces.
package content

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/berth-robotics/berth/internal/release"
)

// Digest is a SHA-256.
type Digest [32]byte

// Sum hashes b.
func Sum(b []byte) Digest { return sha256.Sum256(b) }

func (d Digest) String() string { return "sha256:" + hex.EncodeToString(d[:]) }

// Hex is the digest's 64 hex digits.
func (d Digest) Hex() string { return hex.EncodeToString(d[:]) }

// ParseDigest reads "sha256:<64 hex>" or "<64 hex>".
func ParseDigest(s string) (Digest, error) {
	var d Digest
	h := strings.TrimPrefix(s, "sha256:")
	if len(h) != 64 {
		return d, fmt.Errorf("digest %q: want sha256:<64 hex digits>: %w", s, release.ErrInvalid)
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return d, fmt.Errorf("digest %q: %v: %w", s, err, release.ErrInvalid)
	}
	return d, nil
}

// Piece is one named piece of file content.
type Piece struct {
	Digest Digest
	Size   uint32
}

// Entry is one element of a layer's skeleton: raw tar bytes (headers,
// padding, end blocks), or a file's content as pieces.
type Entry struct {
	Raw    []byte  // segment: raw tar bytes
	Name   string  // file: path in the layer
	Size   int64   // file: content size
	CRC    []byte  // file: crc64 of the content (tar-split's check), 8 bytes
	Pieces []Piece // file: content pieces in order
}

// IsFile reports whether the entry is file content rather than raw bytes.
func (e Entry) IsFile() bool { return e.Raw == nil }

// Index describes a layer: its diffID, size and skeleton.
type Index struct {
	DiffID  Digest
	Size    int64
	Entries []Entry
}

// Pieces lists every piece the layer needs, in order, with repeats.
func (ix *Index) Pieces() []Piece {
	var out []Piece
	for _, e := range ix.Entries {
		out = append(out, e.Pieces...)
	}
	return out
}

const indexMagic = "BSK1"

// Limits for decoding untrusted indexes.
const (
	maxEntries   = 1 << 22
	maxNameLen   = 64 << 10
	maxSegment   = 16 << 20
	maxPieceSize = 1 << 30
)

// Encode writes the index in berth's compact binary form.
func (ix *Index) Encode() []byte {
	var b bytes.Buffer
	b.WriteString(indexMagic)
	b.Write(ix.DiffID[:])
	uv := func(v uint64) { b.Write(binary.AppendUvarint(nil, v)) }
	uv(uint64(ix.Size))
	uv(uint64(len(ix.Entries)))
	for _, e := range ix.Entries {
		if !e.IsFile() {
			b.WriteByte(1)
			uv(uint64(len(e.Raw)))
			b.Write(e.Raw)
			continue
		}
		b.WriteByte(2)
		uv(uint64(len(e.Name)))
		b.WriteString(e.Name)
		uv(uint64(e.Size))
		if e.Size > 0 {
			crc := make([]byte, 8)
			copy(crc, e.CRC)
			b.Write(crc)
		}
		uv(uint64(len(e.Pieces)))
		for _, p := range e.Pieces {
			b.Write(p.Digest[:])
			uv(uint64(p.Size))
		}
	}
	return b.Bytes()
}

// readUvarint reads a varint in its shortest form only: an index has one
// encoding, so what decodes encodes back to the same bytes (and its digest
// means one thing).
func readUvarint(r *bytes.Reader) (uint64, error) {
	before := r.Len()
	v, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, err
	}
	if before-r.Len() != len(binary.AppendUvarint(nil, v)) {
		return 0, fmt.Errorf("index: varint not in its shortest form: %w", release.ErrInvalid)
	}
	return v, nil
}

// DecodeIndex reads an index from untrusted bytes, checking every length
// against the input and that each file's pieces add up to its size.
func DecodeIndex(data []byte) (*Index, error) {
	r := bytes.NewReader(data)
	bad := func(what string, args ...any) (*Index, error) {
		return nil, fmt.Errorf("layer index: %s: %w", fmt.Sprintf(what, args...), release.ErrInvalid)
	}
	magic := make([]byte, 4)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != indexMagic {
		return bad("not a berth layer index")
	}
	ix := &Index{}
	if _, err := io.ReadFull(r, ix.DiffID[:]); err != nil {
		return bad("truncated")
	}
	size, err := readUvarint(r)
	if err != nil || size > 1<<50 {
		return bad("bad size")
	}
	ix.Size = int64(size)
	n, err := readUvarint(r)
	if err != nil || n > maxEntries || n > uint64(r.Len()) {
		return bad("bad entry count")
	}
	ix.Entries = make([]Entry, 0, n)
	var total int64
	for i := uint64(0); i < n; i++ {
		kind, err := r.ReadByte()
		if err != nil {
			return bad("truncated at entry %d", i)
		}
		switch kind {
		case 1:
			l, err := readUvarint(r)
			if err != nil || l == 0 || l > maxSegment || l > uint64(r.Len()) {
				return bad("entry %d: bad segment length", i)
			}
			raw := make([]byte, l)
			io.ReadFull(r, raw)
			ix.Entries = append(ix.Entries, Entry{Raw: raw})
			total += int64(l)
		case 2:
			l, err := readUvarint(r)
			if err != nil || l > maxNameLen || l > uint64(r.Len()) {
				return bad("entry %d: bad name length", i)
			}
			name := make([]byte, l)
			io.ReadFull(r, name)
			fsize, err := readUvarint(r)
			if err != nil || fsize > 1<<50 {
				return bad("entry %d: bad file size", i)
			}
			e := Entry{Name: string(name), Size: int64(fsize)}
			if fsize > 0 {
				e.CRC = make([]byte, 8)
				if _, err := io.ReadFull(r, e.CRC); err != nil {
					return bad("entry %d: truncated", i)
				}
			}
			np, err := readUvarint(r)
			if err != nil || np > uint64(r.Len())/33 {
				return bad("entry %d: bad piece count", i)
			}
			var sum uint64
			for j := uint64(0); j < np; j++ {
				var p Piece
				if _, err := io.ReadFull(r, p.Digest[:]); err != nil {
					return bad("entry %d: truncated piece", i)
				}
				ps, err := readUvarint(r)
				if err != nil || ps == 0 || ps > maxPieceSize {
					return bad("entry %d: bad piece size", i)
				}
				p.Size = uint32(ps)
				sum += ps
				e.Pieces = append(e.Pieces, p)
			}
			if sum != fsize {
				return bad("entry %d (%q): pieces add up to %d bytes, the file has %d", i, e.Name, sum, fsize)
			}
			ix.Entries = append(ix.Entries, e)
			total += int64(fsize)
		default:
			return bad("entry %d: unknown kind %d", i, kind)
		}
	}
	if r.Len() != 0 {
		return bad("%d bytes of trailing data", r.Len())
	}
	if total != ix.Size {
		return bad("entries add up to %d bytes, the layer has %d", total, ix.Size)
	}
	return ix, nil
}

// ErrCorrupt marks content whose bytes do not match their name.
var ErrCorrupt = errors.New("content does not match its digest")
