package berthtest

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// showDevice is `berth device show NAME --fleet lab --json`.
func showDevice(t *testing.T, srv *Server, name string) serverapi.Device {
	t.Helper()
	out, err := srv.Berth(t, "device", "show", name, "--fleet", "lab", "--json")
	if err != nil {
		t.Fatalf("device show %s: %v\n%s", name, err, out)
	}
	var d serverapi.Device
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("device show %s --json: %v\n%s", name, err, out)
	}
	return d
}

// awaitStatus polls `berth device show` until the device's app is in state
// and ok (if given) holds; it returns the device as shown then.
func awaitStatus(t *testing.T, srv *Server, name, state string, ok func(serverapi.Device) bool) serverapi.Device {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var d serverapi.Device
	for time.Now().Before(deadline) {
		d = showDevice(t, srv, name)
		if d.Status["app"].State == state && (ok == nil || ok(d)) {
			return d
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("device %s: app never %s; last: status %+v, reported %+v", name, state, d.Status["app"], d.Apps["app"])
	return d
}

// TestFleetStateMachine walks one fleet device through the states an
// operator sees (docs/api.md, "An app on a device, as the fleet sees it")
// and checks that each has a way out, on a real server, a real berthd and
// the real engine (issue 12, items 2, 3, 4, 6 and 7):
//
//   - a LAN deploy without --override-ttl is an override until the app is
//     assigned again: `berth device reclaim`, or the next release;
//   - a release that fails is not tried again when an unrelated
//     environment layer changes, and is with `berth device retry`;
//   - a switch cut short by a berthd crash is rolled back and then tried
//     again, not blocked as failed;
//   - `berth rm` over the LAN is an override too, ended by assigning;
//   - after an aborted rollout the device shows its release running, not
//     the failure; failure reasons name the fleet's release IDs;
//   - a berthd that stops says so: the device is offline at once.
func TestFleetStateMachine(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	srv := env.NewServer(t)
	port := FreePort(t)
	key := srv.CreateFleet(t, "lab")
	newRelease := func(v string, extra ...string) string {
		compose := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, compose, strings.Replace(web(port, v, extra...), "${IMG_A}", env.Images["a"], 1))
		return createRelease(t, srv, compose, "v"+v)
	}
	v1, v2, v3 := newRelease("1"), newRelease("2"), newRelease("3")
	bad := newRelease("bad", `      UNHEALTHY: "1"`)
	robot := env.NewFleetDevice(t, srv.URL, key)
	name := robot.Name
	runs := func(id string) func(serverapi.Device) bool {
		return func(d serverapi.Device) bool { return d.Status["app"].Release == id }
	}

	srv.AssignAll(t, v1)
	awaitStatus(t, srv, name, serverapi.StatusRunning, runs(v1))

	// A LAN deploy without a TTL: an override, through an agent restart,
	// until reclaimed.
	robot.MustDeploy(t, "app", strings.Replace(web(port, "lan"), "${IMG_A}", env.Images["a"], 1))
	d := awaitStatus(t, srv, name, serverapi.StatusOverride, nil)
	Contains(t, d.Status["app"].Leave, "berth device reclaim")
	robot.Kill(t)
	robot.Start(t)
	time.Sleep(5 * time.Second) // a poll or two after the restart
	awaitStatus(t, srv, name, serverapi.StatusOverride, nil)
	awaitAnswer(t, port, "version=lan\n")
	if out, err := srv.Berth(t, "device", "reclaim", name, "--fleet", "lab", "--app", "app"); err != nil {
		t.Fatal(err, out)
	}
	awaitStatus(t, srv, name, serverapi.StatusRunning, runs(v1))
	awaitAnswer(t, port, "version=1\n")

	// Another override without a TTL; the next fleet release ends it.
	robot.MustDeploy(t, "app", strings.Replace(web(port, "lan2"), "${IMG_A}", env.Images["a"], 1))
	awaitStatus(t, srv, name, serverapi.StatusOverride, nil)
	srv.AssignAll(t, v2)
	awaitStatus(t, srv, name, serverapi.StatusRunning, runs(v2))
	awaitAnswer(t, port, "version=2\n")

	// A bad release fails and is rolled back; the reason names the fleet's
	// release ID. An environment change does not make it run again.
	srv.AssignAll(t, bad)
	d = awaitStatus(t, srv, name, serverapi.StatusFailed, runs(v2))
	Contains(t, d.Status["app"].Reason, release.ShortID(bad))
	Contains(t, d.Status["app"].Leave, "berth device retry")
	failedGen := d.Apps["app"].FleetGeneration
	before := containerIDs(t, robot)
	if out, err := srv.Berth(t, "fleet", "env", "lab", "UNRELATED=1"); err != nil {
		t.Fatal(err, out)
	}
	time.Sleep(8 * time.Second) // a poll, and time enough to start a switch
	if after := containerIDs(t, robot); after != before {
		t.Fatalf("an environment change made the device switch again (containers %s, then %s)", before, after)
	}
	d = awaitStatus(t, srv, name, serverapi.StatusFailed, runs(v2))
	if d.Apps["app"].FleetGeneration != failedGen {
		t.Fatalf("failed under generation %d, then %d after an environment change: it was tried again", failedGen, d.Apps["app"].FleetGeneration)
	}
	// berth device retry tries it again (and it fails again).
	if out, err := srv.Berth(t, "device", "retry", name, "--fleet", "lab", "--app", "app"); err != nil {
		t.Fatal(err, out)
	}
	awaitStatus(t, srv, name, serverapi.StatusFailed, func(d serverapi.Device) bool {
		return d.Apps["app"].FleetGeneration > failedGen
	})
	awaitAnswer(t, port, "version=2\n")

	// berthd dies in the middle of the switch to v3 (right after its
	// fourth journal entry): rolled back, then tried again, and it runs.
	robot.Kill(t)
	robot.Start(t, "BERTH_TEST_HANG_AT_JOURNAL=4")
	srv.AssignAll(t, v3)
	robot.Await(t, "app", 60*time.Second, "in the middle of the switch to v3", func(a release.AppState) bool {
		return !a.Phase.AtRest()
	})
	time.Sleep(2 * time.Second)
	robot.Kill(t)
	robot.Start(t)
	d = awaitStatus(t, srv, name, serverapi.StatusRunning, runs(v3))
	if a := d.Apps["app"]; a.FleetFailed == v3 {
		t.Fatalf("a switch cut short by a crash was booked as a failure: %+v", a)
	}
	awaitAnswer(t, port, "version=3\n")

	// berth rm over the LAN: an override (the fleet release does not come
	// back on its own) until the release is assigned again.
	if out, err := robot.Berth(t, "rm", "--app", "app"); err != nil {
		t.Fatal(err, out)
	}
	d = awaitStatus(t, srv, name, serverapi.StatusOverride, nil)
	if o := d.Apps["app"].Override; o == nil || !o.Removed {
		t.Fatalf("a LAN removal reported as %+v", d.Apps["app"])
	}
	time.Sleep(5 * time.Second)
	if cs := robot.Containers(t, "app"); len(cs) != 0 {
		t.Fatalf("the fleet release came back after a LAN removal: %d containers", len(cs))
	}
	out, err := srv.Berth(t, "release", "assign", v3, "--fleet", "lab", "--device", name, "--json")
	if err != nil || !strings.Contains(out, `"renewed"`) {
		t.Fatalf("assign the release the device has: %v\n%s", err, out)
	}
	awaitStatus(t, srv, name, serverapi.StatusRunning, runs(v3))

	// A rollout of the bad release fails on the canary, pauses; aborted,
	// the device shows v3 running again — not a failure, not "rolled back".
	out, err = srv.Berth(t, "rollout", "start", "--release", bad, "--fleet", "lab", "--stage-timeout", "2m", "--json")
	if err != nil {
		t.Fatal(err, out)
	}
	var ro struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &ro); err != nil {
		t.Fatal(err, out)
	}
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, _ := srv.Berth(t, "rollout", "status", ro.ID, "--fleet", "lab", "--json")
		if strings.Contains(out, `"status": "paused"`) {
			Contains(t, out, release.ShortID(bad)) // the reason names the fleet's release
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rollout of a failing release never paused:\n%s", out)
		}
	}
	if out, err := srv.Berth(t, "rollout", "abort", ro.ID, "--fleet", "lab"); err != nil {
		t.Fatal(err, out)
	}
	d = awaitStatus(t, srv, name, serverapi.StatusRunning, runs(v3))
	if a := d.Apps["app"]; a.Phase != release.PhaseIdle || a.Error != "" {
		t.Fatalf("back on v3 after the abort, the device still shows phase %s, error %q", a.Phase, a.Error)
	}

	// berthd stops (SIGTERM): offline at once, not after three polls.
	robot.Stop(t)
	stopped := time.Now()
	for !showDevice(t, srv, name).Status["app"].Offline {
		if time.Since(stopped) > 10*time.Second {
			t.Fatalf("a stopped berthd still shows online %s later", time.Since(stopped).Round(time.Second))
		}
		time.Sleep(200 * time.Millisecond)
	}
	robot.Start(t)
	awaitStatus(t, srv, name, serverapi.StatusRunning, func(d serverapi.Device) bool { return d.Online })
}
