package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"unicode/utf8"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// deviceView is a device as operators see it: what it last reported, and
// whether it was seen within three poll intervals.
func (s *Server) deviceView(d store.Device, fleet string) serverapi.Device {
	v := serverapi.Device{
		ID: d.ID, FleetID: d.FleetID, Fleet: fleet, Name: d.Name, Tags: d.Tags, Notes: d.Notes,
		Created: d.Created, LastSeen: d.LastSeen, Apps: map[string]release.AppState{},
		TargetVersion: d.TargetVersion, StateVersion: d.StateVersion,
	}
	if v.Tags == nil {
		v.Tags = []string{}
	}
	v.Online = !d.LastSeen.IsZero() && s.now().Sub(d.LastSeen) < 3*s.opts.PollInterval
	if len(d.State) > 0 {
		var cs release.CurrentState
		if err := json.Unmarshal(d.State, &cs); err == nil {
			if cs.Apps != nil {
				v.Apps = cs.Apps
			}
			if cs.Agent != (release.AgentInfo{}) {
				v.Agent = &cs.Agent
			}
			v.Disk, v.Reported = cs.Disk, cs.Reported
			if cs.Stopped != nil {
				v.Online = false // its agent said it stops
			}
		}
	}
	return v
}

// fullDeviceView adds the device's target to its view.
func (s *Server) fullDeviceView(ctx context.Context, d store.Device) (serverapi.Device, error) {
	f, err := s.st.Fleet(ctx, d.FleetID)
	if err != nil {
		return serverapi.Device{}, err
	}
	v := s.deviceView(d, f.Name)
	as, err := s.st.DeviceApps(ctx, d.ID)
	if err != nil {
		return serverapi.Device{}, err
	}
	v.Target = map[string]serverapi.TargetApp{}
	for _, a := range as {
		v.Target[a.App] = serverapi.TargetApp{Release: a.ReleaseID, Pinned: a.Pinned, Updated: a.Updated, Generation: a.Generation}
	}
	s.judgeApps(&v, as)
	return v, nil
}

// judgeApps sets the view's Status: per app of its target and of its
// report, where the device stands (serverapi.AppStatusOf).
func (s *Server) judgeApps(v *serverapi.Device, target []store.DeviceApp) {
	v.Status = map[string]serverapi.AppStatus{}
	now := s.now()
	name := v.ID // how the commands it suggests name the device
	if v.Fleet != "" {
		name = v.Name + " --fleet " + v.Fleet
	}
	for _, a := range target {
		t := serverapi.TargetApp{Release: a.ReleaseID, Pinned: a.Pinned, Updated: a.Updated, Generation: a.Generation}
		var rep *release.AppState
		if st, ok := v.Apps[a.App]; ok {
			rep = &st
		}
		v.Status[a.App] = serverapi.AppStatusOf(name, a.App, &t, rep, v.Online, now)
	}
	for app, st := range v.Apps {
		if _, ok := v.Status[app]; !ok {
			v.Status[app] = serverapi.AppStatusOf(name, app, nil, &st, v.Online, now)
		}
	}
}

// judgeAll sets the Status of many device views, their targets read at once.
func (s *Server) judgeAll(ctx context.Context, vs []serverapi.Device) error {
	ids := make([]string, len(vs))
	for i, v := range vs {
		ids[i] = v.ID
	}
	targets, err := s.st.DevicesApps(ctx, ids)
	if err != nil {
		return err
	}
	for i := range vs {
		s.judgeApps(&vs[i], targets[vs[i].ID])
	}
	return nil
}

func (s *Server) register(w http.ResponseWriter, r *http.Request, _ principal) error {
	var req serverapi.RegisterRequest
	if err := decode(w, r, &req, false); err != nil {
		return err
	}
	if !validName(req.Name) {
		return fmt.Errorf("device name %q: use 1 to 63 letters, digits, '.', '-' and '_': %w", req.Name, release.ErrInvalid)
	}
	for what, v := range map[string]string{"arch": req.Arch, "agent_version": req.AgentVersion} {
		if len(v) > 64 || !utf8.ValidString(v) {
			return fmt.Errorf("%s: at most 64 characters of text: %w", what, release.ErrInvalid)
		}
	}
	if req.ProvisioningKey == "" {
		return fmt.Errorf("no provisioning_key: a device registers with its fleet's provisioning key: %w", errUnauthenticated)
	}
	ctx := r.Context()
	f, err := s.st.FleetByProvisioningKey(ctx, req.ProvisioningKey)
	if errors.Is(err, release.ErrNotFound) {
		return fmt.Errorf("the provisioning key is unknown, or was rotated or revoked; ask an admin of the fleet for its current key (berth fleet rotate-key): %w", errUnauthenticated)
	}
	if err != nil {
		return err
	}
	token := store.NewSecret("bd")
	d, err := s.st.CreateDevice(ctx, f.ID, req.Name, token)
	if errors.Is(err, release.ErrConflict) {
		return fmt.Errorf("a device named %s is registered in fleet %s already; give this one another name, or delete the old one (DELETE /v1/devices/{id}): %w", req.Name, f.Name, release.ErrConflict)
	}
	if err != nil {
		return err
	}
	// What the agent said of itself is its first state report.
	state, _ := json.Marshal(release.CurrentState{
		Agent:    release.AgentInfo{Name: req.Name, Version: req.AgentVersion, Arch: req.Arch},
		Apps:     map[string]release.AppState{},
		Reported: s.now().UTC(),
	})
	if _, err = s.st.SetDeviceState(ctx, d.ID, state, store.AnyVersion); err != nil {
		return err
	}
	if d, err = s.st.Device(ctx, d.ID); err != nil {
		return err
	}
	s.auditAs(ctx, "device:"+d.ID, "device.register", "device/"+d.ID, map[string]any{
		"fleet": f.Name, "name": d.Name, "arch": req.Arch, "agent_version": req.AgentVersion, "key_prefix": f.KeyPrefix,
	})
	s.log.Info("device registered", "fleet", f.Name, "device", d.Name, "id", d.ID)
	keys, err := s.fleetKeys(ctx, f.ID)
	if err != nil {
		return err
	}
	reg := serverapi.Registration{Device: s.deviceView(d, f.Name), Token: token}
	for _, k := range keys {
		reg.TrustedKeys = append(reg.TrustedKeys, k.String())
	}
	reply(w, http.StatusCreated, reg)
	return nil
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, p principal) error {
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit, err := queryInt(r, "limit", 1000, 1000)
	if err != nil {
		return err
	}
	var ds []store.Device
	if name := q.Get("name"); name != "" {
		d, err := s.st.DeviceByName(ctx, f.ID, name)
		switch {
		case err == nil:
			ds = []store.Device{d}
		case !errors.Is(err, release.ErrNotFound):
			return err
		}
	} else if ds, err = s.st.ListDevices(ctx, store.DeviceFilter{FleetID: f.ID, Tag: q.Get("tag"), After: q.Get("after"), Limit: limit}); err != nil {
		return err
	}
	out := make([]serverapi.Device, len(ds))
	for i, d := range ds {
		out[i] = s.deviceView(d, f.Name)
	}
	if err := s.judgeAll(ctx, out); err != nil {
		return err
	}
	reply(w, http.StatusOK, out)
	return nil
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request, p principal) error {
	d, err := s.st.Device(r.Context(), r.PathValue("device"))
	if err != nil {
		return err
	}
	v, err := s.fullDeviceView(r.Context(), d)
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, v)
	return nil
}

func (s *Server) updateDevice(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.UpdateDeviceRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	// Check everything first, so that a refused request changes nothing.
	if req.Name != nil && !validName(*req.Name) {
		return fmt.Errorf("device name %q: use 1 to 63 letters, digits, '.', '-' and '_': %w", *req.Name, release.ErrInvalid)
	}
	if req.Tags != nil {
		if len(*req.Tags) > 64 {
			return fmt.Errorf("more than 64 tags: %w", release.ErrInvalid)
		}
		for _, t := range *req.Tags {
			if !validName(t) {
				return fmt.Errorf("tag %q: use 1 to 63 letters, digits, '.', '-' and '_': %w", t, release.ErrInvalid)
			}
		}
	}
	if req.Notes != nil && (len(*req.Notes) > 4096 || !utf8.ValidString(*req.Notes)) {
		return fmt.Errorf("notes: at most 4096 bytes of text: %w", release.ErrInvalid)
	}
	ctx := r.Context()
	d, err := s.st.Device(ctx, r.PathValue("device"))
	if err != nil {
		return err
	}
	changed := map[string]any{}
	if req.Name != nil && *req.Name != d.Name {
		if err := s.st.SetDeviceName(ctx, d.ID, *req.Name); err != nil {
			return err
		}
		changed["name"] = *req.Name
	}
	if req.Tags != nil {
		if err := s.st.SetDeviceTags(ctx, d.ID, *req.Tags); err != nil {
			return err
		}
		changed["tags"] = *req.Tags
	}
	if req.Notes != nil {
		if err := s.st.SetDeviceNotes(ctx, d.ID, *req.Notes); err != nil {
			return err
		}
		changed["notes"] = true
	}
	if len(changed) > 0 {
		s.audit(r, p, "device.update", "device/"+d.ID, changed)
	}
	if d, err = s.st.Device(ctx, d.ID); err != nil {
		return err
	}
	v, err := s.fullDeviceView(ctx, d)
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, v)
	return nil
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request, p principal) error {
	d, err := s.st.Device(r.Context(), r.PathValue("device"))
	if err != nil {
		return err
	}
	if err := s.st.DeleteDevice(r.Context(), d.ID); err != nil {
		return err
	}
	// Its token stops working here now, and on other replicas once their
	// hubs handle the target version the deletion took.
	s.devices.forget(d.ID)
	s.hub.kick()
	s.audit(r, p, "device.delete", "device/"+d.ID, map[string]any{"name": d.Name, "fleet_id": d.FleetID})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) pin(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.PinRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	if req.Release == "" {
		return fmt.Errorf("no release to pin to: %w", release.ErrInvalid)
	}
	ctx := r.Context()
	d, err := s.st.Device(ctx, r.PathValue("device"))
	if err != nil {
		return err
	}
	rel, err := s.st.Release(ctx, d.FleetID, req.Release)
	if err != nil {
		return err
	}
	if req.App != "" && req.App != rel.App {
		return fmt.Errorf("release %s is of app %s, not %s: %w", release.ShortID(rel.ID), rel.App, req.App, release.ErrInvalid)
	}
	if err := s.st.PinRelease(ctx, d.ID, rel.ID); err != nil {
		return err
	}
	s.hub.kick()
	s.audit(r, p, "device.pin", "device/"+d.ID, map[string]any{"app": rel.App, "release": rel.ID, "version": rel.Version})
	if d, err = s.st.Device(ctx, d.ID); err != nil {
		return err
	}
	v, err := s.fullDeviceView(ctx, d)
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, v)
	return nil
}

// retryApp answers POST /v1/devices/{device}/apps/{app}/retry: the app is
// assigned again to the release it has (a new generation), which ends a
// LAN override there and makes the device try a release again that
// failed or was refused. The answer is the device, as GET gives it.
func (s *Server) retryApp(w http.ResponseWriter, r *http.Request, p principal) error {
	ctx := r.Context()
	d, err := s.st.Device(ctx, r.PathValue("device"))
	if err != nil {
		return err
	}
	app := r.PathValue("app")
	as, err := s.st.DeviceApps(ctx, d.ID)
	if err != nil {
		return err
	}
	var cur *store.DeviceApp
	for i := range as {
		if as[i].App == app {
			cur = &as[i]
		}
	}
	if cur == nil {
		return fmt.Errorf("device %s has no app %s in its target; assign a release of it first (berth release assign): %w", d.Name, app, release.ErrNotFound)
	}
	gen, err := s.st.RenewApp(ctx, d.ID, app)
	if err != nil {
		return err
	}
	s.hub.kick()
	s.audit(r, p, "device.retry", "device/"+d.ID, map[string]any{"app": app, "release": cur.ReleaseID, "generation": gen})
	if d, err = s.st.Device(ctx, d.ID); err != nil {
		return err
	}
	v, err := s.fullDeviceView(ctx, d)
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, v)
	return nil
}

func (s *Server) unpin(w http.ResponseWriter, r *http.Request, p principal) error {
	ctx := r.Context()
	d, err := s.st.Device(ctx, r.PathValue("device"))
	if err != nil {
		return err
	}
	app := r.PathValue("app")
	if err := s.st.UnpinApp(ctx, d.ID, app); err != nil {
		return err
	}
	s.audit(r, p, "device.unpin", "device/"+d.ID, map[string]any{"app": app})
	v, err := s.fullDeviceView(ctx, d)
	if err != nil {
		return err
	}
	reply(w, http.StatusOK, v)
	return nil
}
