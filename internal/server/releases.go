package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"unicode/utf8"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// releaseView is a stored release for clients; withSpec decodes its spec.
func releaseView(r store.Release, withSpec bool) (serverapi.Release, error) {
	v := serverapi.Release{ID: r.ID, FleetID: r.FleetID, App: r.App, Version: r.Version, Created: r.Created, CreatedBy: r.CreatedBy, Signature: r.Signature, KeyID: r.KeyID}
	if withSpec {
		var spec release.Spec
		if err := json.Unmarshal(r.Spec, &spec); err != nil {
			return v, fmt.Errorf("release %s: stored spec: %w", r.ID, err)
		}
		v.Spec = &spec
	}
	return v, nil
}

var imageIDRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// sealRelease checks a release request and seals it: its ID is the digest
// of its app, version and spec, so the same request always makes the same
// release. It is pure, for the fuzzer.
func sealRelease(req serverapi.CreateReleaseRequest) (release.Release, error) {
	if req.Version == "" || len(req.Version) > 128 || !utf8.ValidString(req.Version) {
		return release.Release{}, fmt.Errorf("version %q: want 1 to 128 characters (git describe --tags --dirty --always): %w", req.Version, release.ErrInvalid)
	}
	for ref, id := range req.Images {
		if !imageIDRE.MatchString(id) {
			return release.Release{}, fmt.Errorf("images: %s: %q is not an image ID (sha256: and 64 hex digits): %w", ref, id, release.ErrInvalid)
		}
		used := false
		for _, svc := range req.Spec.Services {
			used = used || svc.Image == ref
		}
		if !used {
			return release.Release{}, fmt.Errorf("images: no service uses %s: %w", ref, release.ErrInvalid)
		}
	}
	rel := req.Release() // pinned and sealed, as the client that signed it computed
	if err := rel.Validate(); err != nil {
		return release.Release{}, err
	}
	for name, svc := range rel.Spec.Services {
		if svc.ImageID != "" && !imageIDRE.MatchString(svc.ImageID) {
			return release.Release{}, fmt.Errorf("service %s: image_id %q: want sha256: and 64 hex digits: %w", name, svc.ImageID, release.ErrInvalid)
		}
	}
	return rel, nil
}

func (s *Server) createRelease(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.CreateReleaseRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	rel, err := sealRelease(req)
	if err != nil {
		return err
	}
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	if err := s.checkSignature(ctx, f, rel.ID, req); err != nil {
		return err
	}
	if err := s.checkImages(ctx, f.ID, rel, req.Content); err != nil {
		return err
	}
	spec, err := json.Marshal(rel.Spec)
	if err != nil {
		return err
	}
	stored, created, err := s.st.CreateRelease(ctx, store.Release{
		ID: rel.ID, FleetID: f.ID, App: rel.App, Version: rel.Version, Spec: spec, CreatedBy: p.actor(),
		Signature: req.Signature, KeyID: req.KeyID,
	})
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		details := map[string]any{"fleet": f.Name, "app": rel.App, "version": rel.Version}
		if req.Content != serverapi.ContentServer {
			details["content"] = req.Content
		}
		if req.KeyID != "" {
			details["key_id"] = req.KeyID
		}
		s.audit(r, p, "release.create", "release/"+rel.ID, details)
	} else if req.Signature != "" {
		// Maybe signed anew: the devices running it get it again.
		s.hub.kick()
	}
	v, err := releaseView(stored, true)
	if err != nil {
		return err
	}
	reply(w, status, v)
	return nil
}

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100, 1000)
	if err != nil {
		return err
	}
	rs, err := s.st.ListReleases(r.Context(), store.ReleaseFilter{FleetID: f.ID, App: r.URL.Query().Get("app"), Limit: limit})
	if err != nil {
		return err
	}
	out := make([]serverapi.Release, len(rs))
	for i, rel := range rs {
		out[i], _ = releaseView(rel, false)
	}
	reply(w, http.StatusOK, out)
	return nil
}

func (s *Server) getRelease(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	rel, err := s.st.Release(r.Context(), f.ID, r.PathValue("release"))
	if err != nil {
		return err
	}
	v, err := releaseView(rel, true)
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, v)
	return nil
}

func (s *Server) assignRelease(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.AssignRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	if req.All == (len(req.Devices) > 0) {
		return fmt.Errorf("name the devices, or all, not both or neither: %w", release.ErrInvalid)
	}
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	rel, err := s.st.Release(ctx, f.ID, r.PathValue("release"))
	if err != nil {
		return err
	}
	var changed store.Assigned
	devices := 0
	if req.All {
		// One transaction: every device, and new devices start with it too.
		changed, devices, err = s.st.AssignFleet(ctx, f.ID, rel.ID)
		if len(changed.Changed)+len(changed.Renewed) > 0 {
			s.hub.kick()
		}
		if err != nil {
			return err
		}
	} else {
		var ids []string
		for _, ref := range req.Devices {
			d, err := s.findDevice(ctx, f, ref)
			if err != nil {
				return err
			}
			ids = append(ids, d.ID)
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
		devices = len(ids)
		if changed, err = s.assign(ctx, f.ID, rel.ID, ids); err != nil {
			return err
		}
	}
	s.audit(r, p, "release.assign", "release/"+rel.ID, map[string]any{
		"fleet": f.Name, "app": rel.App, "version": rel.Version, "all": req.All, "devices": devices, "changed": len(changed.Changed), "renewed": len(changed.Renewed),
	})
	if changed.Changed == nil {
		changed.Changed = []string{}
	}
	reply(w, http.StatusOK, serverapi.Assignment{Release: rel.ID, App: rel.App, Changed: changed.Changed, Renewed: changed.Renewed, Unchanged: devices - len(changed.Changed)})
	return nil
}

// assign points devices of a fleet at a release (devices pinned to another
// excepted) and wakes their long polls; it returns the devices whose target
// changed and those it renewed (on the release already: a new generation).
func (s *Server) assign(ctx context.Context, fleetID, releaseID string, ids []string) (store.Assigned, error) {
	var all store.Assigned
	// In chunks, well below either database's limit on query parameters.
	for chunk := range slices.Chunk(ids, 500) {
		c, err := s.st.AssignRelease(ctx, fleetID, releaseID, chunk)
		if len(c.Changed)+len(c.Renewed) > 0 || err != nil {
			s.hub.kick()
		}
		if err != nil {
			return all, err
		}
		all.Changed = append(all.Changed, c.Changed...)
		all.Renewed = append(all.Renewed, c.Renewed...)
	}
	return all, nil
}

// findDevice finds a device of a fleet by name, or else by ID.
func (s *Server) findDevice(ctx context.Context, f store.Fleet, ref string) (store.Device, error) {
	d, err := s.st.DeviceByName(ctx, f.ID, ref)
	if errors.Is(err, release.ErrNotFound) {
		d, err = s.st.Device(ctx, ref)
		if err == nil && d.FleetID != f.ID {
			err = release.ErrNotFound
		}
	}
	if errors.Is(err, release.ErrNotFound) {
		return store.Device{}, fmt.Errorf("no device %q in fleet %s; nothing was assigned: %w", ref, f.Name, release.ErrNotFound)
	}
	return d, err
}
