package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/delta"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

// Device is the part of localapi.Client that a transfer uses.
type Device interface {
	ContentInfo(ctx context.Context) (*localapi.ContentInfo, error)
	Missing(ctx context.Context, digests []byte) ([]byte, error)
	PutPieces(ctx context.Context, frames []byte) (*localapi.PutPiecesResponse, error)
	PutIndex(ctx context.Context, diffID string, body []byte, base string) error
	Load(ctx context.Context, req localapi.LoadRequest) (*localapi.LoadResponse, error)
}

// Summary says what a push moved. BytesSent counts what the sender wrote
// into the exchange (pieces, indexes, requests); SSH or TLS framing comes on top.
type Summary struct {
	Images       []string       `json:"images"`
	PerImage     []ImageSummary `json:"per_image"`
	Layers       int            `json:"layers"`
	LayersNeeded int            `json:"layers_needed"` // layers the device's engine lacked
	PiecesSent   int            `json:"pieces_sent"`
	DeltaFiles   int            `json:"delta_files"`   // changed files sent as binary deltas
	IndexBytes   int64          `json:"index_bytes"`   // layer indexes (tar headers and piece lists), as sent
	AskBytes     int64          `json:"ask_bytes"`     // the question "which of these pieces do you lack?"
	DeltaBytes   int64          `json:"delta_bytes"`   // binary deltas of changed files, as sent
	BytesChanged int64          `json:"bytes_changed"` // uncompressed bytes of the pieces the device lacked
	BytesSent    int64          `json:"bytes_sent"`
	BytesLoaded  int64          `json:"bytes_loaded"`
	CacheHit     bool           `json:"cache_hit,omitempty"` // the images came from the sender's cache, not read again
	// Source says where the images were read: "engine push" (the local
	// engine pushed them to berth's loopback endpoint), "docker save",
	// "cache", or an archive.
	Source       string `json:"source,omitempty"`
	Streamed     bool   `json:"streamed,omitempty"`      // pieces went out while the images were read (Stream)
	PartialLoads int    `json:"partial_loads,omitempty"` // layer stacks the device loaded before the last layer arrived
	// With Streamed, the phases overlap: the seconds are each from the
	// push's start to the phase's end (read, send), LoadSeconds is the
	// device's time loading, DoneSeconds the whole push.
	DoneSeconds float64 `json:"done_seconds,omitempty"`
	SaveSeconds float64 `json:"save_seconds"` // the local engine exporting the images (docker save) before the first byte
	ReadSeconds float64 `json:"read_seconds"` // reading, hashing and splitting the layers`
	SendSeconds float64 `json:"send_seconds"`
	LoadSeconds float64 `json:"load_seconds"`
}

// Add adds o's figures to s (several pushes, one total).
func (s *Summary) Add(o *Summary) {
	s.Images = append(s.Images, o.Images...)
	s.PerImage = append(s.PerImage, o.PerImage...)
	s.Layers += o.Layers
	s.LayersNeeded += o.LayersNeeded
	s.PiecesSent += o.PiecesSent
	s.DeltaFiles += o.DeltaFiles
	s.IndexBytes += o.IndexBytes
	s.AskBytes += o.AskBytes
	s.DeltaBytes += o.DeltaBytes
	s.BytesChanged += o.BytesChanged
	s.BytesSent += o.BytesSent
	s.BytesLoaded += o.BytesLoaded
	s.CacheHit = s.CacheHit || o.CacheHit
	s.Streamed = s.Streamed || o.Streamed
	s.PartialLoads += o.PartialLoads
	s.DoneSeconds += o.DoneSeconds
	if s.Source == "" {
		s.Source = o.Source
	}
	s.SaveSeconds += o.SaveSeconds
	s.ReadSeconds += o.ReadSeconds
	s.SendSeconds += o.SendSeconds
	s.LoadSeconds += o.LoadSeconds
}

// ImageSummary is one image's part of a push.
type ImageSummary struct {
	ID           string   `json:"id"`                  // the config's digest: the image's ID on the device
	EngineID     string   `json:"engine_id,omitempty"` // the local engine's ID, when that is another (containerd image store)
	Tags         []string `json:"tags,omitempty"`
	Layers       int      `json:"layers"`
	LayersNeeded int      `json:"layers_needed"` // layers the device's engine lacked
	BytesChanged int64    `json:"bytes_changed"` // uncompressed bytes of its pieces the device lacked
}

// Human prints a byte count for people.
func Human(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// Progress is reported while pieces go out.
type Progress struct {
	Stage   string  // read, plan, send, load
	Done    int64   // changed bytes (uncompressed) sent so far
	Total   int64   // changed bytes to send
	Wire    int64   // bytes written into the exchange so far
	Rate    float64 // wire bytes/s
	ETA     time.Duration
	Message string
}

// Sender pushes images to a device, keeping the pieces and indexes of what it
// read in a local store, so that it can send any piece a device lacks.
type Sender struct {
	Store    *content.Store
	Device   Device
	Progress func(Progress)
	// BatchBytes is the size of one acknowledged batch before compression
	// (default 8 MiB).
	BatchBytes int
	// Arch is the device's architecture: of an OCI layout listing several
	// platforms, only its image is sent.
	Arch string
	Now  func() time.Time
}

func (s *Sender) progress(p Progress) {
	if s.Progress != nil {
		s.Progress(p)
	}
}

// Push reads an image archive (`docker save` output) and makes its images
// present on the device.
func (s *Sender) Push(ctx context.Context, archive io.Reader) (*Summary, error) {
	now := s.Now
	if now == nil {
		now = time.Now
	}
	sum := &Summary{}
	t0 := now()
	s.progress(Progress{Stage: "read", Message: "reading and indexing the image layers"})
	indexes := map[string]*content.Index{}
	imgs, err := imagetar.ReadFor(archive, s.Arch, func(_ string, r io.Reader) (string, error) {
		b := s.Store.Batch()
		ix, err := content.Split(r, b.Put)
		if err == nil {
			err = b.Commit()
		}
		if err != nil {
			b.Abort()
			return "", err
		}
		if err := s.Store.PutIndex(ix); err != nil {
			return "", err
		}
		indexes[ix.DiffID.String()] = ix
		return ix.DiffID.String(), nil
	})
	if err != nil {
		return nil, err
	}
	for _, img := range imgs {
		// Keep the config too: the next push of this image to any device
		// needs no reading at all (see PushCached).
		if err := s.Store.Put(content.Sum(img.Config), img.Config); err != nil {
			return nil, err
		}
	}
	sum.ReadSeconds = now().Sub(t0).Seconds()
	return s.send(ctx, imgs, indexes, sum, now)
}

// CachedImage names an image to push from the sender's store alone.
type CachedImage struct {
	ID   string // sha256:… of its config
	Tags []string
}

// PushCached pushes images whose config, layer indexes and pieces are all in
// the sender's store, from an earlier Push, without reading them again
// (exporting a large image from an engine takes many seconds). ok is false,
// with nothing sent, when the store lacks any part of them.
func (s *Sender) PushCached(ctx context.Context, want []CachedImage) (sum *Summary, ok bool, err error) {
	now := s.Now
	if now == nil {
		now = time.Now
	}
	t0 := now()
	var imgs []imagetar.Image
	indexes := map[string]*content.Index{}
	for _, w := range want {
		d, err := content.ParseDigest(w.ID)
		if err != nil {
			return nil, false, err
		}
		cfg, err := s.Store.Get(d)
		if err != nil {
			return nil, false, nil
		}
		img, err := imagetar.FromConfig(cfg)
		if err != nil {
			return nil, false, nil
		}
		img.Tags = w.Tags
		for _, id := range img.DiffIDs {
			if indexes[id] != nil {
				continue
			}
			dd, err := content.ParseDigest(id)
			if err != nil {
				return nil, false, nil
			}
			ix, err := s.Store.Index(dd)
			if err != nil || len(s.Store.Missing(ix)) > 0 {
				return nil, false, nil
			}
			indexes[id] = ix
		}
		imgs = append(imgs, img)
	}
	sum = &Summary{CacheHit: true, ReadSeconds: now().Sub(t0).Seconds()}
	sum, err = s.send(ctx, imgs, indexes, sum, now)
	return sum, err == nil, err
}

func (s *Sender) send(ctx context.Context, imgs []imagetar.Image, indexes map[string]*content.Index, sum *Summary, now func() time.Time) (*Summary, error) {
	t1 := now()
	info, err := s.Device.ContentInfo(ctx)
	if err != nil {
		return nil, err
	}
	chains := map[string]bool{}
	for _, c := range info.Chains {
		chains[c] = true
	}
	inStore := map[string]bool{}
	for _, l := range info.Layers {
		inStore[l] = true
	}
	// Layers the device's engine lacks, and of those, the ones its store lacks.
	var send []*content.Index
	var loadBytes int64
	seen := map[string]bool{}
	for _, img := range imgs {
		if img.Arch != "" && info.Arch != "" && img.Arch != info.Arch {
			return nil, fmt.Errorf("image %s is for %s, the device runs %s; build or pull the %s variant: %w", tagOrID(img), img.Arch, info.Arch, info.Arch, release.ErrInvalid)
		}
		sum.Images = append(sum.Images, img.ID)
		for i, ch := range imagetar.ChainIDs(img.DiffIDs) {
			d := img.DiffIDs[i]
			sum.Layers++
			if chains[ch] || seen[d] {
				continue
			}
			seen[d] = true
			sum.LayersNeeded++
			ix := indexes[d]
			loadBytes += ix.Size
			if !inStore[d] {
				send = append(send, ix)
			}
		}
	}
	// Which pieces does the device lack? A layer the device's store holds
	// has all its pieces there (the store keeps an index only once its pieces
	// arrived, and collects no piece a kept index uses), so pieces of held
	// layers this sender knows are not asked about: after a small change the
	// question stays small too. The rest is asked.
	held := s.heldIndexes(info)
	known := map[content.Digest]bool{}
	for _, ix := range held {
		for _, p := range ix.Pieces() {
			known[p.Digest] = true
		}
	}
	missing, err := s.ask(ctx, send, known, sum)
	if err != nil {
		return nil, err
	}
	// Preflight: room for what arrives and what is loaded, or stop now.
	var total int64
	sizes := map[content.Digest]int64{}
	for _, ix := range send {
		for _, p := range ix.Pieces() {
			sizes[p.Digest] = int64(p.Size)
		}
	}
	missingSet := map[content.Digest]bool{}
	for _, d := range missing {
		sum.BytesChanged += sizes[d]
		missingSet[d] = true
	}
	total = sum.BytesChanged
	// Per image: what it needs (layers it shares with another image of the
	// push count for both).
	sending := map[string]*content.Index{}
	for _, ix := range send {
		sending[ix.DiffID.String()] = ix
	}
	for _, img := range imgs {
		is := ImageSummary{ID: img.ID, Tags: img.Tags, Layers: len(img.DiffIDs)}
		counted := map[content.Digest]bool{}
		for i, ch := range imagetar.ChainIDs(img.DiffIDs) {
			if chains[ch] {
				continue
			}
			is.LayersNeeded++
			if ix := sending[img.DiffIDs[i]]; ix != nil {
				for _, p := range ix.Pieces() {
					if missingSet[p.Digest] && !counted[p.Digest] {
						counted[p.Digest] = true
						is.BytesChanged += int64(p.Size)
					}
				}
			}
		}
		sum.PerImage = append(sum.PerImage, is)
		s.progress(Progress{Stage: "plan", Message: fmt.Sprintf("image %s: %d of %d layers needed, %s changed", tagOrID(img), is.LayersNeeded, is.Layers, Human(is.BytesChanged))})
	}
	if info.StateFree > 0 && uint64(total)+info.MinFree > info.StateFree {
		return nil, fmt.Errorf("the device has %d MiB free for its content store and needs up to %d MiB (plus %d MiB kept free); nothing was sent, the running release is untouched; free space on the device: %w", info.StateFree>>20, total>>20, info.MinFree>>20, release.ErrNoSpace)
	}
	if info.EngineFree > 0 && uint64(loadBytes)+info.MinFree > info.EngineFree {
		return nil, fmt.Errorf("the device's engine has %d MiB free and loading needs %d MiB (plus %d MiB kept free); nothing was sent, the running release is untouched; free space on the device (docker image prune): %w", info.EngineFree>>20, loadBytes>>20, info.MinFree>>20, release.ErrNoSpace)
	}

	// Send the missing pieces in acknowledged batches, each compressed as a
	// whole.
	batchMax := s.BatchBytes
	if batchMax <= 0 {
		batchMax = 8 << 20
	}
	batchMax = min(batchMax, MaxBatch/2)
	var wire, done int64
	start := now()
	batch, inBatch, batchChanged := NewBatch(), 0, int64(0)
	// One batch is in flight while the next is compressed: the device
	// stores one while this side prepares the other. Each is acknowledged
	// before the one after it goes.
	var inflight chan error
	drain := func() error {
		if inflight == nil {
			return nil
		}
		err := <-inflight
		inflight = nil
		return err
	}
	flush := func() error {
		if inBatch == 0 {
			return nil
		}
		body, changed := CompressBatch(batch), batchChanged
		batch, inBatch, batchChanged = NewBatch(), 0, 0
		if err := drain(); err != nil {
			return err
		}
		ch := make(chan error, 1)
		inflight = ch
		go func() {
			if _, err := s.Device.PutPieces(ctx, body); err != nil {
				ch <- fmt.Errorf("sending pieces (what arrived is kept; run the command again to send the rest): %w", err)
				return
			}
			wire += int64(len(body))
			done += changed
			sum.BytesSent += int64(len(body))
			el := now().Sub(start).Seconds()
			p := Progress{Stage: "send", Done: done, Total: total, Wire: wire}
			if el > 0 {
				p.Rate = float64(wire) / el
				if done > 0 && total > done {
					p.ETA = time.Duration(float64(total-done) / (float64(done) / el) * float64(time.Second))
				}
			}
			s.progress(p)
			ch <- nil
		}()
		return nil
	}
	add := func(f Frame, changed int64) error {
		batch = AppendFrame(batch, f)
		inBatch++
		batchChanged += changed
		if len(batch) >= batchMax {
			return flush()
		}
		return nil
	}
	sendPieces := func(missing []content.Digest, held []*content.Index) error {
		err := (framer{s.Store}).frames(send, missing, held, sum, add)
		if err == nil {
			err = flush()
		}
		if derr := drain(); err == nil {
			err = derr
		}
		return err
	}
	if err := sendPieces(missing, held); err != nil {
		return nil, err
	}
	if err := s.sendIndexes(ctx, send, held, sum); errors.Is(err, release.ErrConflict) {
		// The device lacks pieces it was assumed to hold (its store was
		// damaged or collected): ask about every piece, send those, retry.
		s.progress(Progress{Stage: "plan", Message: "the device lacks pieces of layers it holds; asking about every piece"})
		again, err := s.ask(ctx, send, nil, sum)
		if err != nil {
			return nil, err
		}
		if err := sendPieces(again, nil); err != nil {
			return nil, err
		}
		if err := s.sendIndexes(ctx, send, held, sum); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	sum.SendSeconds = now().Sub(t1).Seconds()

	// Load what the engine lacks.
	t2 := now()
	req := localapi.LoadRequest{}
	for _, img := range imgs {
		req.Images = append(req.Images, localapi.LoadImage{Config: img.Config, Tags: img.Tags})
		sum.BytesSent += int64(len(img.Config))
	}
	s.progress(Progress{Stage: "load", Message: fmt.Sprintf("the device loads %d layers (%d MiB) into its engine", sum.LayersNeeded, loadBytes>>20)})
	lr, err := s.Device.Load(ctx, req)
	if err != nil {
		return nil, err
	}
	sum.BytesLoaded = lr.BytesLoaded
	sum.LoadSeconds = now().Sub(t2).Seconds()
	return sum, nil
}

// ask asks the device which pieces of the layers in send it lacks, leaving
// out the pieces in known.
func (s *Sender) ask(ctx context.Context, send []*content.Index, known map[content.Digest]bool, sum *Summary) ([]content.Digest, error) {
	var q []byte
	asked := map[content.Digest]bool{}
	for _, ix := range send {
		for _, p := range ix.Pieces() {
			if !asked[p.Digest] && !known[p.Digest] {
				asked[p.Digest] = true
				q = append(q, p.Digest[:]...)
			}
		}
	}
	if len(q) == 0 {
		return nil, nil
	}
	s.progress(Progress{Stage: "plan", Message: fmt.Sprintf("asking the device about %d pieces of %d layers", len(asked), len(send))})
	return s.askRaw(ctx, q, sum)
}

// askRaw asks the device which of the digests in q (32 bytes each, no
// repeats) it lacks.
func (s *Sender) askRaw(ctx context.Context, q []byte, sum *Summary) ([]content.Digest, error) {
	if len(q) == 0 {
		return nil, nil
	}
	asked := map[content.Digest]bool{}
	for i := 0; i+32 <= len(q); i += 32 {
		asked[content.Digest(q[i:i+32])] = true
	}
	m, err := s.Device.Missing(ctx, q)
	if err != nil {
		return nil, err
	}
	sum.BytesSent += int64(len(q))
	sum.AskBytes += int64(len(q))
	var missing []content.Digest
	for i := 0; i+32 <= len(m); i += 32 {
		var d content.Digest
		copy(d[:], m[i:i+32])
		if !asked[d] {
			return nil, fmt.Errorf("the device answered about piece %s, which was not asked: %w", d, release.ErrInvalid)
		}
		missing = append(missing, d)
	}
	return missing, nil
}

func tagOrID(img imagetar.Image) string {
	if len(img.Tags) > 0 {
		return img.Tags[0]
	}
	return release.ShortID(img.ID)
}

// heldIndexes returns the indexes of the layers the device holds in its
// content store that this sender has seen too: the bases for deltas.
func (s *Sender) heldIndexes(info *localapi.ContentInfo) []*content.Index {
	var out []*content.Index
	for _, l := range info.Layers {
		d, err := content.ParseDigest(l)
		if err != nil {
			continue
		}
		if ix, err := s.Store.Index(d); err == nil {
			out = append(out, ix)
		}
	}
	return out
}

// maxSendDelta: larger files go as pieces (a delta holds the old and the
// new file in memory, and its index about the old file's size again).
const maxSendDelta = 64 << 20

// framer makes frames from the pieces in a store: the sending side of the
// exchange, on a laptop (Sender) and on a fleet server (Server).
type framer struct {
	Store *content.Store
}

// frames turns the missing pieces into frames and hands each to add with the
// uncompressed bytes it carries: a changed file whose path the device holds
// in another layer goes as a binary delta from that version when the delta
// is smaller than its compressed pieces; the rest as raw pieces (the batch is
// compressed as a whole).
func (s framer) frames(send []*content.Index, missing []content.Digest, held []*content.Index, sum *Summary, add func(Frame, int64) error) error {
	need := map[content.Digest]bool{}
	for _, d := range missing {
		need[d] = true
	}
	byPath := map[string]content.Entry{}
	for _, ix := range held {
		for _, e := range ix.Entries {
			if e.IsFile() && e.Size > 0 {
				byPath[e.Name] = e
			}
		}
	}
	for _, ix := range send {
		for _, e := range ix.Entries {
			if err := s.entry(e, byPath[e.Name], need, sum, add); err != nil {
				return err
			}
		}
	}
	return nil
}

// entry frames the pieces of one file that need names, as a delta from
// base (the file's version the device holds, if any) when that is smaller,
// else raw; the pieces sent leave need.
func (s framer) entry(e, base content.Entry, need map[content.Digest]bool, sum *Summary, add func(Frame, int64) error) error {
	var want []content.Digest
	var changed int64
	for _, p := range e.Pieces {
		if need[p.Digest] {
			want = append(want, p.Digest)
			changed += int64(p.Size)
		}
	}
	if len(want) == 0 {
		return nil
	}
	if f, ok := s.deltaFrame(e, base, want); ok {
		sum.DeltaFiles++
		sum.DeltaBytes += int64(len(f.Data))
		sum.PiecesSent += len(e.Pieces)
		for _, p := range e.Pieces {
			delete(need, p.Digest)
		}
		return add(f, changed)
	}
	for _, p := range e.Pieces {
		if !need[p.Digest] {
			continue
		}
		data, err := s.Store.Get(p.Digest)
		if err != nil {
			return fmt.Errorf("local content cache: %w", err)
		}
		sum.PiecesSent++
		delete(need, p.Digest)
		if err := add(Frame{Kind: KindRaw, Digest: p.Digest, Data: data}, int64(p.Size)); err != nil {
			return err
		}
	}
	return nil
}

// deltaFrame makes a delta from base to e when that is smaller than e's
// missing pieces compressed.
func (s framer) deltaFrame(e, base content.Entry, want []content.Digest) (Frame, bool) {
	if base.Size == 0 || base.Size > maxSendDelta || e.Size > maxSendDelta {
		return Frame{}, false
	}
	full := 0
	for _, d := range want {
		z, err := s.Store.GetCompressed(d)
		if err != nil {
			return Frame{}, false
		}
		full += len(z)
	}
	if full < 512 {
		return Frame{}, false // not worth the piece lists
	}
	old, err := s.concat(base.Pieces)
	if err != nil {
		return Frame{}, false
	}
	nw, err := s.concat(e.Pieces)
	if err != nil {
		return Frame{}, false
	}
	patch := delta.Diff(old, nw)
	if len(patch)+40*(len(base.Pieces)+len(e.Pieces)) >= full {
		return Frame{}, false
	}
	return Frame{Kind: KindDelta, Base: base.Pieces, Targets: e.Pieces, Data: patch}, true
}

func (s framer) concat(ps []content.Piece) ([]byte, error) {
	var b []byte
	for _, p := range ps {
		data, err := s.Store.Get(p.Digest)
		if err != nil {
			return nil, err
		}
		b = append(b, data...)
	}
	return b, nil
}

// sendIndexes sends each layer's index (its tar headers and piece lists), as
// a delta from the most similar index the device holds when that is smaller.
func (s *Sender) sendIndexes(ctx context.Context, send []*content.Index, held []*content.Index, sum *Summary) error {
	for _, ix := range send {
		body, base, err := encodeIndex(ix, held)
		if err != nil {
			return err
		}
		if err := s.Device.PutIndex(ctx, ix.DiffID.String(), body, base); err != nil {
			return err
		}
		sum.BytesSent += int64(len(body))
		sum.IndexBytes += int64(len(body))
	}
	return nil
}

// encodeIndex encodes ix for a receiver holding the indexes held: as a delta
// from the most similar of them (base names it) when that is smaller than
// ix zstd-compressed alone (base "").
func encodeIndex(ix *content.Index, held []*content.Index) (body []byte, base string, err error) {
	enc, err := sharedEncoder()
	if err != nil {
		return nil, "", err
	}
	raw := ix.Encode()
	body = enc.EncodeAll(raw, nil)
	if b := similar(ix, held); b != nil {
		patch, err := EncodeIndexDelta(b.Encode(), raw)
		if err != nil {
			return nil, "", err
		}
		if len(patch) < len(body) {
			body, base = patch, b.DiffID.String()
		}
	}
	return body, base, nil
}

// similar picks the held index that shares the most file paths with ix.
func similar(ix *content.Index, held []*content.Index) *content.Index {
	paths := map[string]bool{}
	for _, e := range ix.Entries {
		if e.IsFile() {
			paths[e.Name] = true
		}
	}
	var best *content.Index
	bestN := 0
	for _, h := range held {
		n := 0
		for _, e := range h.Entries {
			if e.IsFile() && paths[e.Name] {
				n++
			}
		}
		if n > bestN {
			best, bestN = h, n
		}
	}
	return best
}
