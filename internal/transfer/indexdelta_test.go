package transfer

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestIndexDeltaRoundTrip(t *testing.T) {
	var a, b strings.Builder
	for i := 0; i < 20000; i++ {
		fmt.Fprintf(&a, "usr/lib/python3/pkg%03d/mod%05d.py mtime=1700000000 size=%d\n", i%300, i, i*7)
		fmt.Fprintf(&b, "usr/lib/python3/pkg%03d/mod%05d.py mtime=1700005000 size=%d\n", i%300, i, i*7)
	}
	base, raw := []byte(a.String()), []byte(b.String())
	z, err := EncodeIndexDelta(base, raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(z) > len(raw)/20 {
		t.Errorf("delta of an index whose every mtime changed is %d bytes of %d", len(z), len(raw))
	}
	out, err := DecodeIndexDelta(base, z, len(raw))
	if err != nil || !bytes.Equal(out, raw) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := DecodeIndexDelta(base, z, len(raw)/2); err == nil {
		t.Error("output beyond the limit was accepted")
	}
	if _, err := DecodeIndexDelta([]byte("another base"), z, len(raw)); err == nil {
		t.Error("decoded against the wrong base")
	}
}

func FuzzDecodeIndexDelta(f *testing.F) {
	base := []byte(strings.Repeat("usr/lib/x.so 1700000000\n", 100))
	z, _ := EncodeIndexDelta(base, bytes.ReplaceAll(base, []byte("17"), []byte("18")))
	f.Add(z)
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, z []byte) {
		out, err := DecodeIndexDelta(base, z, 1<<20)
		if err == nil && len(out) > 1<<20 {
			t.Fatalf("%d bytes past the limit", len(out))
		}
	})
}
