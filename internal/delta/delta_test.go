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
