package content

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// TestHostileLayers feeds layers built to attack whoever unpacks them
// through the path every push and pull takes — Split into a store (sender,
// fleet server), then Rebuild from the store (device, before docker load) —
// and checks what berth promises: berth itself never writes a file named by
// a tar entry (it only stores pieces by digest), a layer either round-trips
// byte for byte (the engine then unpacks it, confined to the layer, as it
// would on docker load) or is refused as invalid, and memory stays bounded.
func TestHostileLayers(t *testing.T) {
	escape := filepath.Join(os.TempDir(), "berth-escape-"+strings.ReplaceAll(t.Name(), "/", "-"))
	type entry struct {
		h    tar.Header
		data []byte
	}
	reg := func(name string, data string) entry {
		return entry{tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}, []byte(data)}
	}
	for _, tc := range []struct {
		name    string
		entries []entry
		raw     []byte // instead of entries
		refused bool
	}{
		{name: "path-traversal", entries: []entry{reg("../../../../../../.."+escape, "pwned")}},
		{name: "absolute-path", entries: []entry{reg(escape, "pwned")}},
		{name: "symlink-outside-then-through-it", entries: []entry{
			{h: tar.Header{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: filepath.Dir(escape)}},
			reg("evil/"+filepath.Base(escape), "pwned"),
		}},
		{name: "hardlink-outside", entries: []entry{
			{h: tar.Header{Name: "shadow", Typeflag: tar.TypeLink, Linkname: "../../../../../etc/shadow"}},
			{h: tar.Header{Name: "passwd", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}},
		}},
		{name: "device-nodes", entries: []entry{
			{h: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8, Devminor: 0, Mode: 0o660}},
			{h: tar.Header{Name: "dev/mem", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 1, Mode: 0o666}},
			{h: tar.Header{Name: "dev/fifo", Typeflag: tar.TypeFifo, Mode: 0o666}},
		}},
		{name: "enormous-pax-header", refused: true, raw: paxTar(t, 64<<20)},
		{name: "enormous-gnu-long-name", refused: true, entries: []entry{
			{h: tar.Header{Name: strings.Repeat("n/", 2<<20) + "f", Mode: 0o644, Typeflag: tar.TypeReg, Format: tar.FormatGNU}},
		}},
		{name: "size-beyond-the-stream", refused: true, raw: truncatedTar(t, 1<<40)},
		{name: "sparse-file-claiming-a-petabyte", refused: true, raw: sparseTar(t, 1<<50)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.raw
			if data == nil {
				var b bytes.Buffer
				tw := tar.NewWriter(&b)
				for _, e := range tc.entries {
					if err := tw.WriteHeader(&e.h); err != nil {
						// archive/tar refuses to write some of these; write what it can.
						t.Logf("archive/tar refuses to write %q: %v", e.h.Name, err)
						continue
					}
					tw.Write(e.data)
				}
				if err := tw.Close(); err != nil {
					t.Fatal(err)
				}
				data = b.Bytes()
			}
			cwd := t.TempDir()
			t.Chdir(cwd)
			s, err := Open(filepath.Join(t.TempDir(), "store"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			ix, err := Split(bytes.NewReader(data), s.Put)
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
				t.Errorf("splitting a %d-byte layer allocated %d MiB", len(data), alloc>>20)
			}
			if _, serr := os.Lstat(escape); serr == nil {
				os.RemoveAll(escape)
				t.Fatalf("a file appeared at %s", escape)
			}
			if ents, _ := os.ReadDir(cwd); len(ents) > 0 {
				t.Fatalf("files appeared in the working directory: %v", ents)
			}
			if tc.refused {
				if err == nil {
					t.Fatalf("accepted a layer that should be refused (%d entries)", len(ix.Entries))
				}
				if !errors.Is(err, release.ErrInvalid) {
					t.Errorf("refused, but not as invalid: %v", err)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("split: %v", err)
			}
			if err := s.PutIndex(ix); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := Rebuild(ix, s.Get, &out); err != nil {
				t.Fatalf("rebuild: %v", err)
			}
			if !bytes.Equal(out.Bytes(), data) {
				t.Fatal("the rebuilt layer differs")
			}
		})
	}
}

// truncatedTar is a header declaring size bytes of content, and no content.
func truncatedTar(t testing.TB, size int64) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte("only this"))
	return b.Bytes()
}

// sparseTar is an old-GNU sparse file ('S') whose real size is realSize and
// whose one data fragment is at the very end: a reader that expands holes
// produces realSize bytes of zeros from a few hundred bytes of input.
func sparseTar(t testing.TB, realSize int64) []byte {
	t.Helper()
	var blk [512]byte
	copy(blk[0:], "sparse")
	copy(blk[100:], "0000644\x00")
	copy(blk[108:], "0000000\x00")
	copy(blk[116:], "0000000\x00")
	copy(blk[124:], "00000001000\x00") // 512 bytes of data in the archive
	copy(blk[136:], "00000000000\x00")
	blk[156] = 'S'
	copy(blk[257:], "ustar  \x00")
	// One sparse entry: offset realSize-512, length 512 (old GNU layout at 386).
	copy(blk[386:], octal(realSize-512, 12))
	copy(blk[398:], octal(512, 12))
	copy(blk[483:], octal(realSize, 12)) // realsize
	for i := 148; i < 156; i++ {
		blk[i] = ' '
	}
	var sum int64
	for _, c := range blk {
		sum += int64(c)
	}
	copy(blk[148:], octal(sum, 7))
	blk[155] = 0
	var b bytes.Buffer
	b.Write(blk[:])
	b.Write(bytes.Repeat([]byte{'d'}, 512))
	b.Write(make([]byte, 1024))
	return b.Bytes()
}

// octal is a tar numeric field; numbers too large for it are in GNU's
// base-256 form.
func octal(v int64, width int) []byte {
	if v >= 1<<(3*(width-1)) {
		s := make([]byte, width)
		for i := width - 1; i > 0; i-- {
			s[i] = byte(v)
			v >>= 8
		}
		s[0] = 0x80
		return s
	}
	s := []byte(strings.Repeat("0", width-1))
	for i := width - 2; i >= 0 && v > 0; i-- {
		s[i] = byte('0' + v%8)
		v /= 8
	}
	return append(s, 0)
}

// paxTar is a PAX extended header of size bytes (one record) before a file.
func paxTar(t *testing.T, size int) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "PaxHeaders/f", Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	head := b.Len() - 512
	rec := fmt.Sprintf(" user.big=%s\n", strings.Repeat("x", size))
	rec = fmt.Sprint(size) + rec[:size-len(fmt.Sprint(size))]
	tw.Write([]byte(rec))
	tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Close()
	out := b.Bytes()
	hdr := out[head : head+512]
	hdr[156] = 'x'
	for i := 148; i < 156; i++ {
		hdr[i] = ' '
	}
	var sum int64
	for _, c := range hdr {
		sum += int64(c)
	}
	copy(hdr[148:], octal(sum, 7))
	hdr[155] = ' '
	return out
}

// FuzzSplit: layers arrive from anyone's image archive (berth push of a
// docker save file) and from the fleet server's registry endpoint. Split
// must never panic, never produce more content than it read (the sparse
// expansion TestHostileLayers found), and what it splits must rebuild byte
// for byte.
func FuzzSplit(f *testing.F) {
	f.Add(layer(f, bytes.Repeat([]byte("berth"), 50_000), time.Unix(1700000000, 0)))
	f.Add(sparseTar(f, 1<<20))
	f.Add(truncatedTar(f, 1<<30))
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, data []byte) {
		pieces := map[Digest][]byte{}
		var total int
		ix, err := Split(bytes.NewReader(data), func(d Digest, b []byte) error {
			total += len(b)
			pieces[d] = append([]byte(nil), b...)
			return nil
		})
		if total > len(data) {
			t.Fatalf("split %d bytes of content out of a %d-byte layer", total, len(data))
		}
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := Rebuild(ix, func(d Digest) ([]byte, error) { return pieces[d], nil }, &out); err != nil {
			t.Fatalf("rebuild: %v", err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatal("the rebuilt layer differs")
		}
		if _, err := DecodeIndex(ix.Encode()); err != nil {
			t.Fatalf("the index does not decode: %v", err)
		}
	})
}
