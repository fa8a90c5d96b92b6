package server_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
	"github.com/berth-robotics/berth/internal/store"
)

// lab is a fleet "lab" with releases v1 and v2 of app "nav" and simulated
// devices; those named in onV1 are moved to v1 (and run it) first.
type lab struct {
	key    string
	v1, v2 *serverapi.Release
	sims   map[string]*sim
}

func (fe *fleetEnv) lab(names []string, onV1 []string, urls ...string) *lab {
	fe.t.Helper()
	f := fe.fleet("lab")
	l := &lab{key: f.ProvisioningKey, v1: fe.release("lab", "nav", "v1"), v2: fe.release("lab", "nav", "v2"), sims: map[string]*sim{}}
	for _, s := range fe.sims(l.key, names, urls...) {
		l.sims[s.Name] = s
	}
	if len(onV1) > 0 {
		if _, err := fe.admin.Assign(ctx, "lab", l.v1.ID, serverapi.AssignRequest{Devices: onV1}); err != nil {
			fe.t.Fatal(err)
		}
		for _, n := range onV1 {
			waitFor(fe.t, n+" to run v1", func() bool { return l.sims[n].runs("nav") == l.v1.ID })
		}
	}
	return l
}

// target is the release of app in a device's target ("" for none).
func (fe *fleetEnv) target(deviceID, app string) string {
	fe.t.Helper()
	d, err := fe.admin.Device(ctx, deviceID)
	if err != nil {
		fe.t.Fatal(err)
	}
	return d.Target[app].Release
}

func (fe *fleetEnv) rollout(id string) *serverapi.Rollout {
	fe.t.Helper()
	ro, err := fe.admin.Rollout(ctx, "lab", id)
	if err != nil {
		fe.t.Fatal(err)
	}
	return ro
}

// waitRollout waits until the rollout's status is status.
func (fe *fleetEnv) waitRollout(id, status string) *serverapi.Rollout {
	fe.t.Helper()
	var ro *serverapi.Rollout
	waitFor(fe.t, "rollout "+status, func() bool {
		ro = fe.rollout(id)
		return ro.Status == status
	})
	return ro
}

// audits are the audit entries of an action, oldest first.
func (fe *fleetEnv) audits(action string) []store.AuditEntry {
	fe.t.Helper()
	es, err := fe.st.ListAudit(ctx, store.AuditFilter{Action: action, Limit: 1000})
	if err != nil {
		fe.t.Fatal(err)
	}
	slices.Reverse(es)
	return es
}

// deviceOf finds a device of a rollout by name.
func deviceOf(t *testing.T, ro *serverapi.Rollout, name string) serverapi.RolloutDevice {
	t.Helper()
	for _, d := range ro.Devices {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("no device %s in rollout %s: %+v", name, ro.ID, ro.Devices)
	return serverapi.RolloutDevice{}
}

func stageSizes(ro *serverapi.Rollout) []int {
	var n []int
	for _, s := range ro.Stages {
		n = append(n, s.Total)
	}
	return n
}

// TestRolloutHealthy: a healthy canary, then every batch; the devices
// end on the release, the fleet's new devices start with it, and each
// step is audited once.
func TestRolloutHealthy(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		fe := newFleetEnv(t, b)
		names := []string{"r1", "r2", "r3", "r4", "r5"}
		l := fe.lab(names, names)
		dan := fe.client(fe.user("dan", serverapi.RoleDeployer))

		ro, err := dan.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: l.v2.ID, Canary: "1", Batch: 2})
		if err != nil {
			t.Fatal(err)
		}
		if ro.Status != serverapi.RolloutRunning || ro.App != "nav" || ro.Version != "v2" || ro.CreatedBy != "user:dan" ||
			ro.Params.CanaryDevices != 1 || ro.Params.MaxFailures != 1 || ro.Params.StageTimeout.D() != 10*time.Minute {
			t.Errorf("started: %+v", ro)
		}
		if got := stageSizes(ro); !slices.Equal(got, []int{1, 2, 2}) || !ro.Stages[0].Canary {
			t.Errorf("stages %v (%+v), want a canary of 1, then 2 and 2", got, ro.Stages)
		}
		// The canary moved with the answer: the first online device by name.
		if c := deviceOf(t, ro, "r1"); c.Stage != 0 || c.Status == serverapi.RolloutDevicePending || c.PreviousRelease != l.v1.ID {
			t.Errorf("the canary: %+v", c)
		}

		ro = fe.waitRollout(ro.ID, serverapi.RolloutCompleted)
		// Its last words (the fleet's release, the audit) follow at once.
		waitFor(t, "the completion audited", func() bool { return len(fe.audits("rollout.complete")) > 0 })
		if ro.Progress.Healthy != 5 || ro.Progress.Total != 5 || ro.Failures != 0 || ro.Stage != 2 {
			t.Errorf("completed: %+v", ro)
		}
		for _, s := range l.sims {
			if got := fe.target(s.ID, "nav"); got != l.v2.ID {
				t.Errorf("%s's target: %s, want v2", s.Name, got)
			}
			if d := deviceOf(t, ro, s.Name); d.Status != serverapi.RolloutDeviceHealthy || d.PreviousRelease != l.v1.ID || d.FleetRelease != l.v2.ID || !d.Online {
				t.Errorf("%s: %+v", s.Name, d)
			}
		}
		// A rollout of the whole fleet makes the release the new devices'.
		if f, _ := fe.admin.Fleet(ctx, "lab"); len(f.Apps) != 1 || f.Apps[0].Release != l.v2.ID {
			t.Errorf("fleet apps after the rollout: %+v", f.Apps)
		}
		var stages []int
		for _, a := range fe.audits("rollout.stage") {
			var d struct{ Stage int }
			json.Unmarshal(a.Details, &d)
			stages = append(stages, d.Stage)
			if a.Actor != "system" || a.Object != "rollout/"+ro.ID {
				t.Errorf("stage audit: %+v", a)
			}
		}
		if !slices.Equal(stages, []int{0, 1, 2}) {
			t.Errorf("stages audited: %v, want 0 1 2 once each", stages)
		}
		if n, m := len(fe.audits("rollout.start")), len(fe.audits("rollout.complete")); n != 1 || m != 1 {
			t.Errorf("%d start and %d complete audit entries, want one each", n, m)
		}
		if rs, err := fe.admin.Rollouts(ctx, "lab", "", 0); err != nil || len(rs) != 1 || rs[0].Devices != nil || rs[0].Progress.Healthy != 5 {
			t.Errorf("list: %+v, %v", rs, err)
		}
		if rs, _ := fe.admin.Rollouts(ctx, "lab", serverapi.RolloutRunning, 0); len(rs) != 0 {
			t.Errorf("running rollouts after it completed: %+v", rs)
		}
	})
}

// TestRolloutFailingCanary: the canary rolls back; the rollout pauses
// itself with the device's reason, the rest untouched. Resume goes on;
// abort returns every device it moved to what it had, and only those.
func TestRolloutFailingCanary(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		fe := newFleetEnv(t, b)
		// r5 is pinned to v1 (not in the rollout); r6 has no nav at all.
		l := fe.lab([]string{"r1", "r2", "r3", "r4", "r5", "r6"}, []string{"r1", "r2", "r3", "r4", "r5"})
		if _, err := fe.admin.Pin(ctx, l.sims["r5"].ID, serverapi.PinRequest{Release: l.v1.ID}); err != nil {
			t.Fatal(err)
		}
		l.sims["r1"].setMode(simFailing)
		dan := fe.client(fe.user("dan", serverapi.RoleDeployer))
		ro, err := dan.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: l.v2.ID, Canary: "1", Batch: 2, MaxFailures: 1})
		if err != nil {
			t.Fatal(err)
		}
		if got := stageSizes(ro); !slices.Equal(got, []int{1, 2, 2}) {
			t.Errorf("stages %v: want r5, pinned elsewhere, left out", got)
		}

		ro = fe.waitRollout(ro.ID, serverapi.RolloutPaused)
		if !strings.Contains(ro.Reason, "r1: service nav: unhealthy") || ro.Failures != 1 || ro.Stage != 0 {
			t.Errorf("paused: reason %q, failures %d, stage %d", ro.Reason, ro.Failures, ro.Stage)
		}
		if c := deviceOf(t, ro, "r1"); c.Status != serverapi.RolloutDeviceFailed || !strings.Contains(c.Detail, "unhealthy after 30s") || c.Phase != string(release.PhaseRolledBack) {
			t.Errorf("the canary: %+v", c)
		}
		// The entry is written right after the pause commits.
		waitFor(t, "the pause audited", func() bool { return len(fe.audits("rollout.pause")) > 0 })
		if as := fe.audits("rollout.pause"); len(as) != 1 || as[0].Actor != "system" {
			t.Errorf("pause audit: %+v", as)
		}
		// Paused it stays, whatever the engine looks at; the rest untouched.
		time.Sleep(5 * tick)
		want := map[string]string{"r2": l.v1.ID, "r3": l.v1.ID, "r4": l.v1.ID, "r5": l.v1.ID, "r6": ""}
		for name, rel := range want {
			if got := fe.target(l.sims[name].ID, "nav"); got != rel {
				t.Errorf("%s's target: %q, want %q (untouched)", name, got, rel)
			}
		}
		ro = fe.rollout(ro.ID)
		if ro.Status != serverapi.RolloutPaused || ro.Progress.Pending != 4 {
			t.Errorf("after a while: %s, %+v", ro.Status, ro.Progress)
		}
		if _, err := dan.PauseRollout(ctx, "lab", ro.ID, ""); status(err) != http.StatusConflict {
			t.Errorf("pause a paused rollout: %v, want 409", err)
		}

		// Resume: the next batch goes (and is healthy); the last one holds.
		batch2 := ro.Devices[3:]
		for _, d := range batch2 {
			l.sims[d.Name].setMode(simHolding)
		}
		if ro, err = dan.ResumeRollout(ctx, "lab", ro.ID); err != nil || ro.Status != serverapi.RolloutRunning || ro.Failures != 0 {
			t.Fatalf("resume: %+v, %v", ro, err)
		}
		waitFor(t, "the last batch to be moved", func() bool {
			ro = fe.rollout(ro.ID)
			return ro.Stage == 2 && ro.Stages[2].Updating == 2
		})
		if ro.Stages[1].Healthy != 2 {
			t.Errorf("stage 1 after the resume: %+v", ro.Stages[1])
		}

		// Abort: every device moved goes back; r6 had no nav, it loses it.
		ro, err = dan.AbortRollout(ctx, "lab", ro.ID, "canary broke the nav stack")
		if err != nil || ro.Status != serverapi.RolloutAborted || !strings.Contains(ro.Reason, "aborted by user:dan: canary broke") {
			t.Fatalf("abort: %+v, %v", ro, err)
		}
		if ro.Progress.Reverted != 5 {
			t.Errorf("abort: %+v", ro.Progress)
		}
		want = map[string]string{"r1": l.v1.ID, "r2": l.v1.ID, "r3": l.v1.ID, "r4": l.v1.ID, "r5": l.v1.ID, "r6": ""}
		for name, rel := range want {
			if got := fe.target(l.sims[name].ID, "nav"); got != rel {
				t.Errorf("%s's target after the abort: %q, want %q", name, got, rel)
			}
		}
		if d := deviceOf(t, ro, "r6"); !strings.Contains(d.Detail, "took the app off") {
			t.Errorf("r6: %+v", d)
		}
		for _, d := range batch2 {
			l.sims[d.Name].setMode(simHealthy)
		}
		waitFor(t, "r2 to run v1 again", func() bool { return l.sims["r2"].runs("nav") == l.v1.ID })
		audits := fe.auditCount()
		if again, err := dan.AbortRollout(ctx, "lab", ro.ID, ""); err != nil || again.Status != serverapi.RolloutAborted {
			t.Errorf("abort again: %+v, %v", again, err)
		}
		if fe.auditCount() != audits {
			t.Error("an abort with nothing left to do was audited")
		}
		if _, err := dan.ResumeRollout(ctx, "lab", ro.ID); status(err) != http.StatusConflict {
			t.Errorf("resume an aborted rollout: %v, want 409", err)
		}
		if as := fe.audits("rollout.abort"); len(as) != 1 || as[0].Actor != "user:dan" {
			t.Errorf("abort audit: %+v", as)
		}
		// Not active any more: another may start.
		if _, err := dan.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: l.v2.ID, Devices: []string{"r2"}}); err != nil {
			t.Errorf("a rollout after the abort: %v", err)
		}
	})
}

// TestRolloutStageTimeout: a device that does not report the release
// healthy within the stage timeout — here it is offline — fails, with
// a reason that says so.
func TestRolloutStageTimeout(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		fe := newFleetEnv(t, b)
		l := fe.lab([]string{"r1", "r2", "r3"}, nil)
		l.sims["r2"].setMode(simOffline)
		ro, err := fe.admin.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{
			Release: l.v2.ID, Canary: "0", Batch: 3, StageTimeout: release.Duration(time.Minute),
		})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "r1 and r3 healthy", func() bool {
			ro = fe.rollout(ro.ID)
			return ro.Progress.Healthy == 2
		})
		time.Sleep(3 * tick)
		if ro = fe.rollout(ro.ID); ro.Status != serverapi.RolloutRunning || deviceOf(t, ro, "r2").Status != serverapi.RolloutDeviceUpdating {
			t.Fatalf("before the timeout: %s, %+v", ro.Status, deviceOf(t, ro, "r2"))
		}
		fe.clock.Jump(2 * time.Minute)
		ro = fe.waitRollout(ro.ID, serverapi.RolloutPaused)
		d := deviceOf(t, ro, "r2")
		if d.Status != serverapi.RolloutDeviceFailed || !strings.Contains(d.Detail, "stage timeout (1m0s)") || !strings.Contains(d.Detail, "offline") {
			t.Errorf("r2: %+v", d)
		}
		if !strings.Contains(ro.Reason, "r2: no healthy report") {
			t.Errorf("reason: %q", ro.Reason)
		}
	})
}

// TestRolloutRestart: a server restarted mid-rollout (a new Server over
// the same database) carries on from the store.
func TestRolloutRestart(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		fe := newFleetEnv(t, b)
		names := []string{"r1", "r2", "r3", "r4"}
		l := fe.lab(names, names)
		l.sims["r3"].setMode(simHolding)
		ro, err := fe.admin.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: l.v2.ID, Canary: "1", Batch: 1})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "stage 2 (r3) under way", func() bool {
			ro = fe.rollout(ro.ID)
			return ro.Stage == 2 && deviceOf(t, ro, "r3").Status == serverapi.RolloutDeviceUpdating
		})
		fe.restart()
		l.sims["r3"].setMode(simHealthy)
		ro = fe.waitRollout(ro.ID, serverapi.RolloutCompleted)
		if ro.Progress.Healthy != 4 {
			t.Errorf("after the restart: %+v", ro.Progress)
		}
		if got := fe.target(l.sims["r4"].ID, "nav"); got != l.v2.ID {
			t.Errorf("r4's target: %s", got)
		}
		var stages []string
		for _, a := range fe.audits("rollout.stage") {
			stages = append(stages, string(a.Details))
		}
		if len(stages) != 4 {
			t.Errorf("%d stage moves audited, want 4: %s", len(stages), strings.Join(stages, " "))
		}
	})
}

// TestRolloutReplicas: two replicas over one PostgreSQL, each with its
// engine looking every tick and devices talking to both: every stage
// moves once, the rollout completes once.
func TestRolloutReplicas(t *testing.T) {
	pg.Require(t)
	fe := newFleetEnv(t, postgres)
	other := fe.secondReplica()
	names := []string{"r1", "r2", "r3", "r4", "r5", "r6", "r7"}
	l := fe.lab(names, names, fe.URL, other)
	b := fe.client(fe.adminToken)
	b2, err := serverapi.New(other, serverapi.Options{Token: fe.adminToken})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	ro, err := b2.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: l.v2.ID, Canary: "1", Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	ro = fe.waitRollout(ro.ID, serverapi.RolloutCompleted)
	waitFor(t, "the completion audited", func() bool { return len(fe.audits("rollout.complete")) > 0 })
	time.Sleep(5 * tick) // time for a second, wrong, completion
	if ro.Progress.Healthy != 7 {
		t.Errorf("completed: %+v", ro.Progress)
	}
	var stages []int
	moved := 0
	for _, a := range fe.audits("rollout.stage") {
		var d struct{ Stage, Devices int }
		json.Unmarshal(a.Details, &d)
		stages = append(stages, d.Stage)
		moved += d.Devices
	}
	// Each replica writes its entry after its move commits: two replicas'
	// entries may come in either order.
	slices.Sort(stages)
	if !slices.Equal(stages, []int{0, 1, 2, 3}) || moved != 7 {
		t.Errorf("stage moves audited: %v, %d devices; want 0 1 2 3 once each, 7 devices", stages, moved)
	}
	if n := len(fe.audits("rollout.complete")); n != 1 {
		t.Errorf("%d completions audited", n)
	}
	for _, s := range l.sims {
		if got := fe.target(s.ID, "nav"); got != l.v2.ID {
			t.Errorf("%s: target %s", s.Name, got)
		}
	}
	// Pausing on one replica stops the other's engine too.
	l2 := fe.release("lab", "nav", "v3")
	l.sims["r1"].setMode(simHolding)
	ro, err = b.StartRollout(ctx, "lab", serverapi.StartRolloutRequest{Release: l2.ID, Canary: "1", Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.PauseRollout(ctx, "lab", ro.ID, "hold on"); err != nil {
		t.Fatal(err)
	}
	l.sims["r1"].setMode(simHealthy)
	waitFor(t, "the canary healthy", func() bool { return deviceOf(t, fe.rollout(ro.ID), "r1").Status == serverapi.RolloutDeviceHealthy })
	time.Sleep(5 * tick)
	if ro = fe.rollout(ro.ID); ro.Status != serverapi.RolloutPaused || ro.Progress.Pending != 6 || ro.Reason != "paused by user:admin: hold on" {
		t.Errorf("paused on the other replica: %s %q %+v", ro.Status, ro.Reason, ro.Progress)
	}
}

// TestRolloutRequests: who may do what, and what is refused.
func TestRolloutRequests(t *testing.T) {
	fe := newFleetEnv(t, sqlite)
	l := fe.lab([]string{"r1", "r2"}, nil)
	viewer := fe.client(fe.user("vera", serverapi.RoleViewer))
	dan := fe.client(fe.user("dan", serverapi.RoleDeployer))
	start := serverapi.StartRolloutRequest{Release: l.v2.ID}

	if _, err := viewer.StartRollout(ctx, "lab", start); status(err) != http.StatusForbidden {
		t.Errorf("a viewer starts: %v, want 403", err)
	}
	if _, err := l.sims["r1"].cl.StartRollout(ctx, "lab", start); status(err) != http.StatusForbidden {
		t.Errorf("a device starts: %v, want 403", err)
	}
	l.sims["r1"].setMode(simHolding)
	ro, err := dan.StartRollout(ctx, "lab", start)
	if err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"ViewerPauses":  second(viewer.PauseRollout(ctx, "lab", ro.ID, "")),
		"ViewerResumes": second(viewer.ResumeRollout(ctx, "lab", ro.ID)),
		"ViewerAborts":  second(viewer.AbortRollout(ctx, "lab", ro.ID, "")),
	} {
		if status(err) != http.StatusForbidden {
			t.Errorf("%s: %v, want 403", name, err)
		}
	}
	if got, err := viewer.Rollout(ctx, "lab", ro.ID); err != nil || got.ID != ro.ID || len(got.Devices) != 2 {
		t.Errorf("a viewer reads: %+v, %v", got, err)
	}
	if rs, err := viewer.Rollouts(ctx, "lab", serverapi.RolloutRunning, 0); err != nil || len(rs) != 1 {
		t.Errorf("a viewer lists: %+v, %v", rs, err)
	}
	_, err = dan.StartRollout(ctx, "lab", start)
	if status(err) != http.StatusConflict || !strings.Contains(err.Error(), "already running or paused") {
		t.Errorf("a second rollout of nav: %v, want 409", err)
	}
	if _, err := dan.PauseRollout(ctx, "lab", ro.ID, "lunch"); err != nil {
		t.Fatal(err)
	}
	// An empty body is fine for pause, resume and abort.
	if code, _, body := fe.do(http.MethodPost, "/v1/fleets/lab/rollouts/"+ro.ID+"/resume", fe.adminToken, nil); code != http.StatusOK {
		t.Errorf("resume without a body: %d %s", code, body)
	}

	fe.fleet("field")
	for name, tc := range map[string]struct {
		fleet string
		req   serverapi.StartRolloutRequest
		want  int
	}{
		"NoRelease":       {"lab", serverapi.StartRolloutRequest{}, 400},
		"UnknownRelease":  {"lab", serverapi.StartRolloutRequest{Release: "sha256:" + strings.Repeat("0", 64)}, 404},
		"OtherFleets":     {"field", start, 404},
		"BadCanary":       {"lab", serverapi.StartRolloutRequest{Release: l.v1.ID, Canary: "half"}, 400},
		"BadPercent":      {"lab", serverapi.StartRolloutRequest{Release: l.v1.ID, Canary: "150%"}, 400},
		"NegativeBatch":   {"lab", serverapi.StartRolloutRequest{Release: l.v1.ID, Batch: -1}, 400},
		"ShortTimeout":    {"lab", serverapi.StartRolloutRequest{Release: l.v1.ID, StageTimeout: release.Duration(time.Millisecond)}, 400},
		"UnknownDevice":   {"lab", serverapi.StartRolloutRequest{Release: l.v1.ID, Devices: []string{"ghost"}}, 404},
		"NoDeviceWithTag": {"lab", serverapi.StartRolloutRequest{Release: l.v1.ID, Tag: "nothing"}, 400},
	} {
		if _, err := dan.StartRollout(ctx, tc.fleet, tc.req); status(err) != tc.want {
			t.Errorf("%s: %v, want %d", name, err, tc.want)
		}
	}
	if code, _, body := fe.do(http.MethodPost, "/v1/fleets/lab/rollouts", fe.adminToken, strings.NewReader(`{"release":"x","canery":"1"}`)); code != 400 {
		t.Errorf("an unknown field: %d %s", code, body)
	}
	if _, err := dan.Rollout(ctx, "field", ro.ID); status(err) != http.StatusNotFound {
		t.Errorf("a rollout through another fleet: %v, want 404", err)
	}
	if _, err := dan.PauseRollout(ctx, "lab", "nothing", ""); status(err) != http.StatusNotFound {
		t.Errorf("pause no rollout: %v, want 404", err)
	}
	if n := len(fe.audits("rollout.start")); n != 1 {
		t.Errorf("%d starts audited; refused ones are not", n)
	}
}
