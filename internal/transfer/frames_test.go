package transfer

import (
	"bytes"
	"testing"

	"github.com/berth-robotics/berth/internal/content"
)

func FuzzDecodeFrames(f *testing.F) {
	b := NewBatch()
	b = AppendFrame(b, Frame{Kind: KindPiece, Digest: content.Sum([]byte("a")), Data: []byte("zzz")})
	b = AppendFrame(b, Frame{Kind: KindDelta, Base: []content.Piece{{Digest: content.Sum([]byte("b")), Size: 1}}, Targets: []content.Piece{{Digest: content.Sum([]byte("c")), Size: 1}, {Digest: content.Sum([]byte("d")), Size: 1}}, Data: []byte("patch")})
	f.Add(b)
	f.Add([]byte(framesMagic))
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
