package transfer

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// BenchmarkPiecesEncoder: compressing a small answer (64 KiB, a few changed
// pieces) with an encoder made per request, as the server once did, with a
// shared one (EncodeAll, as it did until batches were aligned on frames),
// and as CompressBatch does now (pooled stream encoders).
func BenchmarkPiecesEncoder(b *testing.B) {
	batch := bytes.Repeat([]byte("berth piece bytes, somewhat compressible. "), 64<<10/42)
	b.Run("per-request", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
			if err != nil {
				b.Fatal(err)
			}
			enc.EncodeAll(batch, nil)
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
			enc.EncodeAll(batch, nil)
		}
	})
	b.Run("pooled", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			CompressBatch(batch)
		}
	})
}

// BenchmarkIndexLookup: a layer's index for a device's question, read from
// the store each time (as the server once did) and from the cache.
func BenchmarkIndexLookup(b *testing.B) {
	st := openStore(b)
	serverImage(b, st, layer(b, 300, -1))
	d := mustLayers(b, st)[0]
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := st.Index(d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cache", func(b *testing.B) {
		b.ReportAllocs()
		c := NewIndexCache(16)
		for b.Loop() {
			if _, err := c.get(st, d); err != nil {
				b.Fatal(err)
			}
		}
	})
}
