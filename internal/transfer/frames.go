// Package transfer moves image content to a device, sending only the pieces
// it lacks: the sender splits each layer into pieces (internal/content), asks
// the device which pieces are missing, sends those zstd-compressed — or, for a
// changed file whose previous version the device holds, as a binary delta —
// in batches acknowledged one by one, then the layer indexes (as deltas
// against similar layers the device holds), then asks the device to rebuild
// and load the layers its engine lacks. A batch that arrived stays arrived: a
// rerun after a dropped link sends only the rest.
package transfer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/release"
)

// A batch is framesMagic and frames, or zframesMagic and such a batch as one
// zstd frame: pieces compressed together share their context, which matters
// for the thousands of small files of a language runtime.
const (
	framesMagic  = "BPF1"
	zframesMagic = "BPZ1"
)

// Frame kinds.
const (
	KindPiece byte = 1 // one zstd-compressed piece
	KindDelta byte = 2 // a file's pieces as a binary delta against pieces the device holds
	KindRaw   byte = 3 // one piece as it is (the batch around it is compressed)
)

// Limits for decoding untrusted batches.
const (
	maxFrame      = 64 << 20
	maxListPieces = 1 << 16
	// MaxBatch bounds a batch, compressed or not, and a compressed batch's
	// contents.
	MaxBatch = 64 << 20
)

// Frame is one element of a batch: a piece (Digest, Data = zstd or raw), or a delta
// (Base: the old file's pieces, Targets: the new file's pieces, Data: the
// patch from the concatenated Base to the concatenated Targets).
type Frame struct {
	Kind    byte
	Digest  content.Digest
	Data    []byte
	Base    []content.Piece
	Targets []content.Piece
}

// NewBatch starts a batch.
func NewBatch() []byte { return []byte(framesMagic) }

// AppendFrame adds a frame to a batch.
func AppendFrame(b []byte, f Frame) []byte {
	b = append(b, f.Kind)
	switch f.Kind {
	case KindDelta:
		for _, list := range [][]content.Piece{f.Base, f.Targets} {
			b = binary.AppendUvarint(b, uint64(len(list)))
			for _, p := range list {
				b = append(b, p.Digest[:]...)
				b = binary.AppendUvarint(b, uint64(p.Size))
			}
		}
	default:
		b = append(b, f.Digest[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.Data)))
	return append(b, f.Data...)
}

// CompressBatch turns a batch into a compressed one.
func CompressBatch(enc *zstd.Encoder, b []byte) []byte {
	return enc.EncodeAll(b, []byte(zframesMagic))
}

// DecodeFrames reads a batch from untrusted bytes and calls fn for each frame.
func DecodeFrames(data []byte, fn func(Frame) error) error {
	if bytes.HasPrefix(data, []byte(zframesMagic)) {
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxBatch))
		if err != nil {
			return err
		}
		defer dec.Close()
		inner, err := dec.DecodeAll(data[len(zframesMagic):], nil)
		if err != nil {
			return fmt.Errorf("pieces: the compressed batch is damaged (%v); nothing of it was stored, the next run sends it again: %w", err, release.ErrInvalid)
		}
		data = inner
	}
	if !bytes.HasPrefix(data, []byte(framesMagic)) {
		return fmt.Errorf("pieces: not a berth batch: %w", release.ErrInvalid)
	}
	r := bytes.NewReader(data[len(framesMagic):])
	bad := func(i int, what string) error {
		return fmt.Errorf("pieces: frame %d: %s: %w", i, what, release.ErrInvalid)
	}
	for i := 0; r.Len() > 0; i++ {
		f := Frame{}
		f.Kind, _ = r.ReadByte()
		switch f.Kind {
		case KindPiece, KindRaw:
			if _, err := io.ReadFull(r, f.Digest[:]); err != nil {
				return bad(i, "truncated")
			}
		case KindDelta:
			for _, list := range []*[]content.Piece{&f.Base, &f.Targets} {
				n, err := binary.ReadUvarint(r)
				if err != nil || n == 0 || n > maxListPieces || n > uint64(r.Len())/33 {
					return bad(i, "bad piece list")
				}
				for j := uint64(0); j < n; j++ {
					var p content.Piece
					if _, err := io.ReadFull(r, p.Digest[:]); err != nil {
						return bad(i, "truncated piece list")
					}
					size, err := binary.ReadUvarint(r)
					if err != nil || size == 0 || size > maxFrame {
						return bad(i, "bad piece size")
					}
					p.Size = uint32(size)
					*list = append(*list, p)
				}
			}
		default:
			return bad(i, fmt.Sprintf("unknown kind %d", f.Kind))
		}
		n, err := binary.ReadUvarint(r)
		if err != nil || n == 0 || n > maxFrame || n > uint64(r.Len()) {
			return bad(i, "bad length")
		}
		f.Data = make([]byte, n)
		io.ReadFull(r, f.Data)
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}
