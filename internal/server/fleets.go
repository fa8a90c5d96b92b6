package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

func fleetView(f store.Fleet) serverapi.Fleet {
	return serverapi.Fleet{ID: f.ID, Name: f.Name, KeyPrefix: f.KeyPrefix, Created: f.Created}
}

// findFleet finds a fleet by name, or else by ID.
func (s *Server) findFleet(ctx context.Context, ref string) (store.Fleet, error) {
	f, err := s.st.FleetByName(ctx, ref)
	if errors.Is(err, release.ErrNotFound) {
		f, err = s.st.Fleet(ctx, ref)
	}
	if errors.Is(err, release.ErrNotFound) {
		return store.Fleet{}, fmt.Errorf("no fleet %q: %w", ref, release.ErrNotFound)
	}
	return f, err
}

func (s *Server) createFleet(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.CreateFleetRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	if !release.ValidName(req.Name) {
		return fmt.Errorf("fleet name %q: use 1 to 63 lower-case letters, digits, '-' and '_': %w", req.Name, release.ErrInvalid)
	}
	key := store.NewSecret("bp")
	f, err := s.st.CreateFleet(r.Context(), req.Name, key)
	if err != nil {
		return err
	}
	s.audit(r, p, "fleet.create", "fleet/"+f.Name, map[string]any{"id": f.ID, "key_prefix": f.KeyPrefix})
	reply(w, http.StatusCreated, serverapi.FleetKey{Fleet: fleetView(f), ProvisioningKey: key})
	return nil
}

func (s *Server) listFleets(w http.ResponseWriter, r *http.Request, p principal) error {
	fs, err := s.st.ListFleets(r.Context())
	if err != nil {
		return err
	}
	out := make([]serverapi.Fleet, len(fs))
	for i, f := range fs {
		out[i] = fleetView(f)
	}
	reply(w, http.StatusOK, out)
	return nil
}

func (s *Server) getFleet(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	ars, err := s.st.FleetReleases(r.Context(), f.ID)
	if err != nil {
		return err
	}
	v := fleetView(f)
	for _, a := range ars {
		v.Apps = append(v.Apps, serverapi.AppRelease{App: a.App, Release: a.ReleaseID})
	}
	reply(w, http.StatusOK, v)
	return nil
}

func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	key := store.NewSecret("bp")
	if f, err = s.st.SetProvisioningKey(r.Context(), f.ID, key); err != nil {
		return err
	}
	s.audit(r, p, "fleet.key.rotate", "fleet/"+f.Name, map[string]any{"key_prefix": f.KeyPrefix})
	reply(w, http.StatusOK, serverapi.FleetKey{Fleet: fleetView(f), ProvisioningKey: key})
	return nil
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	if f, err = s.st.SetProvisioningKey(r.Context(), f.ID, ""); err != nil {
		return err
	}
	s.audit(r, p, "fleet.key.revoke", "fleet/"+f.Name, nil)
	reply(w, http.StatusOK, fleetView(f))
	return nil
}

// envScope reads which layer an env request names: the fleet's, or a
// device's (path value "device"), for every service or one ("service").
func (s *Server) envScope(r *http.Request) (store.EnvLayer, serverapi.EnvLayer, string, error) {
	ctx := r.Context()
	var l store.EnvLayer
	var v serverapi.EnvLayer
	var object string
	if id := r.PathValue("device"); id != "" {
		d, err := s.st.Device(ctx, id)
		if err != nil {
			return l, v, "", err
		}
		f, err := s.st.Fleet(ctx, d.FleetID)
		if err != nil {
			return l, v, "", err
		}
		l.FleetID, l.DeviceID, v.Fleet, v.Device, object = f.ID, d.ID, f.Name, d.ID, "device/"+d.ID
	} else {
		f, err := s.findFleet(ctx, r.PathValue("fleet"))
		if err != nil {
			return l, v, "", err
		}
		l.FleetID, v.Fleet, object = f.ID, f.Name, "fleet/"+f.Name
	}
	if svc := r.PathValue("service"); svc != "" {
		if !release.ValidName(svc) {
			return l, v, "", fmt.Errorf("service name %q: use lower-case letters, digits, '-' and '_': %w", svc, release.ErrInvalid)
		}
		l.Service, v.Service = svc, svc
	}
	return l, v, object, nil
}

func (s *Server) getEnv(w http.ResponseWriter, r *http.Request, p principal) error {
	want, v, _, err := s.envScope(r)
	if err != nil {
		return err
	}
	ls, err := s.st.EnvLayers(r.Context(), want.FleetID, want.DeviceID)
	if err != nil {
		return err
	}
	v.Vars = map[string]string{}
	for _, l := range ls {
		if l.DeviceID == want.DeviceID && l.Service == want.Service {
			v.Vars, v.Updated = l.Vars, l.Updated
		}
	}
	reply(w, http.StatusOK, v)
	return nil
}

func (s *Server) setEnv(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.SetEnvRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	for k := range req.Vars {
		if k == "" || strings.ContainsAny(k, "=\x00") || len(k) > 256 {
			return fmt.Errorf("variable name %q: want a name without '=': %w", k, release.ErrInvalid)
		}
	}
	l, v, object, err := s.envScope(r)
	if err != nil {
		return err
	}
	l.Vars = req.Vars
	if err := s.st.SetEnv(r.Context(), l); err != nil {
		return err
	}
	s.hub.kick()
	// Names only: values may be secrets.
	s.audit(r, p, "env.set", object, map[string]any{"service": l.Service, "vars": slices.Sorted(maps.Keys(req.Vars))})
	v.Vars = req.Vars
	if v.Vars == nil {
		v.Vars = map[string]string{}
	}
	v.Updated = s.now().UTC().Truncate(time.Microsecond)
	reply(w, http.StatusOK, v)
	return nil
}
