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
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

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

// AlignEvery bounds what a cut link loses of a compressed batch. A receiver
// reading a batch as it arrives (DecodeFramesFrom) can decode only whole
// zstd blocks, and keeps only whole frames: CompressBatch ends a block at a
// frame's end at least every AlignEvery bytes of the batch, so that of what
// came before a cut, at most the last AlignEvery bytes are lost — or the
// one frame in flight, when it is larger (a piece is at most 256 KiB).
// zstd's blocks are at most 128 KiB anyway, so this costs little
// compression (BenchmarkCompressBatch).
const AlignEvery = 64 << 10

// encoders compress batches as streams (a block ends where CompressBatch
// flushes), one request or push at a time each. A 2 MiB window compresses
// batches of distinct pieces as well as 8 MiB does, faster, and makes the
// receiver's decoder smaller (BenchmarkCompressBatch).
var encoders = sync.Pool{New: func() any {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(2<<20))
	if err != nil {
		panic(err) // only for bad options
	}
	return enc
}}

// CompressBatch turns a batch into a compressed one: one zstd frame, so that
// its pieces share their context, whose blocks end at frame ends at least
// every AlignEvery bytes.
func CompressBatch(b []byte) []byte {
	enc := encoders.Get().(*zstd.Encoder)
	defer encoders.Put(enc)
	out := bytes.NewBuffer(make([]byte, 0, len(b)/2+1024))
	out.WriteString(zframesMagic)
	enc.Reset(out)
	start := 0 // the first byte not yet flushed in a block
	for _, r := range frameRanges(b) {
		if r[0] > start && r[1]-start > AlignEvery {
			enc.Write(b[start:r[0]]) // writes to a bytes.Buffer do not fail
			enc.Flush()
			start = r[0]
		}
	}
	enc.Write(b[start:])
	enc.Close()
	return out.Bytes()
}

// frameRanges returns where each frame of a batch this side made starts
// and ends; it stops at the first byte it cannot read as a frame.
func frameRanges(b []byte) [][2]int {
	if !bytes.HasPrefix(b, []byte(framesMagic)) {
		return nil
	}
	var out [][2]int
	i := len(framesMagic)
	uvarint := func() (uint64, bool) {
		v, n := binary.Uvarint(b[i:])
		if n <= 0 {
			return 0, false
		}
		i += n
		return v, true
	}
	for i < len(b) {
		start := i
		kind := b[i]
		i++
		switch kind {
		case KindDelta:
			for range 2 {
				n, ok := uvarint()
				if !ok || n > maxListPieces {
					return out
				}
				for range n {
					if i += 32; i > len(b) {
						return out
					}
					if _, ok := uvarint(); !ok {
						return out
					}
				}
			}
		default:
			i += 32
		}
		if i > len(b) {
			return out
		}
		n, ok := uvarint()
		if !ok || n > uint64(len(b)-i) {
			return out
		}
		i += int(n)
		out = append(out, [2]int{start, i})
	}
	return out
}

// DecodeFrames reads a batch from untrusted bytes and calls fn for each frame.
func DecodeFrames(data []byte, fn func(Frame) error) error {
	return DecodeFramesFrom(bytes.NewReader(data), fn)
}

// DecodeFramesFrom reads a batch from an untrusted stream and calls fn for
// each frame as soon as it is whole, so that a receiver can keep the frames
// of a batch whose stream broke off (a cut link) instead of losing the
// batch. A compressed batch is decoded as it arrives, to at most MaxBatch
// bytes.
func DecodeFramesFrom(src io.Reader, fn func(Frame) error) error {
	br := bufio.NewReaderSize(src, 64<<10)
	head, err := br.Peek(len(framesMagic))
	if err != nil {
		return fmt.Errorf("pieces: not a berth batch: %w", release.ErrInvalid)
	}
	var r *bufio.Reader
	switch string(head) {
	case zframesMagic:
		br.Discard(len(zframesMagic))
		dec, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxBatch), zstd.WithDecoderMaxWindow(MaxBatch))
		if err != nil {
			return err
		}
		defer dec.Close()
		lr := &limitedReader{r: dec, left: MaxBatch}
		r = bufio.NewReaderSize(lr, 64<<10)
		inner, err := r.Peek(len(framesMagic))
		if err != nil && len(inner) < len(framesMagic) {
			return fmt.Errorf("pieces: the compressed batch is damaged (%v); nothing of it was stored, the next run sends it again: %w", err, release.ErrInvalid)
		}
		head = inner
	default:
		r = br
	}
	if string(head) != framesMagic {
		return fmt.Errorf("pieces: not a berth batch: %w", release.ErrInvalid)
	}
	r.Discard(len(framesMagic))
	bad := func(i int, what string) error {
		return fmt.Errorf("pieces: frame %d: %s: %w", i, what, release.ErrInvalid)
	}
	// broken says what to do when the stream ends inside a frame: the
	// frames before it were handed to fn.
	broken := func(i int, err error) error {
		if errors.Is(err, errTooBig) {
			return bad(i, "the batch grows past its limit")
		}
		return fmt.Errorf("pieces: the batch broke off in frame %d (%v); the frames before it were kept, the next run sends the rest: %w", i, err, release.ErrInvalid)
	}
	for i := 0; ; i++ {
		f := Frame{}
		kind, err := r.ReadByte()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return broken(i, err)
		}
		f.Kind = kind
		switch f.Kind {
		case KindPiece, KindRaw:
			if _, err := io.ReadFull(r, f.Digest[:]); err != nil {
				return broken(i, err)
			}
		case KindDelta:
			for _, list := range []*[]content.Piece{&f.Base, &f.Targets} {
				n, err := binary.ReadUvarint(r)
				if err != nil {
					return broken(i, err)
				}
				if n == 0 || n > maxListPieces {
					return bad(i, "bad piece list")
				}
				for j := uint64(0); j < n; j++ {
					var p content.Piece
					if _, err := io.ReadFull(r, p.Digest[:]); err != nil {
						return broken(i, err)
					}
					size, err := binary.ReadUvarint(r)
					if err != nil {
						return broken(i, err)
					}
					if size == 0 || size > maxFrame {
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
		if err != nil {
			return broken(i, err)
		}
		if n == 0 || n > maxFrame {
			return bad(i, "bad length")
		}
		// Read in steps, so that a length the stream does not back takes
		// no more memory than the bytes that came.
		f.Data = make([]byte, 0, min(n, 1<<20))
		for uint64(len(f.Data)) < n {
			if len(f.Data) == cap(f.Data) {
				f.Data = slices.Grow(f.Data, int(min(n, 2*uint64(cap(f.Data))))-len(f.Data))
			}
			at := len(f.Data)
			f.Data = f.Data[:min(uint64(cap(f.Data)), n)]
			if _, err := io.ReadFull(r, f.Data[at:]); err != nil {
				if err == io.ErrUnexpectedEOF || err == io.EOF {
					if _, isBytes := src.(*bytes.Reader); isBytes {
						return bad(i, "bad length")
					}
				}
				return broken(i, err)
			}
		}
		if err := fn(f); err != nil {
			return err
		}
	}
}

var errTooBig = errors.New("larger than MaxBatch")

// limitedReader fails once more than left bytes come out of r.
type limitedReader struct {
	r    io.Reader
	left int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if l.left -= int64(n); l.left < 0 {
		return n, errTooBig
	}
	return n, err
}
