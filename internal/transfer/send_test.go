package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/localapi"
)

// storeDevice is a device reduced to its content store: the edge the
// sender talks to. Load is a no-op (the engine part is tested in berthtest).
type storeDevice struct {
	store *content.Store
	asked int // digests asked about
}

func (d *storeDevice) ContentInfo(context.Context) (*localapi.ContentInfo, error) {
	info := &localapi.ContentInfo{}
	ls, err := d.store.Layers()
	for _, l := range ls {
		info.Layers = append(info.Layers, l.String())
	}
	return info, err
}

func (d *storeDevice) Missing(_ context.Context, q []byte) ([]byte, error) {
	d.asked += len(q) / 32
	return Receiver{Store: d.store}.Missing(q)
}

func (d *storeDevice) PutPieces(_ context.Context, b []byte) (*localapi.PutPiecesResponse, error) {
	resp, err := Receiver{Store: d.store}.PutBatch(b)
	return &resp, err
}

func (d *storeDevice) PutIndex(_ context.Context, diffID string, body []byte, base string) error {
	return Receiver{Store: d.store}.PutIndex(diffID, body, base)
}

func (d *storeDevice) Load(context.Context, localapi.LoadRequest) (*localapi.LoadResponse, error) {
	return &localapi.LoadResponse{}, nil
}

// layer makes a tar of n files of random text; edit changes file k.
func layer(t testing.TB, n, k int) []byte {
	t.Helper()
	return layerSeed(t, 1, n, k)
}

// layerSeed is layer with files of another seed.
func layerSeed(t testing.TB, seed int64, n, k int) []byte {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for i := 0; i < n; i++ {
		body := make([]byte, 2000+rng.Intn(4000))
		for j := range body {
			body[j] = 'a' + byte(rng.Intn(26))
		}
		if i == k {
			body = append(body, "one more line\n"...)
		}
		hdr := &tar.Header{Name: fmt.Sprintf("lib%d/f%04d.py", seed, i), Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.Close()
	return b.Bytes()
}

func push(t *testing.T, s *Sender, tarball []byte) *Summary {
	t.Helper()
	ix, err := content.Split(bytes.NewReader(tarball), s.Store.Put)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Store.PutIndex(ix); err != nil {
		t.Fatal(err)
	}
	img := imagetar.Image{ID: "sha256:" + ix.DiffID.String(), DiffIDs: []string{ix.DiffID.String()}}
	sum, err := s.send(context.Background(), []imagetar.Image{img}, map[string]*content.Index{ix.DiffID.String(): ix}, &Summary{}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// TestAskOnlyAboutUnknownPieces: after one file changes in a layer of many,
// the sender asks the device only about the pieces no layer it holds has;
// and when the device turns out to lack pieces it was assumed to hold, the
// sender asks about all of them and still completes.
func TestAskOnlyAboutUnknownPieces(t *testing.T) {
	senderStore, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	devDir := t.TempDir()
	devStore, err := content.Open(devDir)
	if err != nil {
		t.Fatal(err)
	}
	dev := &storeDevice{store: devStore}
	s := &Sender{Store: senderStore, Device: dev}

	first := push(t, s, layer(t, 500, -1))
	if dev.asked < 500 || first.PiecesSent < 500 {
		t.Fatalf("first push asked %d, sent %d pieces; want all 500 files", dev.asked, first.PiecesSent)
	}

	dev.asked = 0
	second := push(t, s, layer(t, 500, 7))
	if dev.asked != 1 || second.PiecesSent != 1 || second.AskBytes != 32 || second.DeltaFiles != 1 {
		t.Fatalf("one file changed: asked about %d pieces (%d bytes), sent %d; want 1", dev.asked, second.AskBytes, second.PiecesSent)
	}

	// The device loses a piece of a layer it lists as held.
	ix, err := devStore.Index(mustLayers(t, devStore)[0])
	if err != nil {
		t.Fatal(err)
	}
	h := ix.Pieces()[3].Digest.Hex()
	if err := os.Remove(filepath.Join(devDir, "pieces", h[:2], h)); err != nil {
		t.Fatal(err)
	}
	dev.asked = 0
	third := push(t, s, layer(t, 500, 9))
	if dev.asked < 500 || third.PiecesSent < 2 {
		t.Fatalf("after the device lost a piece: asked %d, sent %d; want a full question and the lost piece re-sent", dev.asked, third.PiecesSent)
	}
	for _, l := range mustLayers(t, devStore) {
		ix, _ := devStore.Index(l)
		if m := devStore.Missing(ix); len(m) > 0 && l.String() == third.Images[0][len("sha256:"):] {
			t.Fatalf("layer %s still lacks %d pieces", l, len(m))
		}
	}
}

func mustLayers(t testing.TB, s *content.Store) []content.Digest {
	t.Helper()
	ls, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// TestPushCached: an image whose config, indexes and pieces the sender holds
// goes to another device without being read again; one it lacks any part of
// is left to a full read, with nothing sent.
func TestPushCached(t *testing.T) {
	senderStore, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ix, err := content.Split(bytes.NewReader(layer(t, 50, -1)), senderStore.Put)
	if err != nil {
		t.Fatal(err)
	}
	if err := senderStore.PutIndex(ix); err != nil {
		t.Fatal(err)
	}
	cfg := []byte(fmt.Sprintf(`{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":[%q]}}`, ix.DiffID.String()))
	if err := senderStore.Put(content.Sum(cfg), cfg); err != nil {
		t.Fatal(err)
	}
	id := "sha256:" + content.Sum(cfg).Hex()
	devStore, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := &Sender{Store: senderStore, Device: &storeDevice{store: devStore}}

	if _, ok, err := s.PushCached(context.Background(), []CachedImage{{ID: "sha256:" + content.Sum([]byte("unknown")).Hex()}}); ok || err != nil {
		t.Fatalf("unknown image: ok=%v err=%v", ok, err)
	}
	sum, ok, err := s.PushCached(context.Background(), []CachedImage{{ID: id, Tags: []string{"robot/app:1"}}})
	if err != nil || !ok || !sum.CacheHit || sum.PiecesSent < 50 {
		t.Fatalf("cached push: ok=%v err=%v %+v", ok, err, sum)
	}
	if _, err := devStore.Index(ix.DiffID); err != nil {
		t.Fatalf("the device did not get the layer: %v", err)
	}
}
