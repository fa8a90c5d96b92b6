package serverapi

import (
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

func TestAppStatusOf(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Minute), now.Add(time.Minute)
	target := &TargetApp{Release: "sha256:x2", Generation: 20}
	up := map[string]release.ServiceState{"web": {State: "running", Health: "healthy"}, "job": {State: "exited"}}
	for _, tc := range []struct {
		name   string
		t      *TargetApp
		a      *release.AppState
		state  string
		leaves bool // a command leaves it
	}{
		{"no-report", target, nil, StatusUnknown, false},
		{"nothing", nil, nil, StatusUnknown, false},
		{"not-in-target", nil, &release.AppState{Phase: release.PhaseIdle}, StatusRemoved, true},
		{"running", target, &release.AppState{FleetRelease: "sha256:x2", Phase: release.PhaseIdle, Services: up}, StatusRunning, false},
		{"running-after-an-aborted-rollout-failed-elsewhere", target, &release.AppState{FleetRelease: "sha256:x2", FleetFailed: "sha256:x3", Phase: release.PhaseIdle, Services: up}, StatusRunning, false},
		{"degraded", target, &release.AppState{FleetRelease: "sha256:x2", Phase: release.PhaseIdle, Services: map[string]release.ServiceState{"web": {State: "exited", ExitCode: 137}}}, StatusDegraded, false},
		{"unhealthy", target, &release.AppState{FleetRelease: "sha256:x2", Phase: release.PhaseIdle, Services: map[string]release.ServiceState{"web": {State: "running", Health: "unhealthy"}}}, StatusDegraded, false},
		{"switching", target, &release.AppState{FleetRelease: "sha256:x1", Phase: release.PhaseSwitching}, StatusUpdating, false},
		{"not-taken-yet", target, &release.AppState{FleetRelease: "sha256:x1", Phase: release.PhaseIdle}, StatusUpdating, false},
		{"failed", target, &release.AppState{FleetRelease: "sha256:x1", FleetFailed: "sha256:x2", FleetGeneration: 20, FleetReason: "web: unhealthy", Phase: release.PhaseRolledBack}, StatusFailed, true},
		{"failed-under-an-older-assignment", target, &release.AppState{FleetRelease: "sha256:x1", FleetFailed: "sha256:x2", FleetGeneration: 19, Phase: release.PhaseRolledBack}, StatusUpdating, false},
		{"failed-with-env-changed-running-the-old-env", target, &release.AppState{FleetRelease: "sha256:x2", FleetFailed: "sha256:x2", FleetGeneration: 20, Phase: release.PhaseRolledBack, Services: up}, StatusFailed, true},
		{"refused", target, &release.AppState{FleetRelease: "sha256:x1", FleetRefused: "sha256:x2", FleetGeneration: 20, Phase: release.PhaseIdle}, StatusRefused, true},
		{"override", target, &release.AppState{Override: &release.Override{By: "al@lap", Since: past, Generation: 20}, Phase: release.PhaseIdle}, StatusOverride, true},
		{"override-until-later", target, &release.AppState{Override: &release.Override{By: "al@lap", Since: past, Until: &future, Generation: 20}}, StatusOverride, true},
		{"override-ttl-over", target, &release.AppState{Override: &release.Override{By: "al@lap", Since: past, Until: &past, Generation: 20}, FleetRelease: "", Phase: release.PhaseIdle}, StatusUpdating, false},
		{"override-assigned-again", target, &release.AppState{Override: &release.Override{By: "al@lap", Since: past, Generation: 19}, Phase: release.PhaseIdle}, StatusUpdating, false},
		{"removed-over-the-lan", target, &release.AppState{Override: &release.Override{By: "al@lap", Since: past, Generation: 20, Removed: true}, Phase: release.PhaseIdle}, StatusOverride, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := AppStatusOf("r1 --fleet lab", "nav", tc.t, tc.a, true, now)
			if st.State != tc.state {
				t.Fatalf("state %q, want %q (%+v)", st.State, tc.state, st)
			}
			if (st.Leave != "") != tc.leaves {
				t.Errorf("leave %q; want a command: %v", st.Leave, tc.leaves)
			}
			if st.State != StatusRunning && st.State != StatusUnknown && st.Reason == "" {
				t.Errorf("%s without a reason", st.State)
			}
			if st.Healthy() != (tc.state == StatusRunning) {
				t.Errorf("Healthy() = %v", st.Healthy())
			}
		})
	}
	off := AppStatusOf("r1", "nav", target, &release.AppState{FleetRelease: "sha256:x2", Phase: release.PhaseIdle, Services: up}, false, now)
	if !off.Offline || off.Healthy() {
		t.Errorf("an offline device's app: %+v, healthy %v", off, off.Healthy())
	}
}
