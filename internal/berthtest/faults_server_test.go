package berthtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// fleetApp is the release the server fault tests roll out: web (a named
// volume, a healthcheck; UNHEALTHY makes it fail) and a worker without
// one. It publishes no port: every device of the test runs it on the same
// engine.
func fleetApp(env *Env, version string, unhealthy bool) string {
	bad := ""
	if unhealthy {
		bad = "\n      UNHEALTHY: \"1\""
	}
	return fmt.Sprintf(`
services:
  web:
    image: %[2]s
    environment:
      VERSION: "%[1]s"
      DATA_DIR: /data%[4]s
    volumes: [data:/data]
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 2}
  worker:
    image: %[3]s
    environment: {VERSION: "%[1]s"}
volumes:
  data: {}
`, version, env.Images["a"], env.Images["b"], bad)
}

// serverFault is one way the fleet server goes away mid-rollout.
type serverFault int

const (
	faultKillRestart serverFault = iota // kill -9, down a few seconds, started again on the same DB and data
	faultKillReplica                    // kill -9, another replica takes over behind the same address
	faultTerminate                      // SIGTERM (graceful), started again
)

func (f serverFault) String() string {
	return [...]string{"kill -9 and restart", "kill -9 and another replica", "SIGTERM and restart"}[f]
}

// fleetRig is a fleet server on PostgreSQL with two replicas behind one
// address (one running at a time) and devices in fleet mode.
type fleetRig struct {
	env      *Env
	replicas [2]*Server
	cur      int // the replica running
	proxy    *Proxy
	devices  []*Device
}

func newFleetRig(t *testing.T, devices int) *fleetRig {
	t.Helper()
	env := NewEnv(t)
	dsn := pg.NewDatabase(t)
	a := env.NewServerOn(t, dsn)
	r := &fleetRig{env: env, proxy: NewProxy(t, a.Addr())}
	a.URL = r.proxy.URL
	b := a.Replica(t)
	b.Stop()
	r.replicas = [2]*Server{a, b}
	key := a.CreateFleet(t, "lab")
	b.secrets = append(b.secrets, key)
	for range devices {
		r.devices = append(r.devices, env.NewFleetDevice(t, r.proxy.URL, key))
	}
	return r
}

func (r *fleetRig) srv() *Server { return r.replicas[r.cur] }

// release creates a release of fleetApp.
func (r *fleetRig) release(t *testing.T, version string, unhealthy bool) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "compose.yaml")
	write(t, f, fleetApp(r.env, version, unhealthy))
	return createRelease(t, r.srv(), f, "v"+version)
}

// fault takes the server away as f says, for down, calling during every
// 250 ms while it is away; it returns with a server answering.
func (r *fleetRig) fault(t *testing.T, f serverFault, down time.Duration, during func()) {
	t.Helper()
	switch f {
	case faultKillRestart, faultKillReplica:
		r.srv().Stop()
	case faultTerminate:
		if !r.srv().Terminate() {
			t.Errorf("berth server did not exit 0 on SIGTERM")
		}
	}
	if f == faultKillReplica {
		r.cur = 1 - r.cur
		r.proxy.SetBackend(r.srv().Addr())
	}
	for end := time.Now().Add(down); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		during()
	}
	during()
	r.srv().Start(t)
}

// rollout reads a rollout with `berth rollout status --json`.
func (r *fleetRig) rollout(t *testing.T, id string) serverapi.Rollout {
	t.Helper()
	out, err := r.srv().Berth(t, "rollout", "status", id, "--fleet", "lab", "--json")
	if err != nil {
		t.Fatalf("rollout status: %v\n%s", err, out)
	}
	var ro serverapi.Rollout
	if err := json.Unmarshal([]byte(out), &ro); err != nil {
		t.Fatalf("rollout status --json: %v\n%s", err, out)
	}
	return ro
}

// awaitRollout polls a rollout until ok says so.
func (r *fleetRig) awaitRollout(t *testing.T, id string, timeout time.Duration, what string, ok func(serverapi.Rollout) bool) serverapi.Rollout {
	t.Helper()
	var ro serverapi.Rollout
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if ro = r.rollout(t, id); ok(ro) {
			return ro
		}
	}
	t.Fatalf("rollout %s not %s within %s: status %s, stage %d, progress %+v, reason %q", id, what, timeout, ro.Status, ro.Stage, ro.Progress, ro.Reason)
	return ro
}

// audit is the audit log of one object, oldest first.
func (r *fleetRig) audit(t *testing.T, object string) []serverapi.AuditEntry {
	t.Helper()
	req, _ := http.NewRequest("GET", r.srv().URL+"/v1/audit?limit=1000&object="+object, nil)
	req.Header.Set("Authorization", "Bearer "+r.srv().Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var es []serverapi.AuditEntry
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&es) != nil {
		t.Fatalf("GET /v1/audit: %s", resp.Status)
	}
	slices.Reverse(es)
	return es
}

// stageAudit counts a rollout's audit entries by action, and its
// rollout.stage entries by stage.
func stageAudit(es []serverapi.AuditEntry) (actions map[string]int, stages map[int]int) {
	actions, stages = map[string]int{}, map[int]int{}
	for _, e := range es {
		actions[e.Action]++
		if e.Action == "rollout.stage" {
			var d struct{ Stage int }
			json.Unmarshal(e.Details, &d)
			stages[d.Stage]++
		}
	}
	return actions, stages
}

// deviceSnap is what a device ran before a fault: its release and its
// containers' start times.
type deviceSnap struct {
	release string               // the app's release on the device before the rollout
	started map[string]time.Time // container ID → start, just before the fault
}

func snapshot(t *testing.T, d *Device, rel string) deviceSnap {
	t.Helper()
	s := deviceSnap{release: rel, started: map[string]time.Time{}}
	for _, c := range d.Containers(t, "app") {
		s.started[c.ID] = c.StartedAt
	}
	return s
}

// checkRunning fails unless the device's app is not failed and, at rest,
// runs one whole release, the fleet release old or new; and no container
// it had before the fault was restarted, nor stopped but by a switch.
func checkRunning(t *testing.T, d *Device, snap deviceSnap, old, new, what string) {
	t.Helper()
	a := d.App(t, "app")
	if a.Phase == release.PhaseFailed {
		t.Fatalf("%s: app on %s failed: %s", what, d.Name, a.Error)
	}
	atRest := a.Phase == release.PhaseIdle || a.Phase == release.PhaseRolledBack
	if atRest {
		ok := a.FleetRelease == new || a.FleetRelease == old && a.Release == snap.release
		if !ok || len(a.Services) != 2 {
			t.Fatalf("%s: %s runs fleet release %s (release %s, %d services), want %s or %s", what, d.Name, release.ShortID(a.FleetRelease), release.ShortID(a.Release), len(a.Services), release.ShortID(old), release.ShortID(new))
		}
		for name, s := range a.Services {
			if s.Release != a.Release || s.State != "running" {
				t.Fatalf("%s: %s service %s: %s, release %s; want running %s", what, d.Name, name, s.State, release.ShortID(s.Release), release.ShortID(a.Release))
			}
		}
	}
	untouched := atRest && a.Release == snap.release // no switch since the snapshot
	for _, c := range d.Containers(t, "app") {
		was, ok := snap.started[c.ID]
		switch {
		case !ok:
		case was.IsZero(): // created by a switch under way, started since: not a restart
		case !c.StartedAt.Equal(was):
			t.Fatalf("%s: container %s of %s started at %s, now again at %s: restarted", what, c.Name, d.Name, was.Format(time.RFC3339Nano), c.StartedAt.Format(time.RFC3339Nano))
		case untouched && c.State != "running":
			t.Fatalf("%s: container %s of %s is %s, and the app switched nothing", what, c.Name, d.Name, c.State)
		}
	}
}

// TestServerFaultsMidRollout: a real berth server on PostgreSQL, devices
// in fleet mode on the real engine, and rollouts (a canary, then the
// other two devices) during which the server goes away at a random moment:
// killed and started again on the same database and data directory,
// killed and replaced by another replica behind the same address, or
// stopped with SIGTERM and started again. While it is away every device
// runs one whole release (the old or the new one), no app fails and no
// container is restarted; once it is back the rollout carries on and
// completes with every device on the new release and healthy, as `berth
// device list --json` says, each stage moved (and audited) exactly once.
// Then a rollout whose canary fails pauses itself, and stays paused
// through a server kill.
//
// BERTH_FAULT_SERVER sets the number of rollouts with a fault (default 3,
// one of each kind), BERTH_FAULT_SEED replays a run.
func TestServerFaultsMidRollout(t *testing.T) {
	t.Parallel()
	rng := FaultSeed(t)
	rounds := FaultCount(t, "BERTH_FAULT_SERVER", 3)
	const devices = 3
	start := time.Now()
	r := newFleetRig(t, devices)

	prev := r.release(t, "1", false)
	if out, err := r.srv().Berth(t, "release", "assign", prev, "--fleet", "lab", "--all"); err != nil {
		t.Fatal(err, out)
	}
	for _, d := range r.devices {
		d.Await(t, "app", 90*time.Second, "on v1", func(a release.AppState) bool {
			return a.FleetRelease == prev && a.Phase == release.PhaseIdle
		})
	}

	t.Logf("%d devices on v1 %s after the start", devices, time.Since(start).Round(100*time.Millisecond))
	order := rng.Perm(3)
	held := 0
	var converge []time.Duration
	for i := range rounds {
		f := serverFault(order[i%3])
		rel := r.release(t, fmt.Sprint(i+2), false)
		before := map[*Device]string{}
		for _, d := range r.devices {
			before[d] = d.AwaitHealthy(t, "app").Release
		}
		out, err := r.srv().Berth(t, "rollout", "start", "--fleet", "lab", "--release", rel, "--canary", "1", "--batch", "2", "--max-failures", "1", "--stage-timeout", "3m", "--json")
		if err != nil {
			t.Fatal(err, out)
		}
		var ro serverapi.Rollout
		if err := json.Unmarshal([]byte(out), &ro); err != nil {
			t.Fatalf("rollout start --json: %v\n%s", err, out)
		}
		// The fault falls in a random stage, at a random moment of it.
		stage := rng.IntN(2)
		delay := time.Duration(rng.Int64N(int64(3 * time.Second)))
		down := []time.Duration{2 * time.Second, 0, time.Second}[f] + time.Duration(rng.Int64N(int64(3*time.Second)))
		r.awaitRollout(t, ro.ID, 90*time.Second, fmt.Sprintf("at stage %d", stage), func(x serverapi.Rollout) bool {
			return x.Stage >= stage || x.Status != "running"
		})
		time.Sleep(delay)
		at := r.rollout(t, ro.ID)
		snaps := map[*Device]deviceSnap{}
		for _, d := range r.devices {
			snaps[d] = snapshot(t, d, before[d])
		}
		what := fmt.Sprintf("round %d/%d (%s at stage %d +%s, %s down; rollout %s, stage %d, progress %d healthy %d updating)",
			i+1, rounds, f, stage, delay.Round(time.Millisecond), down.Round(time.Millisecond), at.Status, at.Stage, at.Progress.Healthy, at.Progress.Updating)
		r.fault(t, f, down, func() {
			for _, d := range r.devices {
				checkRunning(t, d, snaps[d], prev, rel, what+", server away")
			}
		})
		back := time.Now()
		done := r.awaitRollout(t, ro.ID, 2*time.Minute, "completed", func(x serverapi.Rollout) bool {
			if x.Status == "paused" || x.Status == "aborted" {
				t.Fatalf("%s: rollout %s: %s", what, x.Status, x.Reason)
			}
			return x.Status == "completed"
		})
		converge = append(converge, time.Since(back))

		// Every device on the new release, healthy, and so listed.
		for _, d := range r.devices {
			a := d.AwaitHealthy(t, "app")
			if a.FleetRelease != rel {
				t.Fatalf("%s: %s runs %s after the rollout completed, want %s", what, d.Name, release.ShortID(a.FleetRelease), release.ShortID(rel))
			}
			checkRunning(t, d, deviceSnap{started: map[string]time.Time{}}, "", rel, what+", after")
			awaitDevice(t, r.srv(), d, "online on the new release", func(x fleetDevice) bool {
				return x.Online && x.Apps["app"].FleetRelease == rel && x.Apps["app"].Phase == release.PhaseIdle
			})
		}
		if p := done.Progress; p.Healthy != devices || p.Failed+p.Skipped+p.Reverted+p.Pending+p.Updating != 0 {
			t.Fatalf("%s: rollout progress %+v, want %d healthy", what, p, devices)
		}
		// Each stage moved once, audited once; started and completed once.
		actions, stages := stageAudit(r.audit(t, "rollout/"+ro.ID))
		for s := range done.Stages {
			if stages[s] != 1 {
				t.Errorf("%s: stage %d audited %d times (%v)", what, s, stages[s], stages)
			}
		}
		if len(stages) != len(done.Stages) || actions["rollout.start"] != 1 || actions["rollout.complete"] != 1 || actions["rollout.pause"] != 0 {
			t.Fatalf("%s: audit of the rollout: %v, stages %v; want one start, one complete, each of %d stages once", what, actions, stages, len(done.Stages))
		}
		held++
		prev = rel
		t.Logf("%s: held; rollout completed %s after the server was back (%s into the test)", what, converge[i].Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
	}
	t.Logf("invariants held %d/%d; rollout completed after the server was back in %v", held, rounds, roundAll(converge))

	// A canary that fails pauses the rollout; a server kill does not
	// resume it, and the devices it has not reached stay where they were.
	bad := r.release(t, "bad", true)
	out, err := r.srv().Berth(t, "rollout", "start", "--fleet", "lab", "--release", bad, "--canary", "1", "--batch", "1", "--max-failures", "1", "--stage-timeout", "3m", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	var ro serverapi.Rollout
	if err := json.Unmarshal([]byte(out), &ro); err != nil {
		t.Fatalf("rollout start --json: %v\n%s", err, out)
	}
	paused := r.awaitRollout(t, ro.ID, 90*time.Second, "paused", func(x serverapi.Rollout) bool { return x.Status != "running" })
	if paused.Status != "paused" || !strings.Contains(paused.Reason, "max_failures") {
		t.Fatalf("canary failed: rollout %s (%q), want paused", paused.Status, paused.Reason)
	}
	snaps := map[*Device]deviceSnap{}
	for _, d := range r.devices {
		snaps[d] = snapshot(t, d, d.AwaitHealthy(t, "app").Release)
	}
	f := []serverFault{faultKillRestart, faultKillReplica}[rng.IntN(2)]
	r.fault(t, f, time.Second+time.Duration(rng.Int64N(int64(2*time.Second))), func() {})
	time.Sleep(3 * time.Second) // three looks of the rollout engine
	after := r.rollout(t, ro.ID)
	if after.Status != "paused" || after.Stage != paused.Stage || after.Progress != paused.Progress {
		t.Fatalf("after %s: rollout %s at stage %d, progress %+v; before: paused at stage %d, %+v", f, after.Status, after.Stage, after.Progress, paused.Stage, paused.Progress)
	}
	if after.Progress.Pending != devices-1 || after.Progress.Failed != 1 {
		t.Fatalf("after %s: progress %+v, want 1 failed and %d pending", f, after.Progress, devices-1)
	}
	for _, d := range r.devices {
		checkRunning(t, d, snaps[d], prev, prev, "paused rollout after "+f.String())
		if a := d.App(t, "app"); a.FleetRelease != prev {
			t.Fatalf("paused rollout after %s: %s runs %s, want %s", f, d.Name, release.ShortID(a.FleetRelease), release.ShortID(prev))
		}
	}
	actions, stages := stageAudit(r.audit(t, "rollout/"+ro.ID))
	if actions["rollout.pause"] != 1 || actions["rollout.start"] != 1 || len(stages) != 1 || stages[0] != 1 || actions["rollout.resume"]+actions["rollout.complete"] != 0 {
		t.Fatalf("audit of the paused rollout: %v, stages %v; want one start, stage 0 once, one pause", actions, stages)
	}
	t.Logf("a canary that failed paused the rollout (%s); after %s it stays paused, %d devices untouched", paused.Reason, f, devices-1)
}

func roundAll(ds []time.Duration) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.Round(100 * time.Millisecond).String()
	}
	return out
}

// TestFleetReportsAfterServerOutage: a device that finishes a switch
// while its server is away reports it as soon as the server is back, not
// at its next minute's heartbeat (a rollout judges devices by their
// reports: it waited up to a minute per such device).
func TestFleetReportsAfterServerOutage(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	srv := env.NewServer(t)
	key := srv.CreateFleet(t, "lab")
	newRelease := func(v string) string {
		f := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, f, fleetApp(env, v, false))
		return createRelease(t, srv, f, "v"+v)
	}
	assign := func(id string) { srv.AssignAll(t, id) }
	v1, v2 := newRelease("1"), newRelease("2")
	robot := env.NewFleetDevice(t, srv.URL, key)
	assign(v1)
	robot.Await(t, "app", 90*time.Second, "v1 committed", func(a release.AppState) bool {
		return a.FleetRelease == v1 && a.Phase == release.PhaseIdle
	})
	awaitDevice(t, srv, robot, "reported on v1", func(d fleetDevice) bool { return d.Apps["app"].FleetRelease == v1 })

	// The server goes away while the device switches to v2.
	assign(v2)
	robot.Await(t, "app", 60*time.Second, "the switch to v2 under way", func(a release.AppState) bool {
		return a.Phase != release.PhaseIdle
	})
	srv.Stop()
	robot.Await(t, "app", 60*time.Second, "v2 committed", func(a release.AppState) bool {
		return a.FleetRelease == v2 && a.Phase == release.PhaseIdle
	})
	time.Sleep(2 * time.Second) // its report of the commit fails meanwhile
	srv.Start(t)
	back := time.Now()
	const bound = 15 * time.Second
	for {
		out, err := srv.Berth(t, "device", "list", "--fleet", "lab", "--json")
		var ds []fleetDevice
		if err == nil && json.Unmarshal([]byte(out), &ds) == nil && len(ds) == 1 && ds[0].Apps["app"].FleetRelease == v2 && ds[0].Apps["app"].Phase == release.PhaseIdle {
			t.Logf("the server had the device's report of v2 %s after it was back", time.Since(back).Round(100*time.Millisecond))
			return
		}
		if time.Since(back) > bound {
			t.Fatalf("%s after the server was back it still lists the device as before the switch:\n%s", bound, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
