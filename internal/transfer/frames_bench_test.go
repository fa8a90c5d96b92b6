package transfer

import (
	"archive/tar"
	"bytes"
	"io"
	"math/rand"
	"testing"

	"github.com/berth-robotics/berth/internal/content"
)

// BenchmarkCompressBatch: an 8 MiB batch (the sender's default), of the
// small text files of a language runtime and of incompressible data,
// compressed as one block stream (EncodeAll, as until batches were aligned
// on frames) and as CompressBatch does (a block ends at a frame's end at
// least every AlignEvery bytes). ratio is compressed/raw.
func BenchmarkCompressBatch(b *testing.B) {
	for _, kind := range []string{"text", "random"} {
		batch := benchBatch(b, kind, 8<<20)
		enc, err := sharedEncoder()
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range []struct {
			name string
			fn   func([]byte) []byte
		}{
			{"encodeall", func(p []byte) []byte { return enc.EncodeAll(p, []byte(zframesMagic)) }},
			{"aligned", CompressBatch},
		} {
			b.Run(kind+"/"+c.name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(batch)))
				var z []byte
				for b.Loop() {
					z = c.fn(batch)
				}
				b.ReportMetric(float64(len(z))/float64(len(batch)), "ratio")
			})
		}
	}
}

// benchBatch makes a batch of about size bytes: the pieces of a layer of
// small source-like files ("text") or of random bytes ("random").
func benchBatch(b testing.TB, kind string, size int) []byte {
	rng := rand.New(rand.NewSource(7))
	var tarb bytes.Buffer
	tw := tar.NewWriter(&tarb)
	words := []string{"func", "return", "if", "err", "nil", "for", "range", "package", "import", "struct", "string", "int", "byte", "(", ")", "{", "}", "\n\t", ":=", "."}
	for i := 0; tarb.Len() < size; i++ {
		var body []byte
		if kind == "random" {
			body = make([]byte, 1<<20)
			rng.Read(body)
		} else {
			for n := 500 + rng.Intn(8000); len(body) < n; {
				body = append(body, words[rng.Intn(len(words))]...)
				body = append(body, ' ')
			}
		}
		tw.WriteHeader(&tar.Header{Name: "f" + string(rune('a'+i%26)) + "/" + string(rune('a'+i/26%26)), Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write(body)
	}
	tw.Close()
	batch := NewBatch()
	_, err := content.Split(io.Reader(&tarb), func(d content.Digest, data []byte) error {
		batch = AppendFrame(batch, Frame{Kind: KindRaw, Digest: d, Data: data})
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return batch
}
