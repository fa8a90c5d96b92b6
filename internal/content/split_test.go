package content

import (
	"archive/tar"
	"bytes"
	"errors"
	"math/rand"
	"testing"
	"time"
)

// layer writes a tar like a Docker layer: dirs, small files, a large file,
// a symlink, a hardlink, a whiteout.
func layer(t testing.TB, big []byte, mtime time.Time) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(h *tar.Header, data []byte) {
		h.ModTime = mtime
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if data != nil {
			tw.Write(data)
		}
	}
	add(&tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "usr/bin/app", Mode: 0o755, Size: int64(len(big))}, big)
	add(&tar.Header{Name: "etc/app.conf", Mode: 0o644, Size: 5}, []byte("a=1\n\n"))
	add(&tar.Header{Name: "etc/empty", Mode: 0o644}, nil)
	add(&tar.Header{Name: "usr/bin/app2", Typeflag: tar.TypeLink, Linkname: "usr/bin/app"}, nil)
	add(&tar.Header{Name: "usr/bin/sh", Typeflag: tar.TypeSymlink, Linkname: "/bin/busybox"}, nil)
	add(&tar.Header{Name: "etc/.wh.old", Mode: 0o644}, nil)
	add(&tar.Header{Name: "very/long/" + string(bytes.Repeat([]byte("n"), 200)), Mode: 0o644, Size: 3, PAXRecords: map[string]string{"user.x": "y"}, Format: tar.FormatPAX}, []byte("pax"))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b.Write(make([]byte, 1024)) // docker layers often carry extra zero padding
	return b.Bytes()
}

func TestSplitRebuild(t *testing.T) {
	big := make([]byte, 3<<20)
	rand.New(rand.NewSource(2)).Read(big)
	data := layer(t, big, time.Unix(1700000000, 0))
	pieces := map[Digest][]byte{}
	ix, err := Split(bytes.NewReader(data), func(d Digest, b []byte) error {
		if Sum(b) != d {
			t.Fatal("piece named wrongly")
		}
		pieces[d] = append([]byte(nil), b...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ix.DiffID != Sum(data) || ix.Size != int64(len(data)) {
		t.Fatalf("diffID/size: %s %d, want %s %d", ix.DiffID, ix.Size, Sum(data), len(data))
	}
	if len(pieces) < 10 {
		t.Fatalf("only %d pieces for a 3 MiB file", len(pieces))
	}
	enc := ix.Encode()
	ix2, err := DecodeIndex(enc)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	get := func(d Digest) ([]byte, error) {
		b, ok := pieces[d]
		if !ok {
			return nil, errors.New("missing")
		}
		return b, nil
	}
	if err := Rebuild(ix2, get, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatal("rebuilt layer differs")
	}
	var skeleton int
	for _, e := range ix.Entries {
		skeleton += len(e.Raw)
	}
	t.Logf("layer %d bytes: %d entries, skeleton %d bytes, index %d bytes, %d pieces", len(data), len(ix.Entries), skeleton, len(enc), len(pieces))

	// A corrupted piece is caught.
	for d, b := range pieces {
		b[0] ^= 0xff
		err := Rebuild(ix2, get, &bytes.Buffer{})
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("corrupted piece %s: Rebuild = %v", d, err)
		}
		b[0] ^= 0xff
		break
	}
}

// TestNewMtimesSameContents: a rebuilt layer whose files only got new mtimes
// needs no new pieces at all.
func TestNewMtimesSameContents(t *testing.T) {
	big := make([]byte, 1<<20)
	rand.New(rand.NewSource(3)).Read(big)
	seen := map[Digest]bool{}
	if _, err := Split(bytes.NewReader(layer(t, big, time.Unix(1, 0))), func(d Digest, _ []byte) error { seen[d] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	newPieces := 0
	if _, err := Split(bytes.NewReader(layer(t, big, time.Unix(2, 0))), func(d Digest, _ []byte) error {
		if !seen[d] {
			newPieces++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if newPieces != 0 {
		t.Fatalf("%d new pieces for a layer that only changed mtimes", newPieces)
	}
}

func TestSplitRejectsGarbage(t *testing.T) {
	if _, err := Split(bytes.NewReader([]byte("this is not a tar archive, not even close......")), func(Digest, []byte) error { return nil }); err == nil {
		t.Fatal("garbage split without error")
	}
}

// FuzzDecodeIndex: indexes arrive from the network; decoding must never
// panic, and what decodes must encode back to the same bytes.
func FuzzDecodeIndex(f *testing.F) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: 3})
	tw.Write([]byte("abc"))
	tw.Close()
	ix, err := Split(&b, func(Digest, []byte) error { return nil })
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ix.Encode())
	f.Add([]byte(indexMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := DecodeIndex(data)
		if err != nil {
			return
		}
		if !bytes.Equal(ix.Encode(), data) {
			t.Fatal("decode/encode round trip differs")
		}
	})
}
