package delta

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	old := make([]byte, 200<<10)
	rng.Read(old)
	nw := append([]byte(nil), old...)
	copy(nw[1000:], "a change")
	nw = append(nw[:50000], append([]byte("inserted bytes"), nw[50000:]...)...)
	nw = append(nw[:150000], nw[160000:]...)
	for i := 100000; i < 110000; i += 97 {
		nw[i]++ // shifted "addresses"
	}
	for _, tc := range []struct {
		name    string
		old, nw []byte
	}{
		{"edits", old, nw},
		{"empty-old", nil, nw[:1000]},
		{"empty-new", old, nil},
		{"same", old, old},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Diff(tc.old, tc.nw)
			got, err := Patch(tc.old, p, len(tc.nw))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.nw) {
				t.Fatal("patched output differs")
			}
			t.Logf("%d → %d bytes: patch %d", len(tc.old), len(tc.nw), len(p))
		})
	}
	if p := Diff(old, nw); len(p) > 4<<10 {
		t.Errorf("patch of a few edits is %d bytes", len(p))
	}
	if _, err := Patch(old[:100], Diff(old, nw), len(nw)); !errors.Is(err, ErrBadPatch) {
		t.Errorf("patch against the wrong old file: %v", err)
	}
}

// TestRebuiltGoBinary: a one-line change in a Go program, rebuilt.
func TestRebuiltGoBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two Go programs")
	}
	dir := t.TempDir()
	src := "package main\nimport (\"fmt\"; \"net/http\")\nfunc main() { fmt.Println(\"GREETING\"); http.ListenAndServe(\":1\", nil) }\n"
	build := func(greeting string) []byte {
		os.WriteFile(filepath.Join(dir, "main.go"), []byte(strings.Replace(src, "GREETING", greeting, 1)), 0o644)
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\ngo 1.22\n"), 0o644)
		out := filepath.Join(dir, "bin")
		cmd := exec.Command("go", "build", "-o", out, ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatal(err, string(b))
		}
		b, _ := os.ReadFile(out)
		return b
	}
	a, b := build("hello"), build("hello, robot")
	p := Diff(a, b)
	got, err := Patch(a, p, len(b))
	if err != nil || !bytes.Equal(got, b) {
		t.Fatal("round trip", err)
	}
	t.Logf("Go binary %d bytes, one line changed: patch %d bytes", len(b), len(p))
	if len(p) > 64<<10 {
		t.Errorf("patch %d bytes > 64 KiB", len(p))
	}
}

func FuzzPatch(f *testing.F) {
	old := []byte("the quick brown fox jumps over the lazy dog")
	f.Add(Diff(old, []byte("the quick brown cat jumps over the lazy dog!")))
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, p []byte) {
		Patch(old, p, 1<<20)
	})
}

// TestDiffBounded: inputs that make a suffix sort or a naive matcher slow
// (long runs, periods, random data) still give right patches, within the
// index's compare budget.
func TestDiffBounded(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	random := make([]byte, 24<<20)
	rng.Read(random)
	changed := append([]byte(nil), random...)
	for i := 0; i < len(changed); i += 1 << 20 {
		changed[i] ^= 0xff
	}
	zeros := make([]byte, 8<<20)
	period := bytes.Repeat([]byte("abcdefgh12345678"), 1<<19)
	periodNew := append(append([]byte(nil), period[:3<<20]...), append([]byte("x"), period[3<<20:]...)...)
	for _, tc := range []struct {
		name    string
		old, nw []byte
	}{
		{"random-24MiB", random, changed},
		{"zeros", zeros, append(append([]byte(nil), zeros...), 1)},
		{"period", period, periodNew},
		{"unrelated", random[:4<<20], zeros[:4<<20]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && len(tc.old) > 8<<20 {
				t.Skip("large input")
			}
			x := newHashIndex(tc.old)
			budget := x.left
			p := diff(tc.old, tc.nw, x)
			got, err := Patch(tc.old, p, len(tc.nw))
			if err != nil || !bytes.Equal(got, tc.nw) {
				t.Fatalf("round trip: %v", err)
			}
			// Past the budget only the last extension runs, over at most
			// what follows the last match.
			if spent, most := budget-x.left, budget+4*int64(len(tc.nw))+maxMatch+window; spent > most {
				t.Errorf("compared %d bytes, at most %d", spent, most)
			}
			t.Logf("%d → %d bytes: patch %d, compared %d of %d", len(tc.old), len(tc.nw), len(p), budget-x.left, budget)
		})
	}
}

// TestMatchersAgree: the hash index finds deltas about as small as the
// suffix array it replaced.
func TestMatchersAgree(t *testing.T) {
	rng := rand.New(rand.NewSource(9))
	old := make([]byte, 1<<20)
	rng.Read(old)
	nw := append([]byte(nil), old[:300000]...)
	nw = append(nw, []byte("an insertion in the middle")...)
	nw = append(nw, old[300000:]...)
	for i := 500000; i < 600000; i += 61 {
		nw[i] += 3
	}
	h := diff(old, nw, newHashIndex(old))
	s := diff(old, nw, newSAIndex(old))
	for _, p := range [][]byte{h, s} {
		if got, err := Patch(old, p, len(nw)); err != nil || !bytes.Equal(got, nw) {
			t.Fatalf("round trip: %v", err)
		}
	}
	if len(h) > len(s)*11/10+64 {
		t.Errorf("hash index patch %d bytes, suffix array %d", len(h), len(s))
	}
}

// BenchmarkDiff compares the delta of a rebuilt program (examples/robot's
// sensor with one line added, and a new version string, as berth build
// makes it) by the hash index (Diff), the suffix array it replaced, and
// zstd with the old file as a raw dictionary (patch-from), at two levels:
// time per delta and the patch's size (patch-bytes).
//
//	go test ./internal/delta -run '^$' -bench Diff -benchtime 3x
func BenchmarkDiff(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "robot")
	if out, err := exec.Command("cp", "-a", "../../examples/robot", src).CombinedOutput(); err != nil {
		b.Fatal(err, string(out))
	}
	build := func(version string) []byte {
		out := filepath.Join(dir, "sensor-"+version)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", out, "./sensor")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatal(err, string(o))
		}
		data, err := os.ReadFile(out)
		if err != nil {
			b.Fatal(err)
		}
		return data
	}
	old := build("v1.2.0")
	main := filepath.Join(src, "sensor", "main.go")
	code, err := os.ReadFile(main)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(main, bytes.Replace(code, []byte("func main() {"), []byte("func main() {\n\tlog.Println(\"one line changed\")"), 1), 0o644); err != nil {
		b.Fatal(err)
	}
	nw := build("v1.2.0-1-gabcdef0-dirty")
	zstdDict := func(level zstd.EncoderLevel) func() []byte {
		return func() []byte {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(32<<20), zstd.WithEncoderDictRaw(1, old))
			if err != nil {
				b.Fatal(err)
			}
			defer enc.Close()
			return enc.EncodeAll(nw, nil)
		}
	}
	for _, m := range []struct {
		name string
		fn   func() []byte
	}{
		{"hash-index", func() []byte { return Diff(old, nw) }},
		{"suffix-array", func() []byte { return diff(old, nw, newSAIndex(old)) }},
		{"zstd-dict-better", zstdDict(zstd.SpeedBetterCompression)},
		{"zstd-dict-best", zstdDict(zstd.SpeedBestCompression)},
	} {
		b.Run(m.name, func(b *testing.B) {
			b.ReportAllocs()
			var p []byte
			for i := 0; i < b.N; i++ {
				p = m.fn()
			}
			b.ReportMetric(float64(len(p)), "patch-bytes")
			b.ReportMetric(float64(len(nw)), "file-bytes")
		})
	}
}
