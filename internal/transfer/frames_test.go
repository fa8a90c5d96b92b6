package transfer

import (
	"bytes"
	"io"
	"testing"

	"github.com/berth-robotics/berth/internal/content"
)

func TestCompressedBatch(t *testing.T) {
	b := NewBatch()
	var want []string
	for i := 0; i < 100; i++ {
		data := bytes.Repeat([]byte{byte(i)}, 1000+i)
		b = AppendFrame(b, Frame{Kind: KindRaw, Digest: content.Sum(data), Data: data})
		want = append(want, string(data))
	}
	z := CompressBatch(b)
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
	if err := DecodeFrames(CompressBatch(big), func(Frame) error { return nil }); err == nil {
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
	f.Add(CompressBatch(b))
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

// cutReader is a stream that breaks off: its bytes, then err.
type cutReader struct {
	b   []byte
	err error
}

func (c *cutReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, c.err
	}
	n := copy(p, c.b)
	c.b = c.b[n:]
	return n, nil
}

// TestCutBatchKeepsWholeFrames: a compressed batch that breaks off anywhere
// yields every frame that came whole but those in the last AlignEvery bytes,
// or the frame in flight when it is larger. The pieces are incompressible,
// so the bytes on the wire are the batch's own.
func TestCutBatchKeepsWholeFrames(t *testing.T) {
	batch := benchBatch(t, "random", 2<<20)
	ranges := frameRanges(batch)
	if len(ranges) < 20 || ranges[len(ranges)-1][1] != len(batch) {
		t.Fatalf("frameRanges: %d frames, last ends at %d of %d", len(ranges), ranges[len(ranges)-1][1], len(batch))
	}
	z := CompressBatch(batch)
	over := len(z) - len(batch) // the zstd frame's and blocks' headers
	if over < 0 || over > 1024 {
		t.Fatalf("incompressible batch: %d bytes compressed, %d raw", len(z), len(batch))
	}
	worst := 0
	for c := 0; c < len(z); c += 8191 {
		kept := 0
		err := DecodeFramesFrom(&cutReader{b: z[:c], err: io.ErrUnexpectedEOF}, func(Frame) error { kept++; return nil })
		if err == nil && c < len(z) {
			t.Fatalf("cut at %d: no error", c)
		}
		end := len(framesMagic) // of the last frame kept
		if kept > 0 {
			end = ranges[kept-1][1]
		}
		lost := c - len(zframesMagic) - end // and headers: at most over
		limit := AlignEvery
		if kept < len(ranges) {
			limit = max(limit, ranges[kept][1]-ranges[kept][0])
		}
		if lost > limit+over {
			t.Errorf("cut at %d of %d: %d frames kept, %d bytes lost; want at most %d", c, len(z), kept, lost, limit)
		}
		worst = max(worst, lost)
	}
	t.Logf("%d frames, %d bytes: at most %d bytes lost at a cut", len(ranges), len(batch), worst)
}
