package content

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

func TestStore(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := make([]byte, 2<<20)
	rand.New(rand.NewSource(4)).Read(big)
	data := layer(t, big, time.Unix(5, 0))
	ix, err := Split(bytes.NewReader(data), s.Put)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutIndex(ix); err != nil {
		t.Fatal(err)
	}
	if m := s.Missing(ix); len(m) != 0 {
		t.Fatalf("%d pieces missing right after Split", len(m))
	}
	got, err := s.Index(ix.DiffID)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Rebuild(got, s.Get, &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("rebuild from store: %v", err)
	}
	if err := s.Put(Sum([]byte("x")), []byte("y")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Put of a misnamed piece: %v", err)
	}

	// Damage a piece on disk: Get reports it, removes it, and Missing lists it.
	p := ix.Pieces()[0]
	if err := os.WriteFile(s.piecePath(p.Digest), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(p.Digest); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get of a damaged piece: %v", err)
	}
	if m := s.Missing(ix); len(m) != 1 || m[0] != p {
		t.Fatalf("missing after damage: %v", m)
	}
	if _, err := s.Get(p.Digest); !errors.Is(err, release.ErrNotFound) {
		t.Fatalf("Get after removal: %v", err)
	}

	// GC keeps what kept layers use and frees the rest.
	if err := s.Put(Sum([]byte("orphan")), []byte("orphan")); err != nil {
		t.Fatal(err)
	}
	st, err := s.GC(GCPolicy{Keep: map[Digest]bool{ix.DiffID: true}, NotBefore: time.Now().Add(-time.Hour)})
	if err != nil || st.PiecesRemoved != 0 {
		t.Fatalf("GC removed a fresh piece (a transfer may be under way): %+v %v", st, err)
	}
	// A fresh index is kept with its pieces even when no image uses it yet:
	// its transfer may be about to load it.
	st, err = s.GC(GCPolicy{NotBefore: time.Now().Add(-time.Hour)})
	if err != nil || st.LayersRemoved != 0 || st.PiecesRemoved != 0 {
		t.Fatalf("GC removed a fresh index: %+v %v", st, err)
	}
	if _, err := s.Index(ix.DiffID); err != nil {
		t.Fatal(err)
	}
	// A fresh index of a layer the engine holds goes when not kept, with
	// its pieces, fresh as they are; the fresh orphan piece stays.
	if err := s.PutIndex(ix); err != nil {
		t.Fatal(err)
	}
	before := len(ix.Pieces())
	st, err = s.GC(GCPolicy{Loaded: map[Digest]bool{ix.DiffID: true}, NotBefore: time.Now().Add(-time.Hour)})
	if err != nil || st.LayersRemoved != 1 || st.PiecesRemoved == 0 || st.PiecesRemoved > before || !s.Has(Sum([]byte("orphan"))) {
		t.Fatalf("GC of a loaded, unkept layer: %+v %v", st, err)
	}
	if _, err := Split(bytes.NewReader(data), s.Put); err != nil {
		t.Fatal(err)
	}
	if err := s.PutIndex(ix); err != nil {
		t.Fatal(err)
	}
	st, err = s.GC(GCPolicy{Keep: map[Digest]bool{ix.DiffID: true}, NotBefore: time.Now().Add(time.Minute)})
	if err != nil || st.PiecesRemoved != 1 {
		t.Fatalf("GC: %+v %v", st, err)
	}
	st, err = s.GC(GCPolicy{NotBefore: time.Now().Add(time.Minute)})
	if err != nil || st.LayersRemoved != 1 || st.BytesKept != 0 {
		t.Fatalf("GC of everything: %+v %v", st, err)
	}
}

func TestBatch(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, c := []byte("piece a"), []byte("piece c")
	b := s.Batch()
	if err := b.Put(Sum(a), a); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(Sum(a), a); err != nil { // twice in one batch: once stored
		t.Fatal(err)
	}
	if err := b.Put(Sum(c), []byte("not c")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("misnamed piece in a batch: %v", err)
	}
	if s.Has(Sum(a)) {
		t.Fatal("a piece is in the store before its batch is committed")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(Sum(a)); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("after commit: %q %v", got, err)
	}
	b = s.Batch()
	if err := b.Put(Sum(c), c); err != nil {
		t.Fatal(err)
	}
	b.Abort()
	if s.Has(Sum(c)) {
		t.Fatal("an aborted batch's piece is in the store")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.dir, "tmp")); len(ents) != 0 {
		t.Fatalf("%d temporary files left", len(ents))
	}
}
