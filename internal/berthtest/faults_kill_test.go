package berthtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/reconcile"
	"github.com/berth-robotics/berth/internal/release"
)

// killApp is web (a named volume, a published port, a healthcheck, and a
// slow stop: it ignores SIGTERM, so the engine stops it only when its 3 s
// grace period ends, as many real programs make it do) and a worker whose
// image, update strategy and health vary from one switch to the next;
// unhealthy makes the new web fail its healthcheck, so the switch rolls
// back.
func killApp(port, version, workerImage, strategy string, unhealthy bool) string {
	bad := ""
	if unhealthy {
		bad = `      UNHEALTHY: "1"`
	}
	return fmt.Sprintf(`
services:
  web:
    image: ${IMG_A}
    command: ["-ignore-term"]
    stop_grace_period: 3s
    environment:
      VERSION: "%[1]s"
      DATA_DIR: /data
%[5]s
    ports: ["127.0.0.1:%[2]s:8080"]
    volumes: [data:/data]
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 2}
  worker:
    image: ${%[3]s}
    command: ["-handover-after", "500ms"]
    environment: {VERSION: "%[1]s", DATA_DIR: /data}
    volumes: [data:/data]
    labels: {berth.update.strategy: %[4]s}
volumes:
  data: {}
`, version, port, workerImage, strategy, bad)
}

// TestKillAtRandomPoints kills berthd with SIGKILL at a random moment of a
// release switch — any instant from the deploy request to the commit or the
// rollback, not only right after a journal entry — restarts it, and checks
// the invariant every time: the app runs exactly one whole release, the one
// before the switch or the new one (never a release that failed its
// healthcheck), one container per service and no other container, network
// or journal left over, and the data in its named volume intact.
//
// BERTH_FAULT_KILLS sets the number of kills (default 5; make faults: 100),
// BERTH_FAULT_SEED replays a run.
func TestKillAtRandomPoints(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	rng := FaultSeed(t)
	kills := FaultCount(t, "BERTH_FAULT_KILLS", 5)
	robot := env.NewDevice(t)
	port := FreePort(t)
	strategies := []string{release.StrategyDownloadThenKill, release.StrategyKillThenDownload, release.StrategyDeleteThenDownload, release.StrategyHandOver}

	robot.MustDeploy(t, "app", killApp(port, "1", "IMG_A", strategies[0], false))
	prev := robot.AwaitHealthy(t, "app")
	prevVersion := "1"
	marker := writeVolumeMarker(t, robot, "app", "data")

	// One undisturbed switch sets the window the kills fall into: from the
	// agent's first journal entry to the end of its journal.
	deployed := make(chan string, 1)
	go func() { deployed <- robot.MustDeploy(t, "app", killApp(port, "2", "IMG_B", strategies[1], false)) }()
	start := awaitJournal(robot, "app", deployed)
	<-deployed
	window := time.Since(start)
	prev = robot.AwaitHealthy(t, "app")
	prevVersion = "2"
	t.Logf("an undisturbed switch journals for %s; kills fall uniformly in [0, %s] after its first entry (one in ten counted from the deploy request instead)", window.Round(time.Millisecond), (window * 11 / 10).Round(time.Millisecond))

	var held, toOld, toNew, midSwitch int
	killedAt := map[string]int{} // journal step under way at the kill
	for i := range kills {
		version := fmt.Sprint(i + 3)
		img := []string{"IMG_A", "IMG_B"}[rng.IntN(2)]
		strategy := strategies[rng.IntN(len(strategies))]
		unhealthy := rng.IntN(4) == 0
		delay := time.Duration(rng.Int64N(int64(window * 11 / 10)))

		deployed := make(chan string, 2)
		go func() {
			out, _ := robot.Deploy(t, "app", killApp(port, version, img, strategy, unhealthy), "--json")
			deployed <- out
		}()
		if rng.IntN(10) != 0 {
			awaitJournal(robot, "app", deployed)
		}
		time.Sleep(delay)
		finished := false
		select {
		case <-deployed:
			finished = true
		default:
		}
		at := journalStep(robot, "app")
		robot.Kill(t)
		killedAt[at]++
		if !finished {
			<-deployed
			midSwitch++
		}
		// Now and then a second kill, during the recovery (the rollback
		// or the commit the restarted agent finishes before it serves).
		recovery := ""
		if at != "no journal" && rng.IntN(3) == 0 {
			robot.StartNoWait(t)
			time.Sleep(time.Duration(rng.Int64N(int64(1500 * time.Millisecond))))
			recovery = journalStep(robot, "app")
			robot.Kill(t)
			killedAt["recovery: "+recovery]++
			recovery = "; killed again in recovery at " + recovery
		}
		robot.Start(t)
		a := robot.AwaitHealthy(t, "app")
		what := fmt.Sprintf("kill %d/%d (%s into a switch to %s, worker %s %s, unhealthy=%v; at %s%s)", i+1, kills, delay.Round(time.Millisecond), version, img, strategy, unhealthy, at, recovery)

		// Exactly one whole release, the old or the new one.
		assertWhole(t, robot, a)
		got, err := Get("http://127.0.0.1:" + port + "/")
		if err != nil {
			t.Fatalf("%s: web does not answer: %v", what, err)
		}
		outcome := "back on the old release"
		switch {
		case a.Release == prev.Release && got == "version="+prevVersion+"\n":
			toOld++
		case a.Release != prev.Release && got == "version="+version+"\n" && !unhealthy:
			toNew++
			outcome = "on the new release"
			prev, prevVersion = a, version
		default:
			t.Fatalf("%s: runs release %s answering %q; before the switch: %s (version %s)", what, release.ShortID(a.Release), got, release.ShortID(prev.Release), prevVersion)
		}
		// Nothing left over.
		assertNoLeftovers(t, robot, what)
		// The volume's data intact.
		if b, err := os.ReadFile(marker.path); err != nil || string(b) != marker.content {
			t.Fatalf("%s: volume marker %s: %q, %v; want %q", what, marker.path, b, err, marker.content)
		}
		if got, _ := Get("http://127.0.0.1:" + port + "/data"); !strings.HasPrefix(got, "1\n") {
			t.Fatalf("%s: the volume's boot record lost its start: %q", what, got)
		}
		held++
		t.Logf("%s: %s, release %s, phase %s", what, outcome, release.ShortID(a.Release), a.Phase)
	}
	t.Logf("invariant held %d/%d (deploy still under way at the kill %d, converged to the old release %d, to the new %d)", held, kills, midSwitch, toOld, toNew)
	t.Logf("where the kills fell (journal step under way): %v", killedAt)
}

// journalStep names the journal entry of app under way ("switch 5 stop",
// "rollback 2 start"), or "no journal" when no operation runs.
func journalStep(d *Device, app string) string {
	b, err := os.ReadFile(filepath.Join(d.StateDir, "apps", app, "journal.json"))
	if err != nil {
		return "no journal"
	}
	var e reconcile.Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return "unreadable journal"
	}
	return fmt.Sprintf("%s %d %s", e.Op, e.Index, e.Step.Kind)
}

type volumeMarker struct{ path, content string }

// writeVolumeMarker writes a file with random content straight into the
// app's named volume on the host, as data an app would have left there.
func writeVolumeMarker(t *testing.T, d *Device, app, volume string) volumeMarker {
	t.Helper()
	name := d.Engine().VolumeName(app, volume, release.Volume{})
	out, err := docker("volume", "inspect", "-f", "{{.Mountpoint}}", name)
	if err != nil {
		t.Fatalf("inspect volume %s: %v\n%s", name, err, out)
	}
	m := volumeMarker{path: filepath.Join(strings.TrimSpace(out), "berthtest-marker"), content: "marker " + randomID() + "\n"}
	if err := os.WriteFile(m.path, []byte(m.content), 0o644); err != nil {
		t.Fatalf("write the volume marker: %v", err)
	}
	return m
}

// assertNoLeftovers fails unless the device has, on the engine, only the
// containers of its app's current release (assertWhole counts those), one
// network and one volume, and no journal.
func assertNoLeftovers(t *testing.T, d *Device, what string) {
	t.Helper()
	for _, kind := range []string{"container", "network", "volume"} {
		args := []string{kind, "ls", "-q", "--filter", "label=berth.instance=" + d.Name}
		if kind == "container" {
			args = []string{"ps", "-aq", "--filter", "label=berth.instance=" + d.Name}
		}
		out, err := docker(args...)
		if err != nil {
			t.Fatalf("%s: docker %v: %v\n%s", what, args, err, out)
		}
		want := map[string]int{"container": 2, "network": 1, "volume": 1}[kind]
		if n := len(strings.Fields(out)); n != want {
			t.Fatalf("%s: %d %ss of the device on the engine, want %d", what, n, kind, want)
		}
	}
	if _, err := os.Stat(filepath.Join(d.StateDir, "apps", "app", "journal.json")); err == nil {
		t.Fatalf("%s: a journal is left at rest", what)
	}
}

// awaitJournal waits until app's journal appears (the agent started the
// switch) or done has a value (which it puts back), and returns when.
func awaitJournal(d *Device, app string, done chan string) time.Time {
	path := filepath.Join(d.StateDir, "apps", app, "journal.json")
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			break
		}
		select {
		case v := <-done:
			done <- v
			return time.Now()
		default:
		}
	}
	return time.Now()
}
