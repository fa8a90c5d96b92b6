package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// renderedTargets keeps targets as sent, by what they are made of: after
// a fleet-wide release every device of the fleet wakes at once and asks
// for the same bytes, which are then read, merged and encoded once instead
// of once per device. Only targets without device-level environment are
// kept (those are one device's own and would only churn the cache).
type renderedTargets struct {
	group singleflight.Group

	mu    sync.Mutex
	byKey map[string][]byte
	order []string // oldest first; past maxRendered the oldest goes
}

const maxRendered = 64

func (c *renderedTargets) get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.byKey[key]
	return b, ok
}

func (c *renderedTargets) put(key string, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byKey == nil {
		c.byKey = map[string][]byte{}
	}
	if _, ok := c.byKey[key]; ok {
		return
	}
	c.byKey[key] = b
	c.order = append(c.order, key)
	if len(c.order) > maxRendered {
		delete(c.byKey, c.order[0])
		c.order = slices.Delete(c.order, 0, 1)
	}
}

// targetKey names a target by everything it is made of: its version, the
// fleet, each app's release with its signature and generation, and the
// environment layers. shared is false when a layer is the device's own.
func targetKey(version int64, fleet string, refs []store.Release, gens map[string]int64, layers []store.EnvLayer) (key string, shared bool) {
	var b strings.Builder
	b.WriteString(strconv.FormatInt(version, 10))
	b.WriteByte(0)
	b.WriteString(fleet)
	for _, r := range refs {
		for _, f := range []string{r.App, r.ID, r.Signature, r.KeyID, strconv.FormatInt(gens[r.App], 10)} {
			b.WriteByte(0)
			b.WriteString(f)
		}
	}
	b.WriteByte(1)
	for _, l := range layers {
		if l.DeviceID != "" {
			return "", false
		}
		b.WriteByte(0)
		b.WriteString(l.Service)
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range l.Vars {
				if !yield(k) {
					return
				}
			}
		})
		for _, k := range keys {
			b.WriteByte(2)
			b.WriteString(k)
			b.WriteByte(3)
			b.WriteString(l.Vars[k])
		}
	}
	return b.String(), true
}

// targetParts is what a device's target is made of, or why it could not
// be read.
type targetParts struct {
	parts store.TargetParts
	err   error
}

// renderTarget is the body of a device's target at version: per app its
// release, each service's environment overlaid with the env layers that
// reach it (the file's < fleet < service < device < device-service). What
// it is made of is read after version, with the parts of the other devices
// asking at the same time (a fleet woken by a release: a read per thousand
// devices, not two per device).
func (s *Server) renderTarget(ctx context.Context, d store.Device, version int64) ([]byte, error) {
	p := s.targetParts.do(ctx, d)
	if p.err != nil {
		return nil, p.err
	}
	refs, gens, layers := p.parts.Releases, p.parts.Generations, p.parts.Env
	fleet, err := s.fleetName(ctx, d.FleetID)
	if err != nil {
		return nil, err
	}
	key, shared := targetKey(version, d.FleetID, refs, gens, layers)
	if !shared {
		return s.encodeTarget(ctx, version, fleet, refs, gens, layers)
	}
	if b, ok := s.targets.get(key); ok {
		return b, nil
	}
	// One device renders; the others woken with it wait for its bytes.
	// Its request may end first: the rendering does not end with it.
	v, err, _ := s.targets.group.Do(key, func() (any, error) {
		b, err := s.encodeTarget(context.WithoutCancel(ctx), version, fleet, refs, gens, layers)
		if err == nil {
			s.targets.put(key, b)
		}
		return b, err
	})
	if err != nil {
		return nil, err
	}
	return v.([]byte), nil
}

// encodeTarget reads the releases' specs and encodes the target as sent.
// The signatures are those of refs, which the target is known by.
func (s *Server) encodeTarget(ctx context.Context, version int64, fleet string, refs []store.Release, gens map[string]int64, layers []store.EnvLayer) ([]byte, error) {
	t := serverapi.Target{Version: version, Fleet: fleet, TargetState: release.TargetState{Apps: map[string]*release.Release{}}, Generations: gens}
	for _, ref := range refs {
		rel, err := s.st.Release(ctx, ref.FleetID, ref.ID)
		if err != nil {
			return nil, err
		}
		out := &release.Release{ID: rel.ID, App: rel.App, Version: rel.Version, Created: rel.Created}
		if err := json.Unmarshal(rel.Spec, &out.Spec); err != nil {
			return nil, fmt.Errorf("release %s: stored spec: %w", rel.ID, err)
		}
		mergeEnv(&out.Spec, layers)
		t.Apps[rel.App] = out
		if ref.Signature != "" {
			if t.Signatures == nil {
				t.Signatures = map[string]serverapi.Signature{}
			}
			t.Signatures[rel.App] = serverapi.Signature{KeyID: ref.KeyID, Signature: ref.Signature}
		}
	}
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(t); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
