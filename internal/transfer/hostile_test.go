package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/release"
)

// TestHostileBatches sends what a hostile sender could put on the wire to
// the receiving end a device (and the fleet server) runs: each is refused
// as invalid, nothing of it is stored, no temporary file is left behind,
// and the memory it takes stays bounded.
func TestHostileBatches(t *testing.T) {
	enc, _ := zstd.NewWriter(nil)
	good := []byte("a piece that is what it says")
	other := []byte("a piece that is something else")
	zeros := make([]byte, 256<<20) // a quarter GiB of zeros: ~8 KiB compressed
	bomb := enc.EncodeAll(zeros, nil)
	hugeLen := append(append(NewBatch(), KindRaw), make([]byte, 32)...)
	hugeLen = binary.AppendUvarint(hugeLen, 1<<40)
	for _, tc := range []struct {
		name   string
		batch  []byte
		stored content.Digest // must not be in the store afterwards
	}{
		{name: "raw-piece-not-matching-its-digest", batch: AppendFrame(NewBatch(), Frame{Kind: KindRaw, Digest: content.Sum(good), Data: other}), stored: content.Sum(good)},
		{name: "zstd-piece-not-matching-its-digest", batch: AppendFrame(NewBatch(), Frame{Kind: KindPiece, Digest: content.Sum(good), Data: enc.EncodeAll(other, nil)}), stored: content.Sum(good)},
		{name: "zstd-piece-that-is-not-zstd", batch: AppendFrame(NewBatch(), Frame{Kind: KindPiece, Digest: content.Sum(good), Data: good}), stored: content.Sum(good)},
		{name: "decompression-bomb-piece", batch: AppendFrame(NewBatch(), Frame{Kind: KindPiece, Digest: content.Sum(zeros), Data: bomb}), stored: content.Sum(zeros)},
		{name: "raw-piece-larger-than-a-piece", batch: AppendFrame(NewBatch(), Frame{Kind: KindRaw, Digest: content.Sum(zeros[:content.MaxPiece+1]), Data: zeros[:content.MaxPiece+1]}), stored: content.Sum(zeros[:content.MaxPiece+1])},
		{name: "frame-length-beyond-the-batch", batch: hugeLen},
		{name: "delta-claiming-a-huge-file", batch: AppendFrame(NewBatch(), Frame{Kind: KindDelta, Base: []content.Piece{{Digest: content.Sum(good), Size: uint32(len(good))}},
			Targets: []content.Piece{{Digest: content.Sum(zeros), Size: 64 << 20}, {Digest: content.Sum(zeros), Size: 64 << 20}, {Digest: content.Sum(zeros), Size: 64 << 20}, {Digest: content.Sum(zeros), Size: 64 << 20}, {Digest: content.Sum(zeros), Size: 64 << 20}},
			Data:    []byte("patch")}), stored: content.Sum(zeros)},
		{name: "not-a-batch", batch: []byte("GET / HTTP/1.1\r\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := content.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := s.Put(content.Sum(good), good); err != nil && tc.name == "delta-claiming-a-huge-file" {
				t.Fatal(err)
			}
			if tc.name != "delta-claiming-a-huge-file" {
				os.RemoveAll(filepath.Join(dir, "pieces"))
				os.MkdirAll(filepath.Join(dir, "pieces"), 0o700)
			}
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			resp, err := Receiver{Store: s}.PutBatch(tc.batch)
			runtime.ReadMemStats(&after)
			if err == nil || !errors.Is(err, release.ErrInvalid) {
				t.Fatalf("want refused as invalid, got %v (stored %d)", err, resp.Stored)
			}
			t.Logf("refused: %v", err)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 2*content.MaxPiece+uint64(len(tc.batch))+8<<20 {
				t.Errorf("refusing it allocated %d MiB", alloc>>20)
			}
			if resp.Stored != 0 || (tc.stored != content.Digest{} && s.Has(tc.stored)) {
				t.Errorf("stored %d pieces of a refused batch", resp.Stored)
			}
			if ents, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(ents) > 0 {
				t.Errorf("temporary files left: %v", ents)
			}
		})
	}
}

// TestHostileIndexes: an index for a layer whose pieces did not all arrive,
// or naming another layer than the one it is put as, is refused, and the
// store keeps no index for it.
func TestHostileIndexes(t *testing.T) {
	enc, _ := zstd.NewWriter(nil)
	dir := t.TempDir()
	s, err := content.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := []byte("file content")
	ix := &content.Index{Size: int64(len(data)), Entries: []content.Entry{{Name: "f", Size: int64(len(data)), CRC: make([]byte, 8), Pieces: []content.Piece{{Digest: content.Sum(data), Size: uint32(len(data))}}}}}
	ix.DiffID = content.Sum([]byte("some layer"))
	body := enc.EncodeAll(ix.Encode(), nil)
	r := Receiver{Store: s}
	if err := r.PutIndex(ix.DiffID.String(), body, ""); !errors.Is(err, release.ErrConflict) {
		t.Errorf("an index whose pieces have not arrived: %v, want a conflict", err)
	}
	if err := s.Put(content.Sum(data), data); err != nil {
		t.Fatal(err)
	}
	other := content.Sum([]byte("another layer"))
	if err := r.PutIndex(other.String(), body, ""); !errors.Is(err, release.ErrInvalid) {
		t.Errorf("an index put under another layer's name: %v, want invalid", err)
	}
	if err := r.PutIndex("../../../etc/passwd", body, ""); !errors.Is(err, release.ErrInvalid) {
		t.Errorf("an index put under a path: %v, want invalid", err)
	}
	if err := r.PutIndex(ix.DiffID.String(), body, "../../x"); !errors.Is(err, release.ErrInvalid) {
		t.Errorf("an index delta against a path: %v, want invalid", err)
	}
	if layers, _ := s.Layers(); len(layers) != 0 {
		t.Errorf("layers stored: %v", layers)
	}
	// A layer whose rebuilt bytes do not hash to its diffID never reaches
	// the engine.
	if err := r.PutIndex(ix.DiffID.String(), body, ""); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := content.Rebuild(ix, s.Get, &out); !errors.Is(err, content.ErrCorrupt) {
		t.Fatalf("rebuild of a layer whose diffID does not match: %v, want ErrCorrupt", err)
	}
	// A piece damaged on disk is found out on read, and removed so that
	// the next transfer sends it again.
	h := content.Sum(data).Hex()
	if err := os.WriteFile(filepath.Join(dir, "pieces", h[:2], h), enc.EncodeAll([]byte("bit rot"), nil), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(content.Sum(data)); !errors.Is(err, content.ErrCorrupt) || s.Has(content.Sum(data)) {
		t.Fatalf("a damaged piece: %v, still held %v", err, s.Has(content.Sum(data)))
	}
}
