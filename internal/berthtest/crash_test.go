package berthtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// TestKillDuringSwitch kills berthd with SIGKILL right after each journal
// entry of a switch (and of the rollback after it), restarts it, and checks
// the app converges to exactly one whole release with its volume data intact.
func TestKillDuringSwitch(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)
	two := func(v string) string {
		return strings.Replace(web(port, v), "volumes:\n  data: {}", `  worker:
    image: ${IMG_B}
    environment: {VERSION: "`+v+`"}
volumes:
  data: {}`, 1)
	}
	robot.MustDeploy(t, "app", two("1"))
	robot.AwaitHealthy(t, "app")

	// Count the journal entries of one full switch.
	steps := 0
	for n := 1; ; n++ {
		version := fmt.Sprintf("%d", n+1)
		robot.Kill(t)
		robot.Start(t, fmt.Sprintf("BERTH_TEST_HANG_AT_JOURNAL=%d", n))
		deployed := make(chan string, 1)
		go func() {
			out, _ := robot.Deploy(t, "app", two(version), "--json")
			deployed <- out
		}()
		hang := filepath.Join(robot.StateDir, "test-hang")
		reached, finished := false, false
		for deadline := time.Now().Add(40 * time.Second); time.Now().Before(deadline) && !reached && !finished; time.Sleep(50 * time.Millisecond) {
			if _, err := os.Stat(hang); err == nil {
				reached = true
			}
			select {
			case <-deployed:
				finished = true
			default:
			}
		}
		robot.Kill(t) // the CLI following the switch loses its agent and exits
		if !finished {
			<-deployed
		}
		os.Remove(hang)
		robot.Start(t)
		a := robot.AwaitHealthy(t, "app")
		assertWhole(t, robot, a)
		if got, _ := Get("http://127.0.0.1:" + port + "/data"); !strings.HasPrefix(got, "1\n") {
			t.Fatalf("step %d: volume data lost: %q", n, got)
		}
		if !reached {
			steps = n - 1
			break
		}
		t.Logf("killed at journal entry %d: converged to release %s (%s) phase %s", n, release.ShortID(a.Release), a.Version, a.Phase)
		if n > 40 {
			t.Fatal("switch never finished")
		}
	}
	if steps < 5 {
		t.Fatalf("only %d journal steps exercised", steps)
	}
}

// assertWhole checks that every service of the app runs the same release,
// with exactly one container per service.
func assertWhole(t *testing.T, d *Device, a release.AppState) {
	t.Helper()
	cs := d.Containers(t, "app")
	if len(cs) != 2 {
		t.Fatalf("want 2 containers (web, worker), have %d: %+v", len(cs), cs)
	}
	for _, c := range cs {
		if c.Release != a.Release || !c.Running() {
			t.Fatalf("container %s of %s: release %s state %s; app release %s", c.Name, c.Service, release.ShortID(c.Release), c.State, release.ShortID(a.Release))
		}
	}
}

// slowStop is a web service that ignores SIGTERM, as many real programs do
// (busybox httpd as PID 1, a ROS node without a handler): the engine stops
// it only when its grace period runs out and it is killed.
func slowStop(port, version string) string {
	return web(port, version, `    command: ["-ignore-term"]`, `    stop_grace_period: 6s`)
}

// TestKillDuringSlowStop kills berthd while the engine is still stopping
// the old container of a switch (a service that takes its whole grace
// period to stop) and starts it again within that period. The engine's
// stop goes on without berthd and kills the old container in the end: the
// recovery must not take it for running, or the app is left down while
// its state says "rolled back".
func TestKillDuringSlowStop(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)
	robot.MustDeploy(t, "app", slowStop(port, "1"))
	robot.AwaitHealthy(t, "app")

	deployed := make(chan string, 1)
	go func() {
		out, _ := robot.Deploy(t, "app", slowStop(port, "2"))
		deployed <- out
	}()
	// Wait for the journal to name the stop of the old web container.
	journal := filepath.Join(robot.StateDir, "apps", "app", "journal.json")
	var stopAt time.Time
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(journal); err == nil && strings.Contains(string(b), `"kind": "stop"`) {
			stopAt = time.Now()
			break
		}
	}
	if stopAt.IsZero() {
		t.Fatalf("the switch never reached its stop step:\n%s", <-deployed)
	}
	time.Sleep(time.Second) // the engine is in the old container's grace period now
	robot.Kill(t)
	<-deployed
	robot.Start(t)

	// Past the grace period the engine has killed the old container; the
	// app must run release 1 again, whole, and keep running.
	time.Sleep(time.Until(stopAt.Add(8 * time.Second)))
	a := robot.AwaitHealthy(t, "app")
	if a.Phase != release.PhaseRolledBack {
		t.Fatalf("phase %s, want rolled back: %+v", a.Phase, a)
	}
	for i := 0; i < 3; i++ {
		if got, err := Get("http://127.0.0.1:" + port + "/"); err != nil || got != "version=1\n" {
			t.Fatalf("after the recovery the app does not serve release 1: %q %v; state %+v", got, err, robot.App(t, "app"))
		}
		time.Sleep(time.Second)
	}
	for _, c := range robot.Containers(t, "app") {
		if c.Release != a.Release || !c.Running() {
			t.Fatalf("container %s: release %s state %s; app release %s", c.Name, release.ShortID(c.Release), c.State, release.ShortID(a.Release))
		}
	}
}
