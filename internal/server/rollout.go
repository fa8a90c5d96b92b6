package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// Rollouts move a fleet's devices to a release in stages: a canary first,
// then batches, each stage waiting for its devices' verdicts (the engine,
// rollout_engine.go), pausing at the failure threshold. The endpoints here
// start, show, pause, resume and abort them.

func (s *Server) rolloutRoutes() []route {
	return []route{
		{"POST /v1/fleets/{fleet}/rollouts", needDeployer, s.startRollout},
		{"GET /v1/fleets/{fleet}/rollouts", needViewer, s.listRollouts},
		{"GET /v1/fleets/{fleet}/rollouts/{rollout}", needViewer, s.getRollout},
		{"POST /v1/fleets/{fleet}/rollouts/{rollout}/pause", needDeployer, s.pauseRollout},
		{"POST /v1/fleets/{fleet}/rollouts/{rollout}/resume", needDeployer, s.resumeRollout},
		{"POST /v1/fleets/{fleet}/rollouts/{rollout}/abort", needDeployer, s.abortRollout},
	}
}

func (s *Server) startRollout(w http.ResponseWriter, r *http.Request, p principal) error {
	var req serverapi.StartRolloutRequest
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	if req.Release == "" {
		return fmt.Errorf("no release: name the release to roll out (its ID): %w", release.ErrInvalid)
	}
	params, err := rolloutParams(req)
	if err != nil {
		return err
	}
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	rel, err := s.st.Release(ctx, f.ID, req.Release)
	if err != nil {
		return err
	}
	devices, err := s.rolloutDevices(ctx, f, rel, params)
	if err != nil {
		return err
	}
	if len(devices) == 0 {
		return fmt.Errorf("no devices to roll out to in fleet %s (none match, or all are pinned to other releases of %s); nothing was started: %w", f.Name, rel.App, release.ErrInvalid)
	}
	online := func(d store.Device) bool { return s.deviceView(d, f.Name).Online }
	plan, err := planStages(devices, online, &params)
	if err != nil {
		return err
	}
	b, err := json.Marshal(params)
	if err != nil {
		return err
	}
	ro, err := s.st.CreateRollout(ctx, store.Rollout{FleetID: f.ID, ReleaseID: rel.ID, Params: b, CreatedBy: p.actor()}, plan)
	if errors.Is(err, release.ErrConflict) {
		return fmt.Errorf("a rollout of %s is already running or paused in fleet %s (berth rollout list --fleet %s); finish or abort it first: %w", rel.App, f.Name, f.Name, release.ErrConflict)
	}
	if err != nil {
		return err
	}
	s.audit(r, p, "rollout.start", "rollout/"+ro.ID, map[string]any{
		"fleet": f.Name, "app": rel.App, "release": rel.ID, "version": rel.Version, "devices": len(plan), "params": params,
	})
	// The canary moves now, not at the engine's next look.
	if err := s.stepRollout(context.WithoutCancel(ctx), ro); err != nil {
		s.log.Warn("rollout: first step", "rollout", ro.ID, "error", err)
	}
	return s.replyRollout(w, ctx, f, ro.ID, http.StatusCreated)
}

// rolloutDevices are the devices a rollout takes: the fleet's, or those
// named, with the tag if one is given, less those pinned to another
// release of the app.
func (s *Server) rolloutDevices(ctx context.Context, f store.Fleet, rel store.Release, p serverapi.RolloutParams) ([]store.Device, error) {
	var ds []store.Device
	if len(p.Devices) > 0 {
		seen := map[string]bool{}
		for _, ref := range p.Devices {
			d, err := s.findDevice(ctx, f, ref)
			if err != nil {
				return nil, fmt.Errorf("%w (nothing was started)", err)
			}
			if !seen[d.ID] && (p.Tag == "" || slices.Contains(d.Tags, p.Tag)) {
				seen[d.ID] = true
				ds = append(ds, d)
			}
		}
	} else if err := s.eachDevice(ctx, f.ID, p.Tag, func(d store.Device) { ds = append(ds, d) }); err != nil {
		return nil, err
	}
	out := ds[:0]
	for _, d := range ds {
		as, err := s.st.DeviceApps(ctx, d.ID)
		if err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(as, func(a store.DeviceApp) bool { return a.App == rel.App && a.Pinned && a.ReleaseID != rel.ID }) {
			out = append(out, d)
		}
	}
	return out, nil
}

func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request, p principal) error {
	ctx := r.Context()
	f, err := s.findFleet(ctx, r.PathValue("fleet"))
	if err != nil {
		return err
	}
	limit, err := queryInt(r, "limit", 100, 1000)
	if err != nil {
		return err
	}
	status := r.URL.Query().Get("status")
	if status != "" && !store.RolloutStatus(status).Valid() {
		return fmt.Errorf("status=%q: want running, paused, completed or aborted: %w", status, release.ErrInvalid)
	}
	ros, err := s.st.ListRollouts(ctx, f.ID)
	if err != nil {
		return err
	}
	out := []serverapi.Rollout{}
	for _, ro := range ros {
		if len(out) == limit {
			break
		}
		if status != "" && string(ro.Status) != status {
			continue
		}
		v, err := s.rolloutView(ctx, f, ro, false)
		if err != nil {
			return err
		}
		out = append(out, v)
	}
	reply(w, http.StatusOK, out)
	return nil
}

func (s *Server) getRollout(w http.ResponseWriter, r *http.Request, p principal) error {
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return err
	}
	return s.replyRollout(w, r.Context(), f, r.PathValue("rollout"), http.StatusOK)
}

func (s *Server) pauseRollout(w http.ResponseWriter, r *http.Request, p principal) error {
	req, f, ro, err := s.rolloutAction(w, r)
	if err != nil {
		return err
	}
	if ro.Status != store.RolloutRunning {
		return fmt.Errorf("rollout %s is %s, not running; nothing was changed: %w", ro.ID, ro.Status, release.ErrConflict)
	}
	_, st := decodeRollout(ro)
	st.Reason = "paused by " + p.actor()
	if req.Reason != "" {
		st.Reason += ": " + req.Reason
	}
	if _, err := s.st.UpdateRollout(r.Context(), ro.ID, store.RolloutRunning, store.RolloutPaused, st.encode()); err != nil {
		return err
	}
	s.audit(r, p, "rollout.pause", "rollout/"+ro.ID, map[string]any{"fleet": f.Name, "reason": req.Reason, "stage": ro.Stage})
	return s.replyRollout(w, r.Context(), f, ro.ID, http.StatusOK)
}

func (s *Server) resumeRollout(w http.ResponseWriter, r *http.Request, p principal) error {
	_, f, ro, err := s.rolloutAction(w, r)
	if err != nil {
		return err
	}
	if ro.Status != store.RolloutPaused {
		return fmt.Errorf("rollout %s is %s, not paused; nothing was changed: %w", ro.ID, ro.Status, release.ErrConflict)
	}
	ctx := r.Context()
	devs, err := s.st.RolloutDevices(ctx, ro.ID)
	if err != nil {
		return err
	}
	failed := 0
	for _, d := range devs {
		if d.Status == serverapi.RolloutDeviceFailed {
			failed++
		}
	}
	// The failures so far are acknowledged: the threshold counts new ones.
	ro, err = s.st.UpdateRollout(ctx, ro.ID, store.RolloutPaused, store.RolloutRunning, rolloutState{Acked: failed}.encode())
	if err != nil {
		return err
	}
	s.audit(r, p, "rollout.resume", "rollout/"+ro.ID, map[string]any{"fleet": f.Name, "acknowledged_failures": failed, "stage": ro.Stage})
	if err := s.stepRollout(context.WithoutCancel(ctx), ro); err != nil {
		s.log.Warn("rollout: step after resume", "rollout", ro.ID, "error", err)
	}
	return s.replyRollout(w, ctx, f, ro.ID, http.StatusOK)
}

func (s *Server) abortRollout(w http.ResponseWriter, r *http.Request, p principal) error {
	req, f, ro, err := s.rolloutAction(w, r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	changed := false
	// The engine may move it between running and paused meanwhile: retry.
	for try := 0; ro.Status == store.RolloutRunning || ro.Status == store.RolloutPaused; try++ {
		_, st := decodeRollout(ro)
		st.Reason = "aborted by " + p.actor()
		if req.Reason != "" {
			st.Reason += ": " + req.Reason
		}
		next, err := s.st.UpdateRollout(ctx, ro.ID, ro.Status, store.RolloutAborted, st.encode())
		if err == nil {
			ro, changed = next, true
			break
		}
		if !errors.Is(err, release.ErrConflict) || try == 3 {
			return err
		}
		if ro, err = s.st.Rollout(ctx, ro.ID); err != nil {
			return err
		}
	}
	if ro.Status != store.RolloutAborted {
		return fmt.Errorf("rollout %s is %s: there is nothing to abort; to go back, start a rollout of the release before: %w", ro.ID, ro.Status, release.ErrConflict)
	}
	// Moving no more devices is settled; now return those it moved. An
	// abort cut short (a crash) finishes when asked again.
	n, err := s.revertRollout(context.WithoutCancel(ctx), ro)
	if err != nil {
		return fmt.Errorf("rollout %s is aborted, but returning its devices failed part way (%d returned); ask to abort again to finish: %w", ro.ID, n, err)
	}
	if changed || n > 0 {
		s.audit(r, p, "rollout.abort", "rollout/"+ro.ID, map[string]any{"fleet": f.Name, "reason": req.Reason, "stage": ro.Stage, "returned": n})
	}
	return s.replyRollout(w, ctx, f, ro.ID, http.StatusOK)
}

// rolloutAction reads the optional body of pause, resume and abort, and
// finds the fleet and the rollout.
func (s *Server) rolloutAction(w http.ResponseWriter, r *http.Request) (serverapi.RolloutActionRequest, store.Fleet, store.Rollout, error) {
	var req serverapi.RolloutActionRequest
	if r.ContentLength != 0 { // the body is optional
		if err := decode(w, r, &req, true); err != nil {
			return req, store.Fleet{}, store.Rollout{}, err
		}
	}
	if len(req.Reason) > 1024 {
		return req, store.Fleet{}, store.Rollout{}, fmt.Errorf("reason: at most 1024 bytes: %w", release.ErrInvalid)
	}
	f, err := s.findFleet(r.Context(), r.PathValue("fleet"))
	if err != nil {
		return req, f, store.Rollout{}, err
	}
	ro, err := s.findRollout(r.Context(), f, r.PathValue("rollout"))
	return req, f, ro, err
}

func (s *Server) findRollout(ctx context.Context, f store.Fleet, id string) (store.Rollout, error) {
	ro, err := s.st.Rollout(ctx, id)
	if err == nil && ro.FleetID != f.ID {
		err = release.ErrNotFound
	}
	if errors.Is(err, release.ErrNotFound) {
		return store.Rollout{}, fmt.Errorf("no rollout %q in fleet %s (berth rollout list --fleet %s): %w", id, f.Name, f.Name, release.ErrNotFound)
	}
	return ro, err
}

func (s *Server) replyRollout(w http.ResponseWriter, ctx context.Context, f store.Fleet, id string, status int) error {
	ro, err := s.findRollout(ctx, f, id)
	if err != nil {
		return err
	}
	v, err := s.rolloutView(ctx, f, ro, true)
	if err != nil {
		return err
	}
	reply(w, status, v)
	return nil
}

// rolloutView is a rollout for clients: its stages' progress, and with
// withDevices each device with what it last reported.
func (s *Server) rolloutView(ctx context.Context, f store.Fleet, ro store.Rollout, withDevices bool) (serverapi.Rollout, error) {
	params, st := decodeRollout(ro)
	v := serverapi.Rollout{
		ID: ro.ID, FleetID: f.ID, Fleet: f.Name, Release: ro.ReleaseID, App: ro.App, Status: string(ro.Status),
		Params: params, Stage: ro.Stage, Stages: []serverapi.RolloutStage{}, CreatedBy: ro.CreatedBy, Created: ro.Created, Updated: ro.Updated,
	}
	if ro.Status == store.RolloutPaused || ro.Status == store.RolloutAborted {
		v.Reason = st.Reason
	}
	if rel, err := s.st.Release(ctx, f.ID, ro.ReleaseID); err == nil {
		v.Version = rel.Version
	} else if !errors.Is(err, release.ErrNotFound) {
		return v, err
	}
	devs, err := s.st.RolloutDevices(ctx, ro.ID)
	if err != nil {
		return v, err
	}
	for _, d := range devs {
		for len(v.Stages) <= d.Stage {
			v.Stages = append(v.Stages, serverapi.RolloutStage{Stage: len(v.Stages), Canary: len(v.Stages) == 0 && params.CanaryDevices > 0})
		}
		v.Stages[d.Stage].Add(d.Status)
		v.Progress.Add(d.Status)
	}
	v.Failures = max(0, v.Progress.Failed-st.Acked)
	if !withDevices {
		return v, nil
	}
	views := map[string]serverapi.Device{}
	if err := s.eachDevice(ctx, f.ID, "", func(d store.Device) { views[d.ID] = s.deviceView(d, f.Name) }); err != nil {
		return v, err
	}
	v.Devices = make([]serverapi.RolloutDevice, len(devs))
	for i, d := range devs {
		dv := views[d.DeviceID]
		a := dv.Apps[ro.App]
		v.Devices[i] = serverapi.RolloutDevice{
			ID: d.DeviceID, Name: dv.Name, Stage: d.Stage, Status: d.Status, Detail: d.Detail,
			PreviousRelease: d.PreviousRelease, Updated: d.Updated, Online: dv.Online,
			Phase: string(a.Phase), FleetRelease: a.FleetRelease, Error: a.Error,
		}
	}
	return v, nil
}
