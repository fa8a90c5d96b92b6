package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
func (l *localSource) Pieces(_ context.Context, layer string, q []byte, bases []string) (io.ReadCloser, error) {
	b, err := l.pieces(layer, q, bases)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (l *localSource) pieces(layer string, q []byte, bases []string) ([]byte, error) {
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
func serverImage(t testing.TB, st *content.Store, tarball []byte) string {
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

func openStore(t testing.TB) *content.Store {
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
	t.Run("no index cache", func(t *testing.T) { testPull(t, nil) })
	t.Run("an index cache of 1", func(t *testing.T) { testPull(t, NewIndexCache(1)) })
}

func testPull(t *testing.T, cache *IndexCache) {
	server, device := openStore(t), openStore(t)
	src := &localSource{Server: Server{Store: server, Indexes: cache}}
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

// TestIndexCache: a hit is the same decoded index; the least recently used
// goes first; a layer the store lacks is an error, and not kept.
func TestIndexCache(t *testing.T) {
	st := openStore(t)
	serverImage(t, st, layer(t, 3, -1))
	serverImage(t, st, layer(t, 4, -1))
	serverImage(t, st, layer(t, 5, -1))
	ds := mustLayers(t, st)
	c := NewIndexCache(2)
	get := func(d content.Digest) *content.Index {
		t.Helper()
		ix, err := c.get(st, d)
		if err != nil || ix.DiffID != d {
			t.Fatalf("get %s: %v", d, err)
		}
		return ix
	}
	a := get(ds[0])
	if get(ds[0]) != a {
		t.Error("a second get decoded the index again")
	}
	get(ds[1])
	get(ds[0]) // ds[1] is now the least recently used
	get(ds[2])
	if _, ok := c.byID[ds[1]]; ok || len(c.byID) != 2 || c.order.Len() != 2 {
		t.Errorf("after a third layer: kept %d (%d in order), the least recently used still there: %v", len(c.byID), c.order.Len(), ok)
	}
	if get(ds[0]) != a {
		t.Error("the most recently used was dropped")
	}
	if _, err := c.get(st, content.Sum([]byte("no such layer"))); !errors.Is(err, release.ErrNotFound) {
		t.Errorf("a missing layer: %v", err)
	}
	if len(c.byID) != 2 {
		t.Errorf("a missing layer was kept: %d entries", len(c.byID))
	}
}
