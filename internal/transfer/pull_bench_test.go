package transfer

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// BenchmarkPiecesEncoder: compressing a small answer (64 KiB, a few changed
// pieces) with an encoder made per request, as the server once did, and
// with the shared one.
func BenchmarkPiecesEncoder(b *testing.B) {
	batch := bytes.Repeat([]byte("berth piece bytes, somewhat compressible. "), 64<<10/42)
	b.Run("per-request", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
			if err != nil {
				b.Fatal(err)
			}
			CompressBatch(enc, batch)
			enc.Close()
		}
	})
	b.Run("shared", func(b *testing.B) {
		b.ReportAllocs()
		enc, err := sharedEncoder()
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			CompressBatch(enc, batch)
		}
	})
}
