package serverapi

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// The states of a device's app as the fleet sees it. Every one a person
// can act on says, in AppStatus.Leave, the command that leaves it. The
// server computes them (AppStatusOf) and the CLI and the dashboard show
// them as they come; docs/architecture.md has the table.
const (
	// StatusRunning: the device runs the app's target release, verified,
	// every service up.
	StatusRunning = "running"
	// StatusDegraded: it runs the target release, but a service is not up
	// (stopped, restarting, unhealthy) since it was verified.
	StatusDegraded = "degraded"
	// StatusUpdating: the device is on its way to the target (fetching,
	// switching, verifying), or has not taken the target yet.
	StatusUpdating = "updating"
	// StatusOverride: a LAN deploy or removal stands in for the fleet's
	// release until its TTL ends or the app is assigned again.
	StatusOverride = "override"
	// StatusFailed: the target release was rolled back on the device; the
	// release it ran before runs (or none). Not tried again on its own.
	StatusFailed = "failed"
	// StatusRefused: the device would not run the target release (not
	// signed by a key it trusts); what ran before keeps running.
	StatusRefused = "refused"
	// StatusRemoved: the app is not in the target, but the device still
	// reports it (it is on its way out, or was deployed over the LAN only).
	StatusRemoved = "not in target"
	// StatusUnknown: no report of the app from the device yet.
	StatusUnknown = "unknown"
)

// AppStatus is where a device stands with one app.
type AppStatus struct {
	State string `json:"state"`
	// Release is the fleet release the device runs, when it runs one.
	Release string `json:"release,omitempty"`
	// Reason says why, for every state but running.
	Reason string `json:"reason,omitempty"`
	// Leave is the command that leaves the state, where one is needed.
	Leave string `json:"leave,omitempty"`
	// Offline: the device has not been seen lately; the state is as of
	// its last report.
	Offline bool `json:"offline,omitempty"`
}

// Settled says whether the state needs nothing more from the device: it
// runs its target, or it has said why it will not (failed, refused,
// override) and waits for a person.
func (s AppStatus) Settled() bool {
	switch s.State {
	case StatusRunning, StatusDegraded, StatusFailed, StatusRefused, StatusOverride:
		return true
	}
	return false
}

// Healthy says the device runs its target with every service up.
func (s AppStatus) Healthy() bool { return s.State == StatusRunning && !s.Offline }

// AppStatusOf judges one app of a device from its target (nil: not in the
// target) and its last report of the app (nil: none). device names the
// device in the commands it suggests; now judges an override's end.
func AppStatusOf(device, app string, t *TargetApp, a *release.AppState, online bool, now time.Time) AppStatus {
	st := appStatus(device, app, t, a, now)
	st.Offline = !online
	return st
}

func appStatus(device, app string, t *TargetApp, a *release.AppState, now time.Time) AppStatus {
	retry := fmt.Sprintf("berth device retry %s --app %s", device, app)
	switch {
	case t == nil && a == nil:
		return AppStatus{State: StatusUnknown}
	case t == nil:
		return AppStatus{State: StatusRemoved, Reason: "the app is not in the device's target; the device still reports it", Leave: "berth release assign (or nothing: the device removes an app taken off its target)"}
	case a == nil:
		return AppStatus{State: StatusUnknown, Reason: "the device has not reported the app yet"}
	}
	if o := a.Override; o != nil && (o.Until == nil || now.Before(*o.Until)) && (t.Generation == 0 || o.Generation >= t.Generation) {
		what := "a LAN deploy by " + o.By
		if o.Removed {
			what = "a LAN removal by " + o.By
		}
		reason := what + " stands in for the fleet release since " + o.Since.UTC().Format(time.RFC3339)
		if o.Until != nil {
			reason += ", until " + o.Until.UTC().Format(time.RFC3339)
		}
		return AppStatus{State: StatusOverride, Reason: reason, Leave: fmt.Sprintf("berth device reclaim %s --app %s", device, app)}
	}
	judged := a.FleetGeneration >= t.Generation || (a.FleetGeneration == 0 && t.Generation == 0)
	switch {
	case a.FleetRefused == t.Release && judged:
		return AppStatus{State: StatusRefused, Release: a.FleetRelease, Reason: orSay(a.FleetReason, a.Error, "refused by the device"), Leave: "have the release signed by a key the device trusts (berth release create --sign-key), or assign a signed one"}
	case a.FleetFailed == t.Release && judged:
		return AppStatus{State: StatusFailed, Release: a.FleetRelease, Reason: orSay(a.FleetReason, a.Error, "rolled back by the device"), Leave: retry + " (or assign another release)"}
	case a.FleetRelease == t.Release && a.Phase.AtRest():
		if down := notUp(a.Services); len(down) > 0 {
			return AppStatus{State: StatusDegraded, Release: a.FleetRelease, Reason: strings.Join(down, "; ")}
		}
		if a.Phase != release.PhaseIdle || a.Error != "" {
			// At rest on the target, but its last operation failed (a
			// repair) or left a warning.
			return AppStatus{State: StatusDegraded, Release: a.FleetRelease, Reason: orSay(a.Error, "", string(a.Phase))}
		}
		return AppStatus{State: StatusRunning, Release: a.FleetRelease}
	}
	reason := "the device reports " + string(a.Phase)
	if a.Phase.AtRest() {
		reason = "the device has not taken its target yet"
	}
	return AppStatus{State: StatusUpdating, Release: a.FleetRelease, Reason: reason}
}

// notUp lists the services that are not up, as "svc: state".
func notUp(svcs map[string]release.ServiceState) []string {
	var out []string
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range svcs {
			if !yield(k) {
				return
			}
		}
	}) {
		s := svcs[name]
		switch {
		case s.State == "exited" && s.ExitCode == 0:
		case s.State != "running":
			out = append(out, fmt.Sprintf("%s: %s", name, orSay(s.State, "", "missing")))
		case s.Health == release.HealthUnhealthy:
			out = append(out, name+": unhealthy")
		}
	}
	return out
}

func orSay(a, b, c string) string {
	if a != "" {
		return a
	}
	if b != "" {
		return b
	}
	return c
}
