package transfer

import (
	"fmt"
	"math/bits"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/release"
)

// An index goes to the device as a delta from the encoded index of a similar
// layer the device holds: zstd with that index as a raw dictionary. Indexes
// change in place (a header's mtime, a file's piece list), which zstd's long
// matches into the dictionary capture in a fraction of a second, where a
// suffix-array delta of a 35 MB index takes a quarter of a minute.

// indexDictID names the dictionary in the zstd frame; any value works, both
// sides agree on it.
const indexDictID = 0xbe47

// windowFor is the zstd window that lets the end of an index of size n reach
// back over the whole base of size n.
func windowFor(base, n int) int {
	w := 1 << bits.Len(uint(base+n))
	return min(max(w, zstd.MinWindowSize), zstd.MaxWindowSize)
}

// EncodeIndexDelta encodes raw (an encoded index) against base.
func EncodeIndexDelta(base, raw []byte) ([]byte, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderDictRaw(indexDictID, base), zstd.WithWindowSize(windowFor(len(base), len(raw))))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(raw, nil), nil
}

// DecodeIndexDelta decodes untrusted z against base, refusing output larger
// than limit.
func DecodeIndexDelta(base, z []byte, limit int) ([]byte, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderDictRaw(indexDictID, base),
		zstd.WithDecoderMaxMemory(uint64(limit)), zstd.WithDecoderMaxWindow(uint64(windowFor(len(base), limit))))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	out, err := dec.DecodeAll(z, nil)
	if err != nil {
		return nil, fmt.Errorf("index delta: %v: %w", err, release.ErrInvalid)
	}
	return out, nil
}
