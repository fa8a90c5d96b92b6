package transfer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/localapi"
	"github.com/berth-robotics/berth/internal/release"
)

// ChainLoader is the part of localapi.Client that loads a layer stack
// ahead of its image (agents older than it answer 404: the stream then
// leaves every layer to the final load).
type ChainLoader interface {
	LoadChain(ctx context.Context, req localapi.LoadChainRequest) (*localapi.LoadResponse, error)
}

// StreamImage is an image a stream pushes, as the local engine describes
// it before a byte of it is read.
type StreamImage struct {
	EngineID string // the local engine's ID for it (on the containerd image store, a manifest's digest)
	DiffIDs  []string
	Tags     []string
}

// Stream pushes images while they are read: the pieces of each file go out
// as soon as the file is read (a few MiB at a time, asked about and sent in
// acknowledged batches while the source goes on), a layer's index once its
// pieces are acknowledged, and the device loads each layer as soon as it
// and the layers under it are in (ChainLoader) — so a first deploy costs
// about the slowest of reading, the link and the device's load, not their
// sum. Sources call Files, Layer and Image from any goroutine, then Close.
//
// What a stream cannot know before it starts is how many bytes the device
// will lack: it checks the device's free space as it goes (before each
// batch) instead of once before the first, and stops with what arrived
// kept.
type Stream struct {
	s   *Sender
	ctx context.Context
	now func() time.Time
	t0  time.Time
	sum *Summary

	mu     sync.Mutex
	inbox  []streamEvent
	wake   chan struct{}
	done   chan struct{}
	err    error
	closed bool

	// What the device holds (run's own from here on).
	info     *localapi.ContentInfo
	chains   map[string]bool          // layer stacks in its engine, grown by loads
	inStore  map[string]bool          // layers in its store, grown by index uploads
	known    map[content.Digest]bool  // pieces of layers it holds that this side knows
	held     []*content.Index         // those layers' indexes: delta bases
	byPath   map[string]content.Entry // their files by path
	images   []*streamImage
	need     map[string]bool // layers some image's device engine lacks
	read     map[string]bool // layers read whole
	queued   map[content.Digest]bool
	pending  []pendingFile
	pendingN int64
	changed  int64 // uncompressed bytes of the pieces the device lacked, so far
	loading  bool
	noChain  bool // the device cannot load ahead (old agent, or a failed try)
	t1       time.Time

	b batcher
}

type streamImage struct {
	StreamImage
	config []byte
	needed int // layers its device's engine lacked
}

type pendingFile struct {
	e    content.Entry
	want []content.Digest
}

type streamEvent struct {
	files  []content.File
	layer  *content.Index
	image  *imagetar.Image
	loaded *loadedChain
	close  bool
}

type loadedChain struct {
	chain string
	resp  *localapi.LoadResponse
	err   error
}

// askEvery is how many bytes of new pieces a stream gathers before it asks
// the device which it lacks: one question per few MiB, not per file.
const askEvery = 4 << 20

// Stream starts pushing images the local engine holds. Their layers come
// later, through Files and Layer, from wherever the caller reads them; the
// layers already in the sender's store may be given at once.
func (s *Sender) Stream(ctx context.Context, want []StreamImage) (*Stream, error) {
	now := s.Now
	if now == nil {
		now = time.Now
	}
	st := &Stream{s: s, ctx: ctx, now: now, t0: now(), sum: &Summary{Streamed: true},
		wake: make(chan struct{}, 1), done: make(chan struct{}),
		chains: map[string]bool{}, inStore: map[string]bool{}, known: map[content.Digest]bool{},
		byPath: map[string]content.Entry{}, need: map[string]bool{}, read: map[string]bool{},
		queued: map[content.Digest]bool{}}
	info, err := s.Device.ContentInfo(ctx)
	if err != nil {
		return nil, err
	}
	st.info = info
	for _, c := range info.Chains {
		st.chains[c] = true
	}
	for _, l := range info.Layers {
		st.inStore[l] = true
	}
	st.held = s.heldIndexes(info)
	for _, ix := range st.held {
		for _, e := range ix.Entries {
			for _, p := range e.Pieces {
				st.known[p.Digest] = true
			}
			if e.IsFile() && e.Size > 0 {
				st.byPath[e.Name] = e
			}
		}
	}
	for _, w := range want {
		st.addImage(w)
	}
	if _, ok := s.Device.(ChainLoader); !ok {
		st.noChain = true
	}
	st.b = batcher{s: s, ctx: ctx, sum: st.sum, now: now, start: now()}
	go st.run()
	return st, nil
}

func (st *Stream) addImage(w StreamImage) {
	img := &streamImage{StreamImage: w}
	st.images = append(st.images, img)
	seen := map[string]bool{}
	for i, ch := range imagetar.ChainIDs(w.DiffIDs) {
		st.sum.Layers++
		d := w.DiffIDs[i]
		if st.chains[ch] || seen[d] {
			continue
		}
		seen[d] = true
		img.needed++
		if !st.need[d] {
			st.need[d] = true
			st.sum.LayersNeeded++
		}
	}
}

// Files hands the stream files of a layer being read, whose pieces are in
// the sender's store.
func (st *Stream) Files(files []content.File) { st.post(streamEvent{files: files}) }

// Layer hands the stream a layer read whole, its index and pieces in the
// sender's store.
func (st *Stream) Layer(ix *content.Index) { st.post(streamEvent{layer: ix}) }

// Image hands the stream an image's config once it is known.
func (st *Stream) Image(img imagetar.Image) { st.post(streamEvent{image: &img}) }

// Close says every layer and config was given: the stream sends what is
// left, the indexes, has the device load the images, and returns what it
// all cost.
func (st *Stream) Close() (*Summary, error) {
	st.post(streamEvent{close: true})
	<-st.done
	return st.sum, st.err
}

// Err is the error that stopped the stream, if it stopped: a source can
// stop reading.
func (st *Stream) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

func (st *Stream) post(e streamEvent) {
	st.mu.Lock()
	if st.closed && e.loaded == nil {
		st.mu.Unlock()
		return
	}
	st.closed = e.close
	st.inbox = append(st.inbox, e)
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *Stream) take() []streamEvent {
	for {
		st.mu.Lock()
		evs := st.inbox
		st.inbox = nil
		st.mu.Unlock()
		if len(evs) > 0 {
			return evs
		}
		select {
		case <-st.wake:
		case <-st.ctx.Done():
			return []streamEvent{{close: true}}
		}
	}
}

func (st *Stream) fail(err error) {
	st.mu.Lock()
	if st.err == nil {
		st.err = err
	}
	st.mu.Unlock()
}

// run handles the events one by one: the stream's one goroutine of state
// (loads run beside it and report back as events).
func (st *Stream) run() {
	defer close(st.done)
	for {
		for _, e := range st.take() {
			var err error
			switch {
			case st.Err() != nil && !e.close:
				continue // stopped: drain until Close
			case e.files != nil:
				st.queue(e.files)
				if st.pendingN >= askEvery {
					err = st.flushPending()
				}
			case e.layer != nil:
				err = st.layerRead(e.layer)
			case e.image != nil:
				err = st.imageKnown(*e.image)
			case e.loaded != nil:
				st.chainLoaded(e.loaded)
			case e.close:
				if st.Err() == nil {
					if err = st.ctx.Err(); err == nil {
						err = st.finish()
					}
				}
				if err != nil {
					st.fail(err)
				}
				st.waitLoads()
				return
			}
			if err != nil {
				st.fail(err)
			}
		}
	}
}

// queue adds files whose pieces the device may lack: none of a layer it
// holds, none already on their way.
func (st *Stream) queue(files []content.File) {
	for _, f := range files {
		var want []content.Digest
		for _, p := range f.Pieces {
			if st.known[p.Digest] || st.queued[p.Digest] {
				continue
			}
			st.queued[p.Digest] = true
			want = append(want, p.Digest)
			st.pendingN += int64(p.Size)
		}
		if len(want) > 0 {
			st.pending = append(st.pending, pendingFile{e: content.Entry{Name: f.Name, Size: f.Size, Pieces: f.Pieces}, want: want})
		}
	}
}

// flushPending asks the device which of the queued pieces it lacks and
// sends those, as deltas where it holds an earlier version of the file.
func (st *Stream) flushPending() error {
	if len(st.pending) == 0 {
		return nil
	}
	var q []byte
	for _, pf := range st.pending {
		for _, d := range pf.want {
			q = append(q, d[:]...)
		}
	}
	pending := st.pending
	st.pending, st.pendingN = nil, 0
	missing, err := st.s.askRaw(st.ctx, q, st.sum)
	if err != nil {
		return err
	}
	need := map[content.Digest]bool{}
	for _, d := range missing {
		need[d] = true
	}
	fr := framer{st.s.Store}
	for _, pf := range pending {
		var changed int64
		for _, p := range pf.e.Pieces {
			if need[p.Digest] {
				changed += int64(p.Size)
			}
		}
		if changed == 0 {
			continue
		}
		if err := st.room(changed); err != nil {
			return err
		}
		st.changed += changed
		st.sum.BytesChanged += changed
		if err := fr.entry(pf.e, st.byPath[pf.e.Name], need, st.sum, st.b.add); err != nil {
			return err
		}
	}
	return nil
}

// room stops the stream before a batch the device's store has no room for.
func (st *Stream) room(more int64) error {
	info := st.info
	if info.StateFree > 0 && uint64(st.changed+more)+info.MinFree > info.StateFree {
		return fmt.Errorf("the device has %d MiB free for its content store and this push needs more than %d MiB so far (plus %d MiB kept free); %s, the running release is untouched; free space on the device: %w",
			info.StateFree>>20, (st.changed+more)>>20, info.MinFree>>20, st.sentSoFar(), release.ErrNoSpace)
	}
	return nil
}

func (st *Stream) sentSoFar() string {
	if st.sum.BytesSent == 0 {
		return "nothing was sent"
	}
	return "what was sent is kept"
}

// layerRead sends what is left of a layer read whole, then, if the
// device's store lacks it, its index (once its pieces are acknowledged),
// and lets the device load it if it can.
func (st *Stream) layerRead(ix *content.Index) error {
	d := ix.DiffID.String()
	st.read[d] = true
	if st.readAll() {
		st.sum.ReadSeconds = st.now().Sub(st.t0).Seconds()
	}
	if !st.need[d] || st.inStore[d] {
		return st.tryLoad()
	}
	var files []content.File
	for _, e := range ix.Entries {
		if e.IsFile() && e.Size > 0 {
			files = append(files, content.File{Name: e.Name, Size: e.Size, Pieces: e.Pieces})
		}
	}
	st.queue(files)
	if err := st.flushPending(); err != nil {
		return err
	}
	if err := st.b.flush(); err != nil {
		return err
	}
	if err := st.b.drain(); err != nil {
		return err
	}
	err := st.s.sendIndexes(st.ctx, []*content.Index{ix}, st.held, st.sum)
	if errors.Is(err, release.ErrConflict) {
		// The device lacks pieces of layers it was thought to hold (its
		// store was damaged or collected): ask about every piece of this
		// layer, send those, try again.
		again, err := st.s.ask(st.ctx, []*content.Index{ix}, nil, st.sum)
		if err != nil {
			return err
		}
		if err := (framer{st.s.Store}).frames([]*content.Index{ix}, again, nil, st.sum, st.b.add); err != nil {
			return err
		}
		if err := st.b.flush(); err != nil {
			return err
		}
		if err := st.b.drain(); err != nil {
			return err
		}
		err = st.s.sendIndexes(st.ctx, []*content.Index{ix}, st.held, st.sum)
	}
	if err != nil {
		return err
	}
	st.inStore[d] = true
	return st.tryLoad()
}

func (st *Stream) readAll() bool {
	for d := range st.need {
		if !st.read[d] && !st.inStore[d] {
			return false
		}
	}
	return true
}

// imageKnown takes an image's config (and, for an image the stream did not
// know at its start, its layers).
func (st *Stream) imageKnown(img imagetar.Image) error {
	if img.Arch != "" && st.info.Arch != "" && img.Arch != st.info.Arch {
		return fmt.Errorf("image %s is for %s, the device runs %s; build or pull the %s variant: %w", tagOrID(img), img.Arch, st.info.Arch, st.info.Arch, release.ErrInvalid)
	}
	for _, si := range st.images {
		if si.config == nil && slices.Equal(si.DiffIDs, img.DiffIDs) {
			si.config = img.Config
			if len(img.Tags) > 0 {
				si.Tags = img.Tags
			}
			st.sum.Images = append(st.sum.Images, img.ID)
			return st.tryLoad()
		}
	}
	st.addImage(StreamImage{DiffIDs: img.DiffIDs, Tags: img.Tags})
	st.images[len(st.images)-1].config = img.Config
	st.sum.Images = append(st.sum.Images, img.ID)
	return st.tryLoad()
}

// tryLoad has the device load the next layer stack it can: the lowest one
// of an image its engine lacks, once that layer is in its store. One load
// at a time: they share the device's disk.
func (st *Stream) tryLoad() error {
	if st.noChain || st.loading {
		return nil
	}
	for _, img := range st.images {
		chains := imagetar.ChainIDs(img.DiffIDs)
		for i, ch := range chains {
			if st.chains[ch] {
				continue
			}
			if !st.inStore[img.DiffIDs[i]] {
				break
			}
			st.loading = true
			req := localapi.LoadChainRequest{DiffIDs: img.DiffIDs[:i+1], Arch: st.info.Arch}
			go func() {
				resp, err := st.s.Device.(ChainLoader).LoadChain(st.ctx, req)
				st.post(streamEvent{loaded: &loadedChain{chain: ch, resp: resp, err: err}})
			}()
			return nil
		}
	}
	return nil
}

func (st *Stream) chainLoaded(l *loadedChain) {
	st.loading = false
	if l.err != nil {
		// An agent without the call, or a load that failed: the final load
		// does what is left (and says what is wrong, if anything is).
		st.noChain = true
		if !errors.Is(l.err, release.ErrNotFound) {
			st.s.progress(Progress{Stage: "load", Message: fmt.Sprintf("loading ahead failed, the device loads at the end: %v", l.err)})
		}
		return
	}
	st.chains[l.chain] = true
	st.sum.PartialLoads++
	st.sum.LoadSeconds += l.resp.Seconds
	st.sum.BytesLoaded += l.resp.BytesLoaded
	_ = st.tryLoad()
}

// waitLoads waits for a load in flight and starts no other: the final
// load does the rest in one go.
func (st *Stream) waitLoads() {
	st.noChain = true
	for st.loading {
		for _, e := range st.take() {
			if e.loaded != nil {
				st.chainLoaded(e.loaded)
			}
		}
	}
}

// finish sends what is left and has the device load the images.
func (st *Stream) finish() error {
	for _, img := range st.images {
		if img.config == nil {
			return fmt.Errorf("stream: an image with %d layers was never read whole: %w", len(img.DiffIDs), release.ErrInvalid)
		}
		for _, d := range img.DiffIDs {
			if st.need[d] && !st.inStore[d] && !st.read[d] {
				return fmt.Errorf("stream: layer %s was never read: %w", release.ShortID(d), release.ErrInvalid)
			}
		}
	}
	if err := st.flushPending(); err != nil {
		return err
	}
	if err := st.b.flush(); err != nil {
		return err
	}
	if err := st.b.drain(); err != nil {
		return err
	}
	st.sum.SendSeconds = st.now().Sub(st.t0).Seconds()
	st.waitLoads()
	t := st.now()
	req := localapi.LoadRequest{}
	for _, img := range st.images {
		req.Images = append(req.Images, localapi.LoadImage{Config: img.config, Tags: img.Tags})
		st.sum.BytesSent += int64(len(img.config))
		st.sum.PerImage = append(st.sum.PerImage, ImageSummary{ID: content.Sum(img.config).String(), EngineID: img.EngineID, Tags: img.Tags, Layers: len(img.DiffIDs), LayersNeeded: img.needed})
	}
	st.s.progress(Progress{Stage: "load", Message: fmt.Sprintf("the device loads the images (%d layers loaded ahead)", st.sum.PartialLoads)})
	lr, err := st.s.Device.Load(st.ctx, req)
	if err != nil {
		return err
	}
	st.sum.BytesLoaded += lr.BytesLoaded
	st.sum.LoadSeconds += st.now().Sub(t).Seconds()
	st.sum.DoneSeconds = st.now().Sub(st.t0).Seconds()
	return nil
}

// batcher sends frames in acknowledged batches, each compressed as a
// whole, one in flight while the next is filled.
type batcher struct {
	s        *Sender
	ctx      context.Context
	sum      *Summary
	now      func() time.Time
	start    time.Time
	batch    []byte
	n        int
	changed  int64
	wire     int64
	done     int64
	inflight chan sent
}

// sent is a batch's acknowledgement: its bytes, or why it failed.
type sent struct {
	wire int64
	err  error
}

func (b *batcher) max() int {
	m := b.s.BatchBytes
	if m <= 0 {
		m = 8 << 20
	}
	return min(m, MaxBatch/2)
}

func (b *batcher) add(f Frame, changed int64) error {
	if b.batch == nil {
		b.batch = NewBatch()
	}
	b.batch = AppendFrame(b.batch, f)
	b.n++
	b.changed += changed
	if len(b.batch) >= b.max() {
		return b.flush()
	}
	return nil
}

// drain waits for the batch in flight.
func (b *batcher) drain() error {
	if b.inflight == nil {
		return nil
	}
	r := <-b.inflight
	b.inflight = nil
	b.sum.BytesSent += r.wire
	return r.err
}

func (b *batcher) flush() error {
	if b.n == 0 {
		return nil
	}
	body, changed := CompressBatch(b.batch), b.changed
	b.batch, b.n, b.changed = nil, 0, 0
	if err := b.drain(); err != nil {
		return err
	}
	ch := make(chan sent, 1)
	b.inflight = ch
	b.wire += int64(len(body))
	b.done += changed
	p := Progress{Stage: "send", Done: b.done, Wire: b.wire}
	go func() {
		if _, err := b.s.Device.PutPieces(b.ctx, body); err != nil {
			ch <- sent{err: fmt.Errorf("sending pieces (what arrived is kept; run the command again to send the rest): %w", err)}
			return
		}
		if el := b.now().Sub(b.start).Seconds(); el > 0 {
			p.Rate = float64(p.Wire) / el
		}
		b.s.progress(p)
		ch <- sent{wire: int64(len(body))}
	}()
	return nil
}
