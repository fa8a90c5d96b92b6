package berthtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// engineApp is killApp for an engine of the test's own: no published port,
// and restart: unless-stopped, as on a robot that must come back after a
// reboot.
func engineApp(version, workerImage, strategy string, unhealthy bool) string {
	s := killApp("0", version, workerImage, strategy, unhealthy)
	s = strings.Replace(s, `    ports: ["127.0.0.1:0:8080"]`+"\n", "", 1)
	s = strings.ReplaceAll(s, "    image: ${", "    restart: unless-stopped\n    image: ${")
	return s
}

// TestEngineRestartMidSwitch restarts the Docker Engine a device's agent
// drives — a second dockerd of the test's own, never the shared one — at a
// random moment of a release switch: a service restart (SIGTERM: the engine
// stops every container) or a crash (SIGKILL: containers run on), down for
// a random while. berthd keeps running throughout. After the engine is back
// the invariant of TestKillAtRandomPoints must hold: one whole release, old
// or new (never one that fails its healthcheck), nothing left over, the
// volume's data intact.
//
// BERTH_FAULT_ENGINE_RESTARTS sets the count (default 2, service restarts
// only; set, crashes too; make faults: 20).
func TestEngineRestartMidSwitch(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	rng := FaultSeed(t)
	restarts := FaultCount(t, "BERTH_FAULT_ENGINE_RESTARTS", 2)
	// Crashes (SIGKILL) are in the long runs only: one can leave the
	// engine unable to start an old container again ("task … already
	// exists"), and the app failed, not rolled back — a known failure,
	// docs/reliability.md.
	crashes := os.Getenv("BERTH_FAULT_ENGINE_RESTARTS") != ""
	g := env.NewEngine2(t, "")
	robot := env.NewDeviceOn(t, g.Host, "", Policy)
	strategies := []string{release.StrategyDownloadThenKill, release.StrategyKillThenDownload, release.StrategyDeleteThenDownload, release.StrategyHandOver}

	robot.MustDeploy(t, "app", engineApp("1", "IMG_A", strategies[0], false))
	prev := robot.AwaitHealthy(t, "app")
	marker := writeVolumeMarkerOn(t, robot, g.Host, "app", "data")

	deployed := make(chan string, 2)
	go func() { deployed <- robot.MustDeploy(t, "app", engineApp("2", "IMG_B", strategies[1], false)) }()
	start := awaitJournal(robot, "app", deployed)
	<-deployed
	window := time.Since(start)
	prev = robot.AwaitHealthy(t, "app")
	t.Logf("an undisturbed switch on the second engine journals for %s", window.Round(time.Millisecond))

	held := 0
	for i := range restarts {
		version := fmt.Sprint(i + 3)
		img := []string{"IMG_A", "IMG_B"}[rng.IntN(2)]
		strategy := strategies[rng.IntN(len(strategies))]
		unhealthy := rng.IntN(4) == 0
		delay := time.Duration(rng.Int64N(int64(window * 11 / 10)))
		down := time.Duration(rng.Int64N(int64(3 * time.Second)))
		sig := []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}[rng.IntN(2)]
		if !crashes {
			sig = syscall.SIGTERM
		}

		deployed := make(chan string, 2)
		go func() {
			out, _ := robot.Deploy(t, "app", engineApp(version, img, strategy, unhealthy))
			deployed <- out
		}()
		awaitJournal(robot, "app", deployed)
		time.Sleep(delay)
		at := journalStep(robot, "app")
		t.Logf("restart %d/%d: %s at %s, down %s", i+1, restarts, sig, at, down.Round(time.Millisecond))
		g.Stop(t, sig)
		time.Sleep(down)
		g.Start(t)
		out := <-deployed
		what := fmt.Sprintf("engine %s %d/%d (%s into a switch to %s, at %s, down %s; worker %s %s, unhealthy=%v)", sig, i+1, restarts, delay.Round(time.Millisecond), version, at, down.Round(time.Millisecond), img, strategy, unhealthy)
		a := robot.Await(t, "app", 2*time.Minute, "healthy after the engine restart", func(a release.AppState) bool {
			if a.Phase != release.PhaseIdle && a.Phase != release.PhaseRolledBack {
				return false
			}
			for _, s := range a.Services {
				if s.State != "running" || s.Health == release.HealthStarting || s.Health == release.HealthUnhealthy {
					return false
				}
			}
			return len(a.Services) == 2
		})
		assertWhole(t, robot, a)
		switch {
		case a.Release == prev.Release:
		case !unhealthy:
			prev = a
		default:
			t.Fatalf("%s: the release that fails its healthcheck was committed", what)
		}
		assertNoLeftoversOn(t, robot, g.Host, what)
		if b, err := os.ReadFile(marker.path); err != nil || string(b) != marker.content {
			t.Fatalf("%s: volume marker: %q, %v", what, b, err)
		}
		held++
		t.Logf("%s: release %s phase %s; deploy said: %s", what, release.ShortID(a.Release), a.Phase, lastLines(out, 1))
	}
	t.Logf("invariant held %d/%d engine restarts", held, restarts)
}

func writeVolumeMarkerOn(t *testing.T, d *Device, host, app, volume string) volumeMarker {
	t.Helper()
	name := d.Engine().VolumeName(app, volume, release.Volume{})
	out, err := docker("-H", host, "volume", "inspect", "-f", "{{.Mountpoint}}", name)
	if err != nil {
		t.Fatalf("inspect volume %s: %v\n%s", name, err, out)
	}
	m := volumeMarker{path: filepath.Join(strings.TrimSpace(out), "berthtest-marker"), content: "marker " + randomID() + "\n"}
	if err := os.WriteFile(m.path, []byte(m.content), 0o644); err != nil {
		t.Fatalf("write the volume marker: %v", err)
	}
	return m
}

func assertNoLeftoversOn(t *testing.T, d *Device, host, what string) {
	t.Helper()
	for kind, want := range map[string]int{"container": 2, "network": 1, "volume": 1} {
		args := []string{"-H", host, kind, "ls", "-q", "--filter", "label=berth.instance=" + d.Name}
		if kind == "container" {
			args = []string{"-H", host, "ps", "-aq", "--filter", "label=berth.instance=" + d.Name}
		}
		out, err := docker(args...)
		if err != nil {
			t.Fatalf("%s: docker %v: %v\n%s", what, args, err, out)
		}
		if n := len(strings.Fields(out)); n != want {
			t.Fatalf("%s: %d %ss of the device on the engine, want %d", what, n, kind, want)
		}
	}
	if _, err := os.Stat(filepath.Join(d.StateDir, "apps", "app", "journal.json")); err == nil {
		t.Fatalf("%s: a journal is left at rest", what)
	}
}
