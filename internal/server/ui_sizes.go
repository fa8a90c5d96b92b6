package server

import (
	"sync"

	"github.com/berth-robotics/berth/internal/content"
)

// Sizes for the releases page: an image's layers, uncompressed, and what a
// device running one release must fetch for another — the bytes of the
// pieces of the new release's layers that the old release's layers lack
// (before compression and binary deltas, so an upper bound). Releases are
// immutable, so each answer is computed once and kept.

type uiSizes struct {
	mu     sync.Mutex
	images map[string]uint64    // image ID → bytes of its layers
	needs  map[[2]string]uint64 // (from, to) release → bytes to fetch
}

// imageSize is the uncompressed size of an uploaded image's layers; 0 if
// the server does not hold it.
func (s *Server) imageSize(id string) uint64 {
	c := s.content.c
	if c == nil || id == "" {
		return 0
	}
	s.ui.sizes.mu.Lock()
	n, ok := s.ui.sizes.images[id]
	s.ui.sizes.mu.Unlock()
	if ok {
		return n
	}
	e, err := c.image(id)
	if err != nil || e == nil {
		return 0
	}
	for _, l := range e.diffIDs {
		d, err := content.ParseDigest(l)
		if err != nil {
			return 0
		}
		ix, err := c.store.Index(d)
		if err != nil {
			return 0
		}
		n += uint64(ix.Size)
	}
	s.ui.sizes.mu.Lock()
	if s.ui.sizes.images == nil {
		s.ui.sizes.images = map[string]uint64{}
	}
	s.ui.sizes.images[id] = n
	s.ui.sizes.mu.Unlock()
	return n
}

// needBytes is what a device running the images from must fetch to run
// the images to: the distinct pieces of to's layers that from's lack.
func (s *Server) needBytes(fromRel, toRel string, from, to []string) (uint64, bool) {
	c := s.content.c
	if c == nil {
		return 0, false
	}
	key := [2]string{fromRel, toRel}
	s.ui.sizes.mu.Lock()
	n, ok := s.ui.sizes.needs[key]
	s.ui.sizes.mu.Unlock()
	if ok {
		return n, true
	}
	layers := func(ids []string) (map[content.Digest]bool, bool) {
		ls := map[content.Digest]bool{}
		for _, id := range ids {
			e, err := c.image(id)
			if err != nil || e == nil {
				return nil, false
			}
			for _, l := range e.diffIDs {
				d, err := content.ParseDigest(l)
				if err != nil {
					return nil, false
				}
				ls[d] = true
			}
		}
		return ls, true
	}
	fl, ok1 := layers(from)
	tl, ok2 := layers(to)
	if !ok1 || !ok2 {
		return 0, false
	}
	have := map[content.Digest]bool{}
	for d := range fl {
		if tl[d] {
			continue // the same layer: nothing travels
		}
		ix, err := c.store.Index(d)
		if err != nil {
			return 0, false
		}
		for _, p := range ix.Pieces() {
			have[p.Digest] = true
		}
	}
	for d := range tl {
		if fl[d] {
			continue
		}
		ix, err := c.store.Index(d)
		if err != nil {
			return 0, false
		}
		for _, p := range ix.Pieces() {
			if !have[p.Digest] {
				have[p.Digest] = true
				n += uint64(p.Size)
			}
		}
	}
	s.ui.sizes.mu.Lock()
	if s.ui.sizes.needs == nil {
		s.ui.sizes.needs = map[[2]string]uint64{}
	}
	s.ui.sizes.needs[key] = n
	s.ui.sizes.mu.Unlock()
	return n, true
}
