package localreg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/imagetar"
	"github.com/berth-robotics/berth/internal/registry"
	"github.com/berth-robotics/berth/internal/transfer"
)

// Engine is the part of engine.Client a push from the local engine uses.
type Engine interface {
	Image(ctx context.Context, ref string) (engine.ImageInfo, error)
	TagImage(ctx context.Context, id, ref string) error
	Push(ctx context.Context, ref string, progress func(id, status string)) error
	Untag(ctx context.Context, ref string) error
	Save(ctx context.Context, refs []string) (io.ReadCloser, error)
}

// Pusher sends images of the local engine to a device, streamed: the
// engine pushes them to the loopback endpoint (only the layers the endpoint
// lacks), or, when that does not work, `docker save` exports them whole.
type Pusher struct {
	Engine Engine
	Sender *transfer.Sender
	// CacheDir is the sender's cache directory: the endpoint's memory and
	// the engine-ID aliases live beside it.
	CacheDir string
	Port     int // DefaultPort if 0
	// Via is "push" (the endpoint, falling back to save), or "save".
	Via string
	Say func(format string, args ...any)
}

// Image is one image to push: the engine's view of it and the tags it
// should have on the device.
type Image struct {
	Ref  string
	Info engine.ImageInfo
	Tags []string
}

func (p *Pusher) say(format string, args ...any) {
	if p.Say != nil {
		p.Say(format, args...)
	}
}

// Push sends the images through one stream and returns what it cost.
func (p *Pusher) Push(ctx context.Context, imgs []Image) (*transfer.Summary, error) {
	t0 := time.Now()
	var want []transfer.StreamImage
	for _, im := range imgs {
		want = append(want, transfer.StreamImage{EngineID: im.Info.ID, DiffIDs: im.Info.DiffIDs, Tags: im.Tags})
	}
	st, err := p.Sender.Stream(ctx, want)
	if err != nil {
		return nil, err
	}
	abort := func(err error) (*transfer.Summary, error) {
		st.Close() // what was sent stays sent
		return nil, err
	}
	// Layers the cache holds whole need no reading.
	cached := map[string]bool{}
	for _, im := range imgs {
		for _, d := range im.Info.DiffIDs {
			if ix := p.cachedLayer(d); ix != nil && !cached[d] {
				cached[d] = true
				st.Layer(ix)
			}
		}
	}
	// Configs the cache holds (pushed before, by an alias if the engine's
	// ID is not the config's digest): every layer cached too, nothing to read.
	var left []Image
	for _, im := range imgs {
		cfg := p.cachedConfig(im.Info.ID)
		if cfg == nil || !allIn(im.Info.DiffIDs, cached) {
			left = append(left, im)
			continue
		}
		img, err := imagetar.FromConfig(cfg)
		if err != nil {
			left = append(left, im)
			continue
		}
		img.Tags = im.Tags
		st.Image(img)
	}
	source := "cache"
	var saveSeconds float64
	if len(left) > 0 {
		var err error
		if p.Via != "save" {
			source = "engine push"
			left, err = p.viaEndpoint(ctx, st, left)
			if err != nil {
				if st.Err() != nil || ctx.Err() != nil {
					return abort(errors.Join(err, st.Err()))
				}
				p.say("  the engine's push to berth's loopback endpoint failed (%v); exporting with docker save instead", err)
			}
		}
		if len(left) > 0 {
			if source == "cache" {
				source = "docker save"
			} else {
				source = "engine push, then docker save"
			}
			if err := p.viaSave(ctx, st, left); err != nil {
				return abort(errors.Join(err, st.Err()))
			}
		}
		saveSeconds = time.Since(t0).Seconds()
	}
	sum, err := st.Close()
	if err != nil {
		return nil, err
	}
	sum.Source, sum.SaveSeconds, sum.CacheHit = source, saveSeconds, source == "cache"
	for _, im := range imgs {
		p.remember(im.Info.ID, sum)
	}
	return sum, nil
}

func allIn(ids []string, in map[string]bool) bool {
	for _, d := range ids {
		if !in[d] {
			return false
		}
	}
	return true
}

// cachedLayer is the layer's index if the cache holds it whole.
func (p *Pusher) cachedLayer(diffID string) *content.Index {
	d, err := content.ParseDigest(diffID)
	if err != nil {
		return nil
	}
	ix, err := p.Sender.Store.Index(d)
	if err != nil || len(p.Sender.Store.Missing(ix)) > 0 {
		return nil
	}
	return ix
}

// An engine's image ID is its config's digest on the classic image store,
// but its manifest's (or index's) on the containerd one: the cache keeps
// configs by their own digest, and an alias file per engine ID that is not
// one, written after a push.
func (p *Pusher) aliasPath(id string) string {
	return filepath.Join(p.CacheDir, "engine-ids", strings.TrimPrefix(id, "sha256:"))
}

// cachedConfig is the config the cache holds for an engine's image ID.
func (p *Pusher) cachedConfig(id string) []byte {
	return CachedConfig(p.Sender.Store, p.CacheDir, id)
}

// CachedConfig is the config an engine image ID names in the cache at dir:
// the piece of that digest (classic image store), or the one its alias
// names (containerd image store: the ID is a manifest's digest).
func CachedConfig(store *content.Store, dir, id string) []byte {
	d, err := content.ParseDigest(id)
	if err != nil {
		return nil
	}
	if b, err := store.Get(d); err == nil {
		if img, err := imagetar.FromConfig(b); err == nil && img.ID == id {
			return b
		}
	}
	a, err := os.ReadFile(filepath.Join(dir, "engine-ids", d.Hex()))
	if err != nil {
		return nil
	}
	cd, err := content.ParseDigest(strings.TrimSpace(string(a)))
	if err != nil {
		return nil
	}
	b, err := store.Get(cd)
	if err != nil {
		return nil
	}
	return b
}

// ConfigID is the config digest (what a device's engine and the fleet
// server name an image by) that the cache knows for an engine image ID:
// the ID itself on the classic image store.
func ConfigID(store *content.Store, dir, id string) (string, bool) {
	b := CachedConfig(store, dir, id)
	if b == nil {
		return "", false
	}
	return content.Sum(b).String(), true
}

// remember writes the alias of an engine ID whose config is not its own
// digest, from the images the push loaded.
func (p *Pusher) remember(id string, sum *transfer.Summary) {
	for _, pi := range sum.PerImage {
		if pi.EngineID == id && pi.ID != id {
			path := p.aliasPath(id)
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err == nil {
				_ = os.WriteFile(path, []byte(pi.ID+"\n"), 0o600)
			}
		}
	}
}

// viaEndpoint has the engine push each image to the loopback endpoint and
// returns the images it could not (all of them when the endpoint is out of
// the engine's reach).
func (p *Pusher) viaEndpoint(ctx context.Context, st *transfer.Stream, imgs []Image) ([]Image, error) {
	port := p.Port
	if port == 0 {
		port = DefaultPort
	}
	srv, err := Listen(p.Sender.Store, filepath.Join(p.CacheDir, "localreg.json"), port)
	if err != nil {
		return imgs, err
	}
	defer srv.Close()
	for i, im := range imgs {
		sink := &sink{st: st, want: im}
		srv.Receive(sink)
		tag := fmt.Sprintf("%s/%s:%s", srv.Addr(), Repository, strings.TrimPrefix(im.Info.ID, "sha256:")[:20])
		if err := p.Engine.TagImage(ctx, im.Info.ID, tag); err != nil {
			return imgs[i:], err
		}
		p.say("  the engine pushes %s to berth's endpoint %s (only the layers it has not pushed there before)", im.Ref, srv.Addr())
		err := p.Engine.Push(ctx, tag, func(id, status string) {
			if status == "Pushed" || status == "Layer already exists" || strings.HasPrefix(status, "Mounted") {
				p.say("    engine: %s %s", id, strings.ToLower(status))
			}
		})
		p.untag(ctx, im, tag)
		srv.Receive(nil)
		if err == nil && !sink.done() {
			err = fmt.Errorf("the engine's push of %s ended without its manifest", im.Ref)
		}
		if err != nil {
			return imgs[i:], err
		}
	}
	return nil, nil
}

// untag removes the endpoint's tag from the image, and the digest the
// push recorded if the image has a name of its own to keep it.
func (p *Pusher) untag(ctx context.Context, im Image, tag string) {
	_ = p.Engine.Untag(ctx, tag)
	info, err := p.Engine.Image(ctx, im.Info.ID)
	if err != nil || len(info.Tags) == 0 {
		return
	}
	repo := tag[:strings.LastIndex(tag, ":")]
	for _, d := range info.Digests {
		if strings.HasPrefix(d, repo+"@") {
			_ = p.Engine.Untag(ctx, d)
		}
	}
}

// viaSave exports the images with docker save and reads them into the
// stream, layer by layer.
func (p *Pusher) viaSave(ctx context.Context, st *transfer.Stream, imgs []Image) error {
	var refs []string
	for _, im := range imgs {
		refs = append(refs, im.Ref)
	}
	p.say("  exporting %s with docker save (it writes the whole image before its first byte)", strings.Join(refs, ", "))
	rc, err := p.Engine.Save(ctx, refs)
	if err != nil {
		return err
	}
	defer rc.Close()
	read, err := imagetar.ReadFor(bufio.NewReaderSize(rc, 1<<20), "", func(_ string, r io.Reader) (string, error) {
		ix, err := p.Sender.Store.SplitInto(r, func(fs []content.File) error {
			st.Files(fs)
			return st.Err()
		})
		if err != nil {
			return "", err
		}
		st.Layer(ix)
		return ix.DiffID.String(), nil
	})
	if err != nil {
		return err
	}
	for _, img := range read {
		if err := p.Sender.Store.Put(content.Sum(img.Config), img.Config); err != nil {
			return err
		}
		for _, im := range imgs {
			if slices.Equal(im.Info.DiffIDs, img.DiffIDs) {
				img.Tags = im.Tags
			}
		}
		st.Image(img)
	}
	return nil
}

// sink passes what the endpoint receives for one image to the stream.
type sink struct {
	st   *transfer.Stream
	want Image
	mu   sync.Mutex
	got  bool
}

func (s *sink) Files(fs []content.File) { s.st.Files(fs) }
func (s *sink) Layer(ix *content.Index) { s.st.Layer(ix) }

func (s *sink) Image(m *registry.Manifest, config []byte) {
	img, err := imagetar.FromConfig(config)
	if err != nil || !slices.Equal(img.DiffIDs, s.want.Info.DiffIDs) {
		return // not the image pushed (another client of the endpoint)
	}
	img.Tags = s.want.Tags
	s.mu.Lock()
	s.got = true
	s.mu.Unlock()
	s.st.Image(img)
}

func (s *sink) done() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got
}
