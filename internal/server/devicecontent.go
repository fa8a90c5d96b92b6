package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/berth-robotics/berth/internal/content"
	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
	"github.com/berth-robotics/berth/internal/transfer"
)

// A device fetches only what its own target names: the images that the
// services of the releases in its target pin (ImageID), and those images'
// layers. Anything else is 404, the same answer whether it exists or not.
// A device names the layers it holds as delta bases; only layers of its
// fleet's releases are used as bases (a delta against a layer would tell
// something of it), others are ignored, which costs bytes, never a fetch.

// contentState is the content store and what the server remembers between
// requests about who may read what. Each cache is bounded and only ever
// holds what a store read would give again.
type contentState struct {
	c *Content // nil: the server keeps no content

	// pieces bounds the batches of pieces being made at once: each holds
	// up to transfer.MaxBatch, and binary deltas cost memory and CPU.
	pieces chan struct{}

	mu       sync.Mutex
	devices  map[string]*deviceContent // by device ID
	fleets   map[string]*fleetLayers   // by fleet ID
	releases map[string][]string       // the image IDs a release pins, by release ID
}

func newContentState(c *Content) *contentState {
	return &contentState{
		c:        c,
		pieces:   make(chan struct{}, max(2, runtime.GOMAXPROCS(0))),
		devices:  map[string]*deviceContent{},
		fleets:   map[string]*fleetLayers{},
		releases: map[string][]string{},
	}
}

// deviceContent is what a device may read at one target version.
type deviceContent struct {
	version int64
	images  map[string]bool
	layers  map[string]bool
	// complete: every image its target pins is registered, so layers is
	// final for this version.
	complete bool
}

// fleetLayers are the layers of the images of a fleet's recent releases:
// the delta bases its devices may name.
type fleetLayers struct {
	at     time.Time
	layers map[string]bool
}

// Cache bounds and lifetimes.
const (
	maxCachedDevices  = 1 << 16
	maxCachedReleases = 1 << 14
	maxCachedFleets   = 1 << 10
	fleetLayersTTL    = time.Minute
	// fleetBaseReleases: the releases whose layers may serve as delta bases,
	// newest first.
	fleetBaseReleases = 1000
)

// errNotInTarget answers a device asking for content outside its target.
// It names nothing: the device sent what it asked for.
var errNotInTarget = fmt.Errorf("not in this device's target (or no such content): %w", release.ErrNotFound)

// imagesOf lists the image IDs a release's spec pins.
func imagesOf(spec json.RawMessage) ([]string, error) {
	var sp release.Spec
	if err := json.Unmarshal(spec, &sp); err != nil {
		return nil, fmt.Errorf("stored spec: %w", err)
	}
	var ids []string
	for _, svc := range sp.Services {
		if svc.ImageID != "" {
			ids = append(ids, svc.ImageID)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// releaseImages returns the image IDs release id of a fleet pins.
func (s *Server) releaseImages(ctx context.Context, fleetID, id string) ([]string, error) {
	cs := s.content
	cs.mu.Lock()
	ids, ok := cs.releases[id]
	cs.mu.Unlock()
	if ok {
		return ids, nil
	}
	rel, err := s.st.Release(ctx, fleetID, id)
	if err != nil {
		return nil, err
	}
	if ids, err = imagesOf(rel.Spec); err != nil {
		return nil, fmt.Errorf("release %s: %w", id, err)
	}
	s.cacheRelease(id, ids)
	return ids, nil
}

func (s *Server) cacheRelease(id string, ids []string) {
	cs := s.content
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(cs.releases) >= maxCachedReleases {
		clear(cs.releases)
	}
	cs.releases[id] = ids
}

// deviceAllowed returns what device d may read now.
func (s *Server) deviceAllowed(ctx context.Context, c *Content, d store.Device) (*deviceContent, error) {
	cs := s.content
	cs.mu.Lock()
	e := cs.devices[d.ID]
	cs.mu.Unlock()
	if e != nil && e.version == d.TargetVersion && e.complete {
		return e, nil
	}
	as, err := s.st.DeviceApps(ctx, d.ID)
	if err != nil {
		return nil, err
	}
	e = &deviceContent{version: d.TargetVersion, images: map[string]bool{}, layers: map[string]bool{}, complete: true}
	for _, a := range as {
		ids, err := s.releaseImages(ctx, d.FleetID, a.ReleaseID)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			e.images[id] = true
			img, err := c.image(id)
			if err != nil {
				return nil, err
			}
			if img == nil {
				e.complete = false // not uploaded (yet)
				continue
			}
			for _, l := range img.diffIDs {
				e.layers[l] = true
			}
		}
	}
	cs.mu.Lock()
	if len(cs.devices) >= maxCachedDevices {
		clear(cs.devices)
	}
	cs.devices[d.ID] = e
	cs.mu.Unlock()
	return e, nil
}

// fleetBases returns the layers of the images of a fleet's newest
// releases, at most fleetLayersTTL old.
func (s *Server) fleetBases(ctx context.Context, c *Content, fleetID string) (map[string]bool, error) {
	cs := s.content
	now := s.now()
	cs.mu.Lock()
	f := cs.fleets[fleetID]
	cs.mu.Unlock()
	if f != nil && now.Sub(f.at) < fleetLayersTTL && !now.Before(f.at) {
		return f.layers, nil
	}
	rs, err := s.st.ListReleases(ctx, store.ReleaseFilter{FleetID: fleetID, Limit: fleetBaseReleases})
	if err != nil {
		return nil, err
	}
	f = &fleetLayers{at: now, layers: map[string]bool{}}
	for _, r := range rs {
		ids, err := imagesOf(r.Spec)
		if err != nil {
			return nil, fmt.Errorf("release %s: %w", r.ID, err)
		}
		s.cacheRelease(r.ID, ids)
		for _, id := range ids {
			img, err := c.image(id)
			if err != nil {
				return nil, err
			}
			if img != nil {
				for _, l := range img.diffIDs {
					f.layers[l] = true
				}
			}
		}
	}
	cs.mu.Lock()
	if len(cs.fleets) >= maxCachedFleets {
		clear(cs.fleets)
	}
	cs.fleets[fleetID] = f
	cs.mu.Unlock()
	return f.layers, nil
}

// bases keeps of the layers a device names as delta bases those it may
// have: its target's, and its fleet's releases'.
func (s *Server) bases(ctx context.Context, c *Content, d store.Device, e *deviceContent, named []string) ([]string, error) {
	var fleet map[string]bool
	var out []string
	for _, n := range named {
		if len(out) == 256 {
			break
		}
		dd, err := content.ParseDigest(n)
		if err != nil {
			continue
		}
		l := dd.String()
		if !e.layers[l] {
			if fleet == nil {
				if fleet, err = s.fleetBases(ctx, c, d.FleetID); err != nil {
					return nil, err
				}
			}
			if !fleet[l] {
				continue
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// deviceLayerAllowed checks the request's {diffid} is a layer of the
// device's target, and returns it with what the device may read.
func (s *Server) deviceLayerAllowed(r *http.Request, c *Content, d store.Device) (string, *deviceContent, error) {
	dd, err := content.ParseDigest(r.PathValue("diffid"))
	if err != nil {
		return "", nil, errNotInTarget
	}
	e, err := s.deviceAllowed(r.Context(), c, d)
	if err != nil {
		return "", nil, err
	}
	if !e.layers[dd.String()] {
		return "", nil, errNotInTarget
	}
	return dd.String(), e, nil
}

// deviceImage answers GET /v1/device/content/images/{image}: the config
// of an image the device's target pins.
func (s *Server) deviceImage(w http.ResponseWriter, r *http.Request, p principal) error {
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	d, err := s.deviceNow(r.Context(), p)
	if err != nil {
		return err
	}
	s.touch(r.Context(), d.ID)
	dd, err := content.ParseDigest(r.PathValue("image"))
	if err != nil {
		return errNotInTarget
	}
	id := dd.String()
	e, err := s.deviceAllowed(r.Context(), c, d)
	if err != nil {
		return err
	}
	if !e.images[id] {
		return errNotInTarget
	}
	if img, err := c.image(id); err != nil {
		return err
	} else if img == nil {
		return fmt.Errorf("image %s of this device's target has not been uploaded to the server (berth release create uploads images; a release made with \"content\": \"external\" expects devices to get them elsewhere): %w", release.ShortID(id), release.ErrNotFound)
	}
	cfg, err := c.source().Config(id)
	if err != nil {
		return err
	}
	writeBinary(w, cfg)
	return nil
}

// deviceLayer answers GET /v1/device/content/layers/{diffid}?base=…: a
// layer's index, as a delta against one of the bases when that is smaller.
func (s *Server) deviceLayer(w http.ResponseWriter, r *http.Request, p principal) error {
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	d, err := s.deviceNow(r.Context(), p)
	if err != nil {
		return err
	}
	s.touch(r.Context(), d.ID)
	layer, e, err := s.deviceLayerAllowed(r, c, d)
	if err != nil {
		return err
	}
	bases, err := s.bases(r.Context(), c, d, e, r.URL.Query()["base"])
	if err != nil {
		return err
	}
	body, base, err := c.source().Index(layer, bases)
	if err != nil {
		return err
	}
	if base != "" {
		w.Header().Set(serverapi.IndexBaseHeader, base)
	}
	writeBinary(w, body)
	return nil
}

// devicePieces answers POST /v1/device/content/layers/{diffid}/pieces: one
// compressed batch with the pieces of the layer asked for (the body:
// concatenated 32-byte digests), changed files as deltas against the bases
// when smaller.
func (s *Server) devicePieces(w http.ResponseWriter, r *http.Request, p principal) error {
	c, err := s.contentStore()
	if err != nil {
		return err
	}
	d, err := s.deviceNow(r.Context(), p)
	if err != nil {
		return err
	}
	s.touch(r.Context(), d.ID)
	layer, e, err := s.deviceLayerAllowed(r, c, d)
	if err != nil {
		return err
	}
	q, err := readBinary(w, r, transfer.MaxBatch/64)
	if err != nil {
		return err
	}
	bases, err := s.bases(r.Context(), c, d, e, r.URL.Query()["base"])
	if err != nil {
		return err
	}
	select {
	case s.content.pieces <- struct{}{}:
		defer func() { <-s.content.pieces }()
	case <-r.Context().Done():
		return r.Context().Err()
	}
	batch, err := c.source().Pieces(layer, q, bases)
	if err != nil {
		return err
	}
	writeBinary(w, batch)
	return nil
}
