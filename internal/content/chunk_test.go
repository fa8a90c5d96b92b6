package content

import (
	"bytes"
	"math/rand"
	"testing"
)

func TestChunksAreContentDefined(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	data := make([]byte, 8<<20)
	rng.Read(data)
	a := Chunks(data)
	if got := bytes.Join(a, nil); !bytes.Equal(got, data) {
		t.Fatal("chunks do not rebuild the input")
	}
	for i, c := range a[:len(a)-1] {
		if len(c) < minChunk || len(c) > maxChunk {
			t.Fatalf("chunk %d has %d bytes", i, len(c))
		}
	}
	if avg := len(data) / len(a); avg < avgChunk/2 || avg > avgChunk*2 {
		t.Errorf("average chunk %d bytes, want near %d", avg, avgChunk)
	}
	// Insert 100 bytes at 1 MiB: only the chunks around the edit change.
	edited := append(append(append([]byte{}, data[:1<<20]...), bytes.Repeat([]byte("x"), 100)...), data[1<<20:]...)
	b := Chunks(edited)
	seen := map[string]bool{}
	for _, c := range a {
		seen[string(c)] = true
	}
	changed := 0
	for _, c := range b {
		if !seen[string(c)] {
			changed++
		}
	}
	if changed > 3 {
		t.Errorf("%d of %d chunks changed after a 100-byte insert", changed, len(b))
	}
}

func BenchmarkChunks(b *testing.B) {
	data := make([]byte, 64<<20)
	rand.New(rand.NewSource(1)).Read(data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		Chunks(data)
	}
}
