package berthtest

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// TestEngineCrashDuringStop crashes the engine (SIGKILL) while berthd waits
// for an old container to stop — its process ignores SIGTERM, as PID 1
// without a handler does, so the stop takes its whole grace period — and
// starts the engine again: the switch must roll back to one whole release.
func TestEngineCrashDuringStop(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	g := env.NewEngine2(t, "")
	robot := env.NewDeviceOn(t, g.Host, "", Policy)
	app := func(v string) string {
		s := engineApp(v, "IMG_A", release.StrategyDownloadThenKill, false)
		return strings.Replace(s, "    labels: {berth.update.strategy", "    stop_grace_period: 6s\n    labels: {berth.update.strategy", 1)
	}
	robot.MustDeploy(t, "app", app("1"))
	before := robot.AwaitHealthy(t, "app")
	deployed := make(chan string, 2)
	go func() {
		out, _ := robot.Deploy(t, "app", app("2"))
		deployed <- out
	}()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(journalStep(robot, "app"), "stop"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the switch never reached a stop step")
		}
	}
	at := journalStep(robot, "app")
	time.Sleep(1500 * time.Millisecond)
	g.Stop(t, syscall.SIGKILL)
	time.Sleep(time.Second)
	g.Start(t)
	out := <-deployed
	t.Logf("engine killed at %s; deploy said: %s", at, lastLines(out, 2))
	a := robot.Await(t, "app", 2*time.Minute, "at rest", func(a release.AppState) bool {
		return a.Phase == release.PhaseIdle || a.Phase == release.PhaseRolledBack || a.Phase == release.PhaseFailed
	})
	if a.Phase == release.PhaseFailed {
		t.Fatalf("the app is left failed: %s", a.Error)
	}
	a = robot.AwaitHealthy(t, "app")
	assertWhole(t, robot, a)
	if a.Release != before.Release {
		t.Logf("committed the new release %s", release.ShortID(a.Release))
	}
}
