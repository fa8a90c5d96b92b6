package transfer

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/content"
)

func TestCompressedBatch(t *testing.T) {
	enc, _ := zstd.NewWriter(nil)
	b := NewBatch()
	var want []string
	for i := 0; i < 100; i++ {
		data := bytes.Repeat([]byte{byte(i)}, 1000+i)
		b = AppendFrame(b, Frame{Kind: KindRaw, Digest: content.Sum(data), Data: data})
		want = append(want, string(data))
	}
	z := CompressBatch(enc, b)
	if len(z) > len(b)/10 {
		t.Errorf("compressed batch: %d of %d bytes", len(z), len(b))
	}
	var got []string
	if err := DecodeFrames(z, func(f Frame) error {
		if f.Kind != KindRaw || f.Digest != content.Sum(f.Data) {
			t.Errorf("frame %d: kind %d", len(got), f.Kind)
		}
		got = append(got, string(f.Data))
		return nil
	}); err != nil || len(got) != len(want) {
		t.Fatalf("decoded %d of %d frames: %v", len(got), len(want), err)
	}
	// A bomb: a small body that would grow past MaxBatch is refused.
	big := AppendFrame(NewBatch(), Frame{Kind: KindRaw, Data: make([]byte, MaxBatch)})
	if err := DecodeFrames(CompressBatch(enc, big), func(Frame) error { return nil }); err == nil {
		t.Error("a batch growing past MaxBatch was accepted")
	}
}

func FuzzDecodeFrames(f *testing.F) {
	b := NewBatch()
	b = AppendFrame(b, Frame{Kind: KindPiece, Digest: content.Sum([]byte("a")), Data: []byte("zzz")})
	b = AppendFrame(b, Frame{Kind: KindDelta, Base: []content.Piece{{Digest: content.Sum([]byte("b")), Size: 1}}, Targets: []content.Piece{{Digest: content.Sum([]byte("c")), Size: 1}, {Digest: content.Sum([]byte("d")), Size: 1}}, Data: []byte("patch")})
	b = AppendFrame(b, Frame{Kind: KindRaw, Digest: content.Sum([]byte("e")), Data: []byte("e")})
	f.Add(b)
	f.Add([]byte(framesMagic))
	enc, _ := zstd.NewWriter(nil)
	f.Add(CompressBatch(enc, b))
	reencode := func(data []byte) ([]byte, error) {
		out := NewBatch()
		err := DecodeFrames(data, func(fr Frame) error {
			out = AppendFrame(out, fr)
			return nil
		})
		return out, err
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Varints may come overlong; what decodes must re-encode stably.
		out, err := reencode(data)
		if err != nil {
			return
		}
		again, err := reencode(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("re-encoding is not stable: %v", err)
		}
	})
}
