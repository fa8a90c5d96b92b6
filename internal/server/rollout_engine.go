package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// The rollout engine moves rollouts on. Every replica runs one (Run
// starts it); each looks at every active rollout every StateInterval — as
// often as a device may report — and a start or a resume steps the
// rollout at once. A step:
//
//  1. gives the devices under way their verdict from what they last
//     reported: healthy when the app runs the release (fleet_release,
//     phase idle, no error); failed when the device reported it rolled
//     the release back (fleet_failed, in a report made after the move),
//     or when the stage timeout passed first — an offline device simply
//     never reports, and fails so;
//  2. pauses a running rollout whose failures (less those a resume
//     acknowledged) reached max_failures;
//  3. otherwise moves the current stage's devices if they have not moved
//     yet, or, once every device of the stage has its verdict, moves the
//     next stage, or completes the rollout after the last.
//
// All it knows is in the store, so a restarted server, or another
// replica, carries on where it stood. Replicas may step one rollout at
// the same moment: each change is a compare-and-set in the store (a
// device's verdict, the rollout's status, a stage's move, which also
// re-checks under the rollout's row lock that it is still running), so
// one of them makes it and the other finds it made. Audit entries and
// log lines are written by the replica whose change went through.

// runRollouts is the rollout engine's loop, until ctx ends.
func (s *Server) runRollouts(ctx context.Context) {
	t := time.NewTicker(s.opts.StateInterval)
	defer t.Stop()
	for {
		ros, err := s.st.ActiveRollouts(ctx)
		if err != nil && ctx.Err() == nil {
			s.log.Warn("rollouts: list the active ones", "error", err)
		}
		for _, ro := range ros {
			if err := s.stepRollout(ctx, ro); err != nil && ctx.Err() == nil {
				s.log.Warn("rollout step", "rollout", ro.ID, "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stepRollout moves one rollout on as far as it can now.
func (s *Server) stepRollout(ctx context.Context, ro store.Rollout) error {
	if ro.Status != store.RolloutRunning && ro.Status != store.RolloutPaused {
		return nil
	}
	p, st := decodeRollout(ro)
	devs, err := s.st.RolloutDevices(ctx, ro.ID)
	if err != nil {
		return err
	}
	now := s.now()
	for i, d := range devs {
		if d.Status == serverapi.RolloutDeviceFailed {
			// A failed device someone had try again (berth device
			// retry) that runs the release now counts as healthy.
			if ok, err := s.recovered(ctx, ro, d); err != nil || !ok {
				if err != nil {
					return err
				}
				continue
			}
			next := d
			next.Status, next.Detail = serverapi.RolloutDeviceHealthy, "healthy since; it had failed: "+d.Detail
			if err := s.st.SetRolloutDevice(ctx, next, d.Status); err == nil {
				s.log.Info("rollout: a failed device recovered", "rollout", ro.ID, "device", d.DeviceID)
				devs[i] = next
			} else if !errors.Is(err, release.ErrConflict) && !errors.Is(err, release.ErrNotFound) {
				return err
			}
			continue
		}
		if d.Status != serverapi.RolloutDeviceUpdating {
			continue
		}
		status, detail, err := s.verdict(ctx, ro, p, d, now)
		if err != nil {
			return err
		}
		if status == "" {
			continue
		}
		next := d
		next.Status, next.Detail = status, detail
		err = s.st.SetRolloutDevice(ctx, next, d.Status)
		if errors.Is(err, release.ErrConflict) || errors.Is(err, release.ErrNotFound) {
			return nil // another replica is at it, or the device is gone: look again next time
		}
		if err != nil {
			return err
		}
		if status == serverapi.RolloutDeviceFailed {
			s.log.Info("rollout: a device failed", "rollout", ro.ID, "device", d.DeviceID, "stage", d.Stage, "reason", detail)
		}
		devs[i] = next
	}
	if ro.Status != store.RolloutRunning {
		return nil // paused: verdicts are recorded, nothing moves
	}

	failed, last := 0, 0
	var failures []string
	for _, d := range devs {
		last = max(last, d.Stage)
		if d.Status == serverapi.RolloutDeviceFailed {
			failed++
			failures = append(failures, d.DeviceID+": "+d.Detail)
		}
	}
	if failed-st.Acked >= p.MaxFailures {
		return s.autoPause(ctx, ro, p, st, failed, failures)
	}

	pending, settledAll := false, true
	for _, d := range devs {
		if d.Stage != ro.Stage {
			continue
		}
		pending = pending || d.Status == serverapi.RolloutDevicePending
		settledAll = settledAll && settled(d.Status)
	}
	switch {
	case pending:
		// The stage has come (a new rollout, or one a restart or a lost
		// race left between the decision and the move): move it.
		return s.moveStage(ctx, ro, ro.Stage)
	case !settledAll:
		return nil // waiting for verdicts
	case ro.Stage < last:
		return s.moveStage(ctx, ro, ro.Stage+1)
	}
	return s.completeRollout(ctx, ro, p, devs)
}

// verdict judges a device under way; "" for no verdict yet.
func (s *Server) verdict(ctx context.Context, ro store.Rollout, p serverapi.RolloutParams, d store.RolloutDevice, now time.Time) (status, detail string, err error) {
	dev, err := s.st.Device(ctx, d.DeviceID)
	if errors.Is(err, release.ErrNotFound) {
		return "", "", nil // deleted: its rollout row goes with it
	}
	if err != nil {
		return "", "", err
	}
	var cs release.CurrentState
	_ = json.Unmarshal(dev.State, &cs) // a state that does not decode says nothing
	a, reported := cs.Apps[ro.App]
	// The device's word on the release counts if it was judged under the
	// move's generation or a later one (an agent that reports no
	// generation: if it reported after the move).
	judged := a.FleetGeneration >= d.Generation && a.FleetGeneration > 0 ||
		a.FleetGeneration == 0 && dev.StateVersion > d.StateVersion
	switch {
	case reported && a.FleetRelease == ro.ReleaseID && a.Phase == release.PhaseIdle && a.Error == "" && a.Override == nil:
		// Not held to reports after the move: a device that ran the
		// release already may have nothing new to say.
		return serverapi.RolloutDeviceHealthy, "", nil
	case reported && a.FleetFailed == ro.ReleaseID && judged:
		reason := orText(a.FleetReason, a.Error)
		if reason == "" {
			reason = "the device rolled the release back (" + string(a.Phase) + ") without saying why"
		}
		return serverapi.RolloutDeviceFailed, reason, nil
	case reported && a.FleetRefused == ro.ReleaseID && judged:
		// Refused at once (not signed by a key the device trusts): no
		// use waiting for the stage timeout.
		return serverapi.RolloutDeviceFailed, "refused by the device: " + orText(a.FleetReason, a.Error), nil
	case now.Sub(d.Updated) < p.StageTimeout.D():
		return "", "", nil
	}
	// Timed out. A device whose target someone changed meanwhile is not
	// the release's failure.
	as, err := s.st.DeviceApps(ctx, dev.ID)
	if err != nil {
		return "", "", err
	}
	target := ""
	for _, x := range as {
		if x.App == ro.App {
			target = x.ReleaseID
		}
	}
	if target != ro.ReleaseID {
		what := "the app was taken off it"
		if target != "" {
			what = "its target became " + release.ShortID(target)
		}
		return serverapi.RolloutDeviceSkipped, what + " while the rollout waited; not counted", nil
	}
	v := s.deviceView(dev, "")
	why := fmt.Sprintf("no healthy report of the release within the stage timeout (%s)", p.StageTimeout.D())
	switch {
	case !v.Online:
		why += fmt.Sprintf("; the device is offline, last seen %s", agoText(dev.LastSeen, now))
	case !reported:
		why += "; it reports no state of the app"
	case a.Override != nil:
		why += fmt.Sprintf("; a LAN deploy by %s overrides its fleet release since %s", a.Override.By, a.Override.Since.UTC().Format(time.RFC3339))
	case a.Error != "":
		why += fmt.Sprintf("; it reports %s: %s", a.Phase, a.Error)
	default:
		why += fmt.Sprintf("; it reports %s", a.Phase)
	}
	return serverapi.RolloutDeviceFailed, why, nil
}

func orText(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// recovered says whether a device that failed a rollout now runs its
// release, healthy.
func (s *Server) recovered(ctx context.Context, ro store.Rollout, d store.RolloutDevice) (bool, error) {
	dev, err := s.st.Device(ctx, d.DeviceID)
	if errors.Is(err, release.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var cs release.CurrentState
	_ = json.Unmarshal(dev.State, &cs)
	a, ok := cs.Apps[ro.App]
	return ok && a.FleetRelease == ro.ReleaseID && a.Phase == release.PhaseIdle && a.Error == "" && a.Override == nil, nil
}

// agoText says how long before now t was.
func agoText(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

// autoPause pauses a running rollout that reached its failure threshold.
func (s *Server) autoPause(ctx context.Context, ro store.Rollout, p serverapi.RolloutParams, st rolloutState, failed int, failures []string) error {
	names := s.deviceNames(ctx, ro.FleetID)
	for i, f := range failures {
		id, why, _ := strings.Cut(f, ": ")
		if n := names[id]; n != "" {
			failures[i] = n + ": " + why
		}
	}
	const show = 5
	list := strings.Join(failures[:min(len(failures), show)], "; ")
	if len(failures) > show {
		list += fmt.Sprintf("; and %d more", len(failures)-show)
	}
	st.Reason = fmt.Sprintf("%d device(s) failed, max_failures is %d: %s", failed-st.Acked, p.MaxFailures, list)
	if st.Acked > 0 {
		st.Reason = fmt.Sprintf("%d more device(s) failed since the resume, max_failures is %d: %s", failed-st.Acked, p.MaxFailures, list)
	}
	_, err := s.st.UpdateRollout(ctx, ro.ID, store.RolloutRunning, store.RolloutPaused, st.encode())
	if errors.Is(err, release.ErrConflict) {
		return nil // paused, aborted or moved on by someone else
	}
	if err != nil {
		return err
	}
	s.log.Warn("rollout paused itself", "rollout", ro.ID, "reason", st.Reason)
	s.auditAs(ctx, "system", "rollout.pause", "rollout/"+ro.ID, map[string]any{"reason": st.Reason, "failures": failed, "stage": ro.Stage})
	return nil
}

// moveStage moves a stage's devices to the release (advancing the
// rollout to it) and wakes their long polls.
func (s *Server) moveStage(ctx context.Context, ro store.Rollout, stage int) error {
	ds, err := s.st.MoveRolloutStage(ctx, ro.ID, stage)
	if errors.Is(err, release.ErrConflict) {
		return nil // paused or aborted meanwhile, or another replica is further on
	}
	s.hub.kick()
	if err != nil || len(ds) == 0 {
		return err
	}
	skipped := 0
	for _, d := range ds {
		if d.Status == serverapi.RolloutDeviceSkipped {
			skipped++
		}
	}
	s.log.Info("rollout stage moved", "rollout", ro.ID, "stage", stage, "devices", len(ds), "skipped", skipped)
	s.auditAs(ctx, "system", "rollout.stage", "rollout/"+ro.ID, map[string]any{"stage": stage, "devices": len(ds), "skipped": skipped})
	return nil
}

// completeRollout ends a rollout whose last stage has its verdicts. A
// rollout of the whole fleet also makes the release the one its new
// devices start with.
func (s *Server) completeRollout(ctx context.Context, ro store.Rollout, p serverapi.RolloutParams, devs []store.RolloutDevice) error {
	var c serverapi.RolloutCounts
	for _, d := range devs {
		c.Add(d.Status)
	}
	_, err := s.st.UpdateRollout(ctx, ro.ID, store.RolloutRunning, store.RolloutCompleted, rolloutState{}.encode())
	if errors.Is(err, release.ErrConflict) {
		return nil
	}
	if err != nil {
		return err
	}
	whole := len(p.Devices) == 0 && p.Tag == ""
	if whole {
		if err := s.st.SetFleetRelease(ctx, ro.FleetID, ro.ReleaseID); err != nil {
			return fmt.Errorf("rollout %s completed, but the fleet's release for new devices stays as it was: %w", ro.ID, err)
		}
	}
	s.log.Info("rollout completed", "rollout", ro.ID, "healthy", c.Healthy, "failed", c.Failed, "skipped", c.Skipped)
	s.auditAs(ctx, "system", "rollout.complete", "rollout/"+ro.ID, map[string]any{
		"healthy": c.Healthy, "failed": c.Failed, "skipped": c.Skipped, "fleet_release": whole,
	})
	return nil
}

// revertRollout returns the devices an aborted rollout moved to the
// release each had before (taking the app off those that had none), and
// marks them reverted. A device whose target is no longer the rollout's
// release (someone moved it since) or that is pinned now is left as it
// is, and says so. It is safe to run again, and on several replicas at
// once: each device is marked once. It returns how many it dealt with.
func (s *Server) revertRollout(ctx context.Context, ro store.Rollout) (int, error) {
	devs, err := s.st.RolloutDevices(ctx, ro.ID)
	if err != nil {
		return 0, err
	}
	type move struct {
		d      store.RolloutDevice
		detail string
	}
	back := map[string][]move{} // by previous release
	var done []move             // nothing to change
	for _, d := range devs {
		if !moved(d.Status) {
			continue
		}
		as, err := s.st.DeviceApps(ctx, d.DeviceID)
		if err != nil {
			return 0, err
		}
		var cur store.DeviceApp
		for _, a := range as {
			if a.App == ro.App {
				cur = a
			}
		}
		switch {
		case d.PreviousRelease != ro.ReleaseID && cur.ReleaseID == d.PreviousRelease:
			// An abort cut short returned it already.
			done = append(done, move{d, returnedDetail(d.PreviousRelease)})
		case cur.ReleaseID != ro.ReleaseID:
			what := "the app was taken off it"
			if cur.ReleaseID != "" {
				what = "its target is " + release.ShortID(cur.ReleaseID)
			}
			done = append(done, move{d, "left as it is: " + what + ", set after the rollout moved it"})
		case cur.Pinned:
			done = append(done, move{d, "left as it is: pinned to the release since"})
		case d.PreviousRelease == ro.ReleaseID:
			done = append(done, move{d, "left as it is: it had the release before the rollout"})
		default:
			back[d.PreviousRelease] = append(back[d.PreviousRelease], move{d, returnedDetail(d.PreviousRelease)})
		}
	}
	for prev, ms := range back {
		if prev == "" {
			for _, m := range ms {
				if err := s.st.RemoveApp(ctx, m.d.DeviceID, ro.App); err != nil && !errors.Is(err, release.ErrNotFound) {
					return 0, err
				}
			}
			s.hub.kick()
		} else {
			ids := make([]string, len(ms))
			for i, m := range ms {
				ids[i] = m.d.DeviceID
			}
			if _, err := s.assign(ctx, ro.FleetID, prev, ids); err != nil {
				return 0, fmt.Errorf("return devices to %s: %w", release.ShortID(prev), err)
			}
		}
		done = append(done, ms...)
	}
	n := 0
	for _, m := range done {
		next := m.d
		// What it was before the abort stays told: a failure's reason
		// matters after the abort too.
		was := m.d.Status
		if m.d.Detail != "" {
			was += ": " + m.d.Detail
		}
		next.Status, next.Detail = serverapi.RolloutDeviceReverted, m.detail+" (was "+was+")"
		err := s.st.SetRolloutDevice(ctx, next, m.d.Status)
		if errors.Is(err, release.ErrConflict) || errors.Is(err, release.ErrNotFound) {
			continue // another replica marked it, or it is gone
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

func returnedDetail(prev string) string {
	if prev == "" {
		return "took the app off: it had no release of it before"
	}
	return "returned to " + release.ShortID(prev)
}

// deviceNames maps a fleet's device IDs to names (for reasons people
// read); on an error, as far as it got.
func (s *Server) deviceNames(ctx context.Context, fleetID string) map[string]string {
	names := map[string]string{}
	_ = s.eachDevice(ctx, fleetID, "", func(d store.Device) { names[d.ID] = d.Name })
	return names
}

// eachDevice calls fn with each of a fleet's devices (with tag, if set),
// by name, a page at a time.
func (s *Server) eachDevice(ctx context.Context, fleetID, tag string, fn func(store.Device)) error {
	f := store.DeviceFilter{FleetID: fleetID, Tag: tag, Limit: 1000}
	for {
		ds, err := s.st.ListDevices(ctx, f)
		if err != nil {
			return err
		}
		for _, d := range ds {
			fn(d)
		}
		if len(ds) < f.Limit {
			return nil
		}
		f.After = ds[len(ds)-1].Name
	}
}
