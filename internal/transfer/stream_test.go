package transfer

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/localapi"
)

// chainDevice is a storeDevice that also loads layer stacks ahead
// (recorded: the stacks, in order, and the final loads).
type chainDevice struct {
	storeDevice
	mu     sync.Mutex
	chains [][]string
	loads  int
	pieces int // batches stored
}

func (d *chainDevice) LoadChain(_ context.Context, req localapi.LoadChainRequest) (*localapi.LoadResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range req.DiffIDs {
		dd, _ := content.ParseDigest(l)
		ix, err := d.store.Index(dd)
		if err != nil {
			return nil, fmt.Errorf("load chain: layer %s not in the store: %w", l, err)
		}
		if m := d.store.Missing(ix); len(m) > 0 {
			return nil, fmt.Errorf("load chain: layer %s lacks %d pieces", l, len(m))
		}
	}
	d.chains = append(d.chains, req.DiffIDs)
	return &localapi.LoadResponse{LayersLoaded: 1}, nil
}

func (d *chainDevice) ContentInfo(ctx context.Context) (*localapi.ContentInfo, error) {
	info, err := d.storeDevice.ContentInfo(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.chains {
		info.Chains = append(info.Chains, chainOf(c))
	}
	return info, err
}

func (d *chainDevice) Load(context.Context, localapi.LoadRequest) (*localapi.LoadResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.loads++
	return &localapi.LoadResponse{}, nil
}

func (d *chainDevice) PutPieces(ctx context.Context, b []byte) (*localapi.PutPiecesResponse, error) {
	r, err := d.storeDevice.PutPieces(ctx, b)
	d.mu.Lock()
	d.pieces++
	d.mu.Unlock()
	return r, err
}

func (d *chainDevice) batches() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pieces
}

// streamLayers reads tarballs into the sender's store and hands them to a
// stream in the order given, then the image.
func streamLayers(t *testing.T, st *Stream, s *Sender, cfg []byte, tarballs [][]byte, between func(i int)) *Summary {
	t.Helper()
	for i, tb := range tarballs {
		ix, err := s.Store.SplitInto(bytes.NewReader(tb), func(fs []content.File) error {
			st.Files(fs)
			return st.Err()
		})
		if err != nil {
			t.Fatal(err)
		}
		st.Layer(ix)
		if between != nil {
			between(i)
		}
	}
	img, err := imagetar.FromConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st.Image(img)
	sum, err := st.Close()
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func configOf(layers ...[]byte) ([]byte, []string) {
	var ids []string
	for _, l := range layers {
		ids = append(ids, content.Sum(l).String())
	}
	cfg := fmt.Appendf(nil, `{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["%s"]}}`, joinQuoted(ids))
	return cfg, ids
}

func joinQuoted(ids []string) string {
	var b bytes.Buffer
	for i, id := range ids {
		if i > 0 {
			b.WriteString(`","`)
		}
		b.WriteString(id)
	}
	return b.String()
}

// TestStream: a first push streams — pieces reach the device before the
// last layer is read, and the device loads each layer stack as soon as it
// and those under it are in, bottom first whatever order the layers come
// in; a second push of one changed file sends that file as a delta and
// loads only the new top.
func TestStream(t *testing.T) {
	senderStore, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	devStore, err := content.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dev := &chainDevice{storeDevice: storeDevice{store: devStore}}
	s := &Sender{Store: senderStore, Device: dev, BatchBytes: 256 << 10}
	base, runtime, app := layer(t, 400, -1), layerSeed(t, 2, 300, -1), layerSeed(t, 3, 20, -1)
	cfg, ids := configOf(base, runtime, app)

	st, err := s.Stream(context.Background(), []StreamImage{{DiffIDs: ids, Tags: []string{"robot/app:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	// The engine pushes layers side by side: the small top one is in first.
	loaded := func() int {
		dev.mu.Lock()
		defer dev.mu.Unlock()
		return len(dev.chains)
	}
	sum := streamLayers(t, st, s, cfg, [][]byte{app, base, runtime}, func(i int) {
		// Each stack is loaded once it and those under it are in: none
		// after the top layer alone, the base after the base, then both.
		want := []int{0, 1, 3}[i]
		for deadline := time.Now().Add(time.Minute); loaded() < want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("after layer %d: %d stacks loaded, want %d", i, loaded(), want)
			}
		}
		// Before the last layer is given, the first ones' pieces are out.
		if i == 1 && dev.batches() == 0 {
			t.Fatal("no batch was sent before the last layer was read")
		}
	})
	want := [][]string{ids[:1], ids[:2], ids[:3]}
	if !slices.EqualFunc(dev.chains, want, slices.Equal) || dev.loads != 1 {
		t.Fatalf("loads ahead %v, final loads %d; want %v, 1", dev.chains, dev.loads, want)
	}
	if sum.PartialLoads != 3 || sum.LayersNeeded != 3 || !sum.Streamed || sum.BytesChanged == 0 {
		t.Errorf("summary: %+v", sum)
	}
	for _, id := range ids {
		d, _ := content.ParseDigest(id)
		if ix, err := devStore.Index(d); err != nil || len(devStore.Missing(ix)) > 0 {
			t.Fatalf("layer %s on the device: %v", id, err)
		}
	}

	// One file of the runtime changed: the device holds the old layers.
	runtime2 := layerSeed(t, 2, 300, 17)
	cfg2, ids2 := configOf(base, runtime2, app)
	asked := dev.asked
	st, err = s.Stream(context.Background(), []StreamImage{{DiffIDs: ids2}})
	if err != nil {
		t.Fatal(err)
	}
	dev.mu.Lock()
	dev.chains = nil
	dev.mu.Unlock()
	sum = streamLayers(t, st, s, cfg2, [][]byte{base, runtime2, app}, func(i int) {
		for deadline := time.Now().Add(time.Minute); i == 2 && loaded() < 2; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d stacks loaded, want 2", loaded())
			}
		}
	})
	if sum.DeltaFiles != 1 || sum.PiecesSent != 1 || dev.asked-asked != 1 {
		t.Errorf("one file changed: %d delta files, %d pieces sent, %d asked; want 1, 1, 1", sum.DeltaFiles, sum.PiecesSent, dev.asked-asked)
	}
	if want := [][]string{ids2[:2], ids2[:3]}; !slices.EqualFunc(dev.chains, want, slices.Equal) {
		t.Errorf("loads ahead %v, want %v", dev.chains, want)
	}
}

// TestStreamOldAgent: a device that cannot load ahead gets everything at
// the final load.
func TestStreamOldAgent(t *testing.T) {
	senderStore, _ := content.Open(t.TempDir())
	devStore, _ := content.Open(t.TempDir())
	s := &Sender{Store: senderStore, Device: &storeDevice{store: devStore}}
	a, b := layer(t, 50, -1), layerSeed(t, 5, 30, -1)
	cfg, ids := configOf(a, b)
	st, err := s.Stream(context.Background(), []StreamImage{{DiffIDs: ids}})
	if err != nil {
		t.Fatal(err)
	}
	sum := streamLayers(t, st, s, cfg, [][]byte{a, b}, nil)
	if sum.PartialLoads != 0 || sum.LayersNeeded != 2 {
		t.Errorf("summary: %+v", sum)
	}
}

func chainOf(ids []string) string {
	c := imagetar.ChainIDs(ids)
	return c[len(c)-1]
}
