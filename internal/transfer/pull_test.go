package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/release"
)

// localSource is a Server called in-process (the fleet server wraps the same
// calls in HTTP); damage flips a byte of the next batch's first raw piece.
type localSource struct {
	Server
	requests int
	damage   bool
}

func (l *localSource) Config(_ context.Context, id string) ([]byte, error) {
	return l.Server.Config(id)
}
func (l *localSource) Index(_ context.Context, d string, bases []string) ([]byte, string, error) {
	return l.Server.Index(d, bases)
}
func (l *localSource) Pieces(_ context.Context, layer string, q []byte, bases []string) ([]byte, error) {
	l.requests++
	b, err := l.Server.Pieces(layer, q, bases)
	if err != nil || !l.damage {
		return b, err
	}
	l.damage = false
	var fs []Frame
	if err := DecodeFrames(b, func(f Frame) error { fs = append(fs, f); return nil }); err != nil {
		return nil, err
	}
	fs[0].Data[0] ^= 0xff
	out := NewBatch()
	for _, f := range fs {
		out = AppendFrame(out, f)
	}
	return out, nil
}

// serverImage puts a one-layer image into the server's store, as an upload
// would, and returns its ID.
func serverImage(t *testing.T, st *content.Store, tarball []byte) string {
	t.Helper()
	ix, err := content.Split(bytes.NewReader(tarball), st.Put)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutIndex(ix); err != nil {
		t.Fatal(err)
	}
	cfg := []byte(fmt.Sprintf(`{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[%q]}}`, ix.DiffID.String()))
	if err := st.Put(content.Sum(cfg), cfg); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + content.Sum(cfg).Hex()
}

func openStore(t *testing.T) *content.Store {
	t.Helper()
	s, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPull: a device pulls an image from a server's store; then the next
// release, one file changed, costs a delta and an index delta; a damaged
// batch is refused and the next try fetches what is left; a device cannot
// ask for pieces outside the layer it names.
func TestPull(t *testing.T) {
	server, device := openStore(t), openStore(t)
	src := &localSource{Server: Server{Store: server}}
	none := func(string) bool { return false }

	v1 := serverImage(t, server, layer(t, 300, -1))
	p := &Puller{Store: device, Source: src}
	imgs, sum, err := p.Pull(context.Background(), []string{v1}, none)
	if err != nil || len(imgs) != 1 || imgs[0].ID != v1 || sum.PiecesSent < 300 {
		t.Fatalf("first pull: %v %+v", err, sum)
	}

	v2 := serverImage(t, server, layer(t, 300, 42))
	_, sum, err = p.Pull(context.Background(), []string{v2}, none)
	if err != nil {
		t.Fatal(err)
	}
	if sum.BytesSent > 4<<10 || sum.BytesChanged > 8<<10 {
		t.Errorf("one file changed: %d bytes on the wire (%d of them index), %d changed; want a few KiB", sum.BytesSent, sum.IndexBytes, sum.BytesChanged)
	}

	device2 := openStore(t)
	src.damage = true
	_, _, err = (&Puller{Store: device2, Source: src}).Pull(context.Background(), []string{v1}, none)
	if !errors.Is(err, release.ErrInvalid) {
		t.Fatalf("damaged batch: %v", err)
	}
	src.requests = 0
	if _, _, err = (&Puller{Store: device2, Source: src}).Pull(context.Background(), []string{v1}, none); err != nil {
		t.Fatal(err)
	}

	// Pieces of another layer than the one named are refused.
	ix, _ := server.Index(mustLayers(t, server)[0])
	other, _ := server.Index(mustLayers(t, server)[1])
	var q []byte
	for _, pc := range other.Pieces() {
		if !hasPiece(ix, pc.Digest) {
			q = append(q, pc.Digest[:]...)
			break
		}
	}
	if _, err := src.Server.Pieces(ix.DiffID.String(), q, nil); !errors.Is(err, release.ErrNotFound) {
		t.Fatalf("a piece of another layer: %v", err)
	}
}

func hasPiece(ix *content.Index, d content.Digest) bool {
	for _, p := range ix.Pieces() {
		if p.Digest == d {
			return true
		}
	}
	return false
}
