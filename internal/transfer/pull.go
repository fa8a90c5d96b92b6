package transfer

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/release"
)

// The pull direction: a device fetches from a fleet server what its target
// needs. It mirrors a push: the device has the layer indexes sent first (as
// deltas from layers it holds), works out from them which pieces it lacks,
// and asks for those, naming the layers it holds so that the server can send
// changed files as deltas against them.

// Source is a fleet server as a pulling device sees it.
type Source interface {
	// Config returns an image's config (its ID is the config's SHA-256).
	Config(ctx context.Context, imageID string) ([]byte, error)
	// Index returns layer diffID's index, encoded as encodeIndex does
	// against one of bases (base names which; "" for none).
	Index(ctx context.Context, diffID string, bases []string) (body []byte, base string, err error)
	// Pieces returns one batch holding the pieces of layer asked for
	// (concatenated 32-byte digests), as raw pieces or as deltas against
	// files of the layers in bases, as a stream the caller reads as it
	// arrives (and closes): when it breaks off, the whole pieces that came
	// are kept.
	Pieces(ctx context.Context, layer string, digests []byte, bases []string) (io.ReadCloser, error)
}

// Server answers a Source's questions from a content store: the fleet
// server's side. The caller checks that whoever asks may read what it names.
type Server struct {
	Store *content.Store
	// Indexes, if set, keeps decoded layer indexes between questions.
	Indexes *IndexCache
}

// maxBases bounds the layers a request may name as delta bases.
const maxBases = 256

func (s Server) bases(names []string) []*content.Index {
	var out []*content.Index
	for i, n := range names {
		if i == maxBases {
			break
		}
		if d, err := content.ParseDigest(n); err == nil {
			if ix, err := s.Indexes.get(s.Store, d); err == nil {
				out = append(out, ix)
			}
		}
	}
	return out
}

// Config returns an image's config.
func (s Server) Config(imageID string) ([]byte, error) {
	d, err := content.ParseDigest(imageID)
	if err != nil {
		return nil, err
	}
	return s.Store.Get(d)
}

// Index returns a layer's index for a device that holds bases.
func (s Server) Index(diffID string, bases []string) ([]byte, string, error) {
	d, err := content.ParseDigest(diffID)
	if err != nil {
		return nil, "", err
	}
	ix, err := s.Indexes.get(s.Store, d)
	if err != nil {
		return nil, "", err
	}
	return encodeIndex(ix, s.bases(bases))
}

// Pieces returns one compressed batch with the pieces of layer asked for.
// Digests that are not pieces of layer are refused: a device reads only
// what its releases name.
func (s Server) Pieces(layer string, digests []byte, bases []string) ([]byte, error) {
	d, err := content.ParseDigest(layer)
	if err != nil {
		return nil, err
	}
	ix, err := s.Indexes.get(s.Store, d)
	if err != nil {
		return nil, err
	}
	if len(digests)%32 != 0 || len(digests) > MaxBatch/64 {
		return nil, fmt.Errorf("pieces: want concatenated 32-byte digests: %w", release.ErrInvalid)
	}
	of := map[content.Digest]bool{}
	for _, p := range ix.Pieces() {
		of[p.Digest] = true
	}
	var want []content.Digest
	for i := 0; i < len(digests); i += 32 {
		var pd content.Digest
		copy(pd[:], digests[i:i+32])
		if !of[pd] {
			return nil, fmt.Errorf("piece %s is not in layer %s: %w", pd, d, release.ErrNotFound)
		}
		want = append(want, pd)
	}
	batch := NewBatch()
	err = framer{s.Store}.frames([]*content.Index{ix}, want, s.bases(bases), &Summary{}, func(f Frame, _ int64) error {
		batch = AppendFrame(batch, f)
		if len(batch) > MaxBatch {
			return fmt.Errorf("pieces: more than %d MiB asked at once: %w", MaxBatch>>20, release.ErrInvalid)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return CompressBatch(batch), nil
}

// sharedEncoder compresses the batches a server answers. EncodeAll may be
// called by many requests at once (each runs on one goroutine, up to
// GOMAXPROCS at a time), so one encoder serves them all instead of one
// built, and its buffers allocated, per request (BenchmarkPiecesEncoder).
var sharedEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
})

// Puller fetches images from a Source into a device's content store.
type Puller struct {
	Store    *content.Store
	Source   Source
	Progress func(Progress)
	// BatchBytes is how many changed bytes one request asks for (default
	// 8 MiB).
	BatchBytes int
	Now        func() time.Time
}

// Pull makes the layers of the images in the store complete, except those
// loaded says the engine holds already (by chain ID). It returns the images,
// ready for the agent to load.
func (p *Puller) Pull(ctx context.Context, imageIDs []string, loaded func(chainID string) bool) ([]imagetar.Image, *Summary, error) {
	now := p.Now
	if now == nil {
		now = time.Now
	}
	t0 := now()
	sum := &Summary{}
	batchMax := int64(p.BatchBytes)
	if batchMax <= 0 {
		batchMax = 8 << 20
	}
	held, err := p.Store.Layers()
	if err != nil {
		return nil, nil, err
	}
	var bases []string
	for i := len(held) - 1; i >= 0 && len(bases) < maxBases; i-- {
		bases = append(bases, held[i].String())
	}
	var imgs []imagetar.Image
	done := map[string]bool{}
	for _, id := range imageIDs {
		img, err := p.config(ctx, id)
		if err != nil {
			return nil, nil, err
		}
		imgs = append(imgs, img)
		sum.Images = append(sum.Images, img.ID)
		for i, ch := range imagetar.ChainIDs(img.DiffIDs) {
			d := img.DiffIDs[i]
			sum.Layers++
			if loaded(ch) || done[d] {
				continue
			}
			done[d] = true
			sum.LayersNeeded++
			dd, err := content.ParseDigest(d)
			if err != nil {
				return nil, nil, err
			}
			if ix, err := p.Store.Index(dd); err == nil && len(p.Store.Missing(ix)) == 0 {
				sum.BytesLoaded += ix.Size
				continue // pushed or pulled before
			}
			body, base, err := p.Source.Index(ctx, d, bases)
			if err != nil {
				return nil, nil, fmt.Errorf("layer %s: %w", release.ShortID(d), err)
			}
			sum.IndexBytes += int64(len(body))
			sum.BytesSent += int64(len(body))
			ix, err := decodeIndex(p.Store, d, body, base)
			if err != nil {
				return nil, nil, err
			}
			sum.BytesLoaded += ix.Size
			if err := p.pieces(ctx, ix, bases, batchMax, sum); err != nil {
				return nil, nil, err
			}
			if m := p.Store.Missing(ix); len(m) > 0 {
				return nil, nil, fmt.Errorf("layer %s: %d pieces did not arrive: %w", release.ShortID(d), len(m), release.ErrConflict)
			}
			if err := p.Store.PutIndex(ix); err != nil {
				return nil, nil, err
			}
			bases = append([]string{d}, bases...) // what arrived is a base too
		}
	}
	sum.SendSeconds = now().Sub(t0).Seconds()
	return imgs, sum, nil
}

// config fetches an image's config (or finds it in the store) and checks it
// is the one its ID names.
func (p *Puller) config(ctx context.Context, id string) (imagetar.Image, error) {
	d, err := content.ParseDigest(id)
	if err != nil {
		return imagetar.Image{}, err
	}
	cfg, err := p.Store.Get(d)
	if err != nil {
		if cfg, err = p.Source.Config(ctx, id); err != nil {
			return imagetar.Image{}, fmt.Errorf("image %s: %w", release.ShortID(id), err)
		}
		if err := p.Store.Put(d, cfg); err != nil {
			return imagetar.Image{}, fmt.Errorf("image %s: its config: %w", release.ShortID(id), err)
		}
	}
	return imagetar.FromConfig(cfg)
}

// pieces fetches the pieces of ix the store lacks, in requests of about
// batchMax changed bytes, each batch checked piece by piece on arrival.
func (p *Puller) pieces(ctx context.Context, ix *content.Index, bases []string, batchMax int64, sum *Summary) error {
	missing := p.Store.Missing(ix)
	var total int64
	for _, pc := range missing {
		total += int64(pc.Size)
	}
	sum.BytesChanged += total
	var q []byte
	var inQ, got int64
	flush := func() error {
		if len(q) == 0 {
			return nil
		}
		body, err := p.Source.Pieces(ctx, ix.DiffID.String(), q, bases)
		if err != nil {
			return fmt.Errorf("fetching pieces (what arrived is kept; the next try fetches the rest): %w", err)
		}
		cr := &countingReader{r: body}
		resp, err := Receiver{Store: p.Store}.PutBatchFrom(cr)
		body.Close()
		sum.PiecesSent += resp.Stored
		sum.BytesSent += cr.n
		if err != nil {
			return fmt.Errorf("fetching pieces (%d whole pieces of the batch were kept; the next try fetches the rest): %w", resp.Stored, err)
		}
		got += inQ
		if p.Progress != nil {
			p.Progress(Progress{Stage: "send", Done: got, Total: total, Wire: sum.BytesSent})
		}
		q, inQ = q[:0], 0
		return nil
	}
	seen := map[content.Digest]bool{}
	for _, pc := range missing {
		if seen[pc.Digest] {
			continue
		}
		seen[pc.Digest] = true
		q = append(q, pc.Digest[:]...)
		inQ += int64(pc.Size)
		if inQ >= batchMax || len(q) >= MaxBatch/128 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
