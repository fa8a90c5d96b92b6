package berthtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// TestFleetDevice: a real berth server, a real berthd in fleet mode, the
// real engine. The device registers with the fleet's key; a release created
// from a Compose file (its image uploaded from the local engine, then removed
// from it) reaches the device, which fetches the content from the server,
// loads it, switches and reports back; an env change at the fleet layer
// arrives without a new image; the server going away leaves the app running
// and the device catches up when it returns; a LAN deploy is reported as a
// local override and, with --override-ttl, gives way to the fleet release.
func TestFleetDevice(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	srv := env.NewServer(t)
	port := FreePort(t)

	key := srv.CreateFleet(t, "lab")

	// An image only the laptop has: built, uploaded with the release, then
	// removed from the engine (the device's engine is this engine).
	archive, tag := bigImage(t, env)
	if out, err := docker("load", "-i", archive); err != nil {
		t.Fatal(err, out)
	}
	compose := filepath.Join(t.TempDir(), "compose.yaml")
	write(t, compose, strings.Replace(web(port, "1"), "${IMG_A}", tag, 1))
	relID := createRelease(t, srv, compose, "v1")
	if out, err := docker("rmi", tag); err != nil {
		t.Fatal(err, out)
	}

	robot := env.NewFleetDevice(t, srv.URL, key)
	if out, err := srv.Berth(t, "release", "assign", relID, "--fleet", "lab", "--all"); err != nil {
		t.Fatal(err, out)
	}
	a := robot.Await(t, "app", 90*time.Second, "the fleet release committed", func(a release.AppState) bool {
		return a.FleetRelease == relID && a.Phase == release.PhaseIdle
	})
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("fleet release answers %q (state %+v)", got, a)
	}
	awaitDevice(t, srv, robot, "online with the release", func(d fleetDevice) bool {
		return d.Online && d.Apps["app"].FleetRelease == relID
	})
	fi, err := os.Stat(filepath.Join(robot.StateDir, "device.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("device.json: %v, mode %v; want 0600", err, fi.Mode())
	}
	var reg struct{ Token string }
	b, _ := os.ReadFile(filepath.Join(robot.StateDir, "device.json"))
	if json.Unmarshal(b, &reg); reg.Token == "" {
		t.Fatal("device.json holds no token")
	}
	defer func() {
		log, _ := os.ReadFile(filepath.Join(filepath.Dir(robot.StateDir), "berthd.log"))
		for what, secret := range map[string]string{"provisioning key": key, "device token": reg.Token} {
			if strings.Contains(string(log), secret) {
				t.Errorf("berthd's log shows the %s", what)
			}
		}
	}()

	// Env at the fleet layer: the app restarts with it, same image.
	if out, err := srv.Berth(t, "fleet", "env", "lab", "VERSION=2"); err != nil {
		t.Fatal(err, out)
	}
	awaitAnswer(t, port, "version=2\n")

	// The server goes away: the app keeps running; a change made while it
	// is back reaches the device.
	srv.Stop()
	time.Sleep(2 * time.Second)
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=2\n" {
		t.Fatalf("with the server down the app answers %q", got)
	}
	srv.Start(t)
	if out, err := srv.Berth(t, "fleet", "env", "lab", "VERSION=3"); err != nil {
		t.Fatal(err, out)
	}
	awaitAnswer(t, port, "version=3\n")
	robot.AwaitHealthy(t, "app")

	// A LAN deploy over the fleet release: reported as an override, then
	// back to the fleet release when its TTL runs out.
	robot.MustDeploy(t, "app", strings.Replace(web(port, "lan"), "${IMG_A}", tag, 1), "--override-ttl", "5s")
	awaitDevice(t, srv, robot, "the override reported", func(d fleetDevice) bool {
		o := d.Apps["app"].Override
		return o != nil && strings.Contains(o.By, "@") && d.Apps["app"].FleetRelease == ""
	})
	awaitAnswer(t, port, "version=3\n")
	robot.Await(t, "app", 60*time.Second, "back on the fleet release", func(a release.AppState) bool {
		return a.FleetRelease == relID && a.Override == nil && a.Phase == release.PhaseIdle
	})
}

type fleetDevice struct {
	Name   string                      `json:"name"`
	Online bool                        `json:"online"`
	Apps   map[string]release.AppState `json:"apps"`
}

// awaitDevice polls `berth device list` until the device satisfies ok.
func awaitDevice(t *testing.T, srv *Server, d *Device, what string, ok func(fleetDevice) bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out, err := srv.Berth(t, "device", "list", "--fleet", "lab", "--json")
		last = out
		var ds []fleetDevice
		if err == nil && json.Unmarshal([]byte(out), &ds) == nil {
			for _, x := range ds {
				if x.Name == d.Name && ok(x) {
					return
				}
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("device %s never %s; last list:\n%s", d.Name, what, last)
}

// awaitAnswer polls the app until it answers want.
func awaitAnswer(t *testing.T, port, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var got string
	for time.Now().Before(deadline) {
		if got, _ = Get("http://127.0.0.1:" + port + "/"); got == want {
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("the app answers %q, want %q", got, want)
}

// TestFleetTargetBackMidSwitch: the target goes to v2 and, while the
// device is still switching to it, back to v1 (a rollout aborted at that
// moment). The device ends on v1: the switch to v2 finishes (it is never
// cut short), and the device then returns to what its target says,
// rather than taking the target back to the release still running for
// "already done" while the switch away from it commits.
func TestFleetTargetBackMidSwitch(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	srv := env.NewServer(t)
	port := FreePort(t)
	key := srv.CreateFleet(t, "lab")
	newRelease := func(v string) string {
		compose := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, compose, strings.Replace(web(port, v), "${IMG_A}", env.Images["a"], 1))
		return createRelease(t, srv, compose, "v"+v)
	}
	assign := func(id string) { srv.AssignAll(t, id) }
	v1, v2 := newRelease("1"), newRelease("2")
	robot := env.NewFleetDevice(t, srv.URL, key)
	assign(v1)
	robot.Await(t, "app", 90*time.Second, "v1 committed", func(a release.AppState) bool {
		return a.FleetRelease == v1 && a.Phase == release.PhaseIdle
	})

	assign(v2)
	robot.Await(t, "app", 60*time.Second, "the switch to v2 under way", func(a release.AppState) bool {
		return a.Phase != release.PhaseIdle
	})
	assign(v1)
	a := robot.Await(t, "app", 90*time.Second, "back on v1", func(a release.AppState) bool {
		return a.FleetRelease == v1 && a.Phase == release.PhaseIdle
	})
	// And it stays there: nothing left over switches it again.
	time.Sleep(8 * time.Second)
	if got := robot.State(t).Apps["app"]; got.FleetRelease != v1 || got.Release != a.Release {
		t.Fatalf("after settling: fleet release %s, release %s; want v1 (%s), release %s", got.FleetRelease, got.Release, v1, a.Release)
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("the app answers %q, want version=1", got)
	}
}
