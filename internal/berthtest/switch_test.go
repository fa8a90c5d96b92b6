package berthtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// threeServices is db ← api ← ui: api waits for db to be healthy (and checks
// it at start), ui waits for api to start; a one-shot migrate job must
// complete before api starts.
func threeServices(strategy, version string) string {
	return fmt.Sprintf(`
services:
  db:
    image: ${IMG_A}
    command: ["-start-delay", "2s"]
    environment: {VERSION: "%[2]s", DATA_DIR: /data}
    volumes: [dbdata:/data]
    labels: {berth.update.strategy: %[1]s}
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 3}
  migrate:
    image: ${IMG_A}
    command: ["-oneshot"]
    environment: {VERSION: "%[2]s", DATA_DIR: /data}
    volumes: [dbdata:/data]
    depends_on:
      db: {condition: service_healthy}
  api:
    image: ${IMG_A}
    command: ["-require", "http://db:8080/healthz", "-handover-after", "1s"]
    environment: {VERSION: "%[2]s", SERVICE: api}
    labels: {berth.update.strategy: %[1]s}
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
  ui:
    image: ${IMG_B}
    environment: {VERSION: "%[2]s", SERVICE: ui}
    command: ["-handover-after", "1s"]
    labels: {berth.update.strategy: %[1]s}
    depends_on: [api]
volumes:
  dbdata: {}
`, strategy, version)
}

func TestStrategies(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	for _, strategy := range []string{release.StrategyDownloadThenKill, release.StrategyKillThenDownload, release.StrategyDeleteThenDownload, release.StrategyHandOver} {
		t.Run(strategy, func(t *testing.T) {
			t.Parallel()
			robot := env.NewDevice(t)
			robot.MustDeploy(t, "app", threeServices(strategy, "1"))
			a := robot.AwaitHealthy(t, "app")
			if len(a.Services) != 4 {
				t.Fatalf("services: %+v", a.Services)
			}
			if m := a.Services["migrate"]; m.State != "exited" || m.ExitCode != 0 {
				t.Fatalf("migrate: %+v", m)
			}
			out := robot.MustDeploy(t, "app", threeServices(strategy, "2"))
			b := robot.AwaitHealthy(t, "app")
			if b.Release == a.Release {
				t.Fatal("release unchanged")
			}
			for name, s := range b.Services {
				if s.Release != b.Release {
					t.Errorf("service %s runs release %s, want %s", name, release.ShortID(s.Release), release.ShortID(b.Release))
				}
			}
			if n := len(robot.Containers(t, "app")); n != 4 {
				t.Errorf("after commit: %d containers, want 4", n)
			}
			if strategy == release.StrategyHandOver {
				Contains(t, out, "handover api", "handover ui")
			}
		})
	}
}

// TestDependsOnHealthyOrdering: api refuses to start unless db answers, and
// db takes 2s to come up: only a correct service_healthy wait deploys.
func TestDependsOnHealthyOrdering(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	out := robot.MustDeploy(t, "app", threeServices(release.StrategyDownloadThenKill, "1"))
	Contains(t, out, "wait db service_healthy", "wait migrate service_completed_successfully")
	if strings.Index(out, "wait db service_healthy") > strings.Index(out, "start api") {
		t.Errorf("api started before db was healthy:\n%s", out)
	}
	robot.AwaitHealthy(t, "app")
}

func TestFailingHealthcheckRollsBackKeepingData(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)
	robot.MustDeploy(t, "app", web(port, "1"))
	good := robot.AwaitHealthy(t, "app")

	out, err := robot.Deploy(t, "app", web(port, "2", "      UNHEALTHY: \"1\""))
	if err == nil {
		t.Fatalf("deploy of an unhealthy release succeeded:\n%s", out)
	}
	Contains(t, out, "rolled back", "healthcheck reports unhealthy", "The device runs what it ran before")
	a := robot.AwaitHealthy(t, "app")
	if a.Release != good.Release {
		t.Fatalf("after rollback release %s, want %s", release.ShortID(a.Release), release.ShortID(good.Release))
	}
	if !strings.Contains(a.Error, "rolled back") {
		t.Errorf("state error %q", a.Error)
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("after rollback answers %q", got)
	}
	// v1 booted, v2 booted (and failed), v1 booted again: all on the volume.
	if data, _ := Get("http://127.0.0.1:" + port + "/data"); data != "1\n2\n1\n" && data != "1\n2\n" {
		t.Fatalf("volume data = %q", data)
	}
	rs, _ := robot.Berth(t, "releases", "--app", "app")
	Contains(t, rs, "rolled back")
}

func TestBadReleasesLeaveTheRunningOneAlone(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)
	robot.MustDeploy(t, "app", web(port, "1"))
	good := robot.AwaitHealthy(t, "app")

	// A host port taken by another process.
	taken := FreePort(t)
	ln, err := listen(taken)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	exitsAtOnce := strings.Replace(web(port, "3"), "    healthcheck:", "    command: [\"-exit\", \"0\"]\n    healthcheck:", 1)

	for _, tc := range []struct {
		name, compose string
		want          []string
	}{
		{"malformed", "services:\n  web:\n    image: [unclosed\n", []string{"compose.yaml"}},
		{"unknown-key", "services:\n  web:\n    image: ${IMG_A}\n    colour: blue\n", []string{"colour"}},
		{"unsupported-key", "services:\n  web:\n    image: ${IMG_A}\n    build:\n      context: .\n      dockerfile_inline: FROM scratch\n", []string{"dockerfile_inline", "compose.yaml:6"}},
		{"build-fails", "services:\n  web:\n    image: ${IMG_A}\n    build: .\n", []string{"no Dockerfile at", "nothing was deployed"}},
		{"missing-image", "services:\n  web:\n    image: berthtest/does-not-exist:1\n", []string{"berthtest/does-not-exist:1", "not on the device", "nothing changed"}},
		{"port-taken", strings.Replace(web(port, "2"), "127.0.0.1:"+port+":8080", "127.0.0.1:"+taken+":8080", 1), []string{"rolled back", "cannot start"}},
		{"exits-at-once", exitsAtOnce, []string{"rolled back", "exited"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := robot.Deploy(t, "app", tc.compose)
			if err == nil {
				t.Fatalf("deploy succeeded:\n%s", out)
			}
			Contains(t, out, tc.want...)
			a := robot.AwaitHealthy(t, "app")
			if a.Release != good.Release {
				t.Fatalf("release %s runs, want %s", release.ShortID(a.Release), release.ShortID(good.Release))
			}
			if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
				t.Fatalf("running release answers %q", got)
			}
		})
	}
}

func TestUpdateLock(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)
	holder := func(v string) string {
		return strings.Replace(web(port, v), "    healthcheck:", "    command: [\"-lock\"]\n    healthcheck:", 1)
	}
	robot.MustDeploy(t, "app", holder("1"))
	robot.AwaitHealthy(t, "app")

	t.Run("held-then-released", func(t *testing.T) {
		hold := filepath.Join(robot.LockDir("app"), "hold")
		if err := os.WriteFile(hold, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		awaitFlockHeld(t, filepath.Join(robot.LockDir("app"), "update.lock"))
		done := make(chan string, 1)
		go func() {
			out, err := robot.Deploy(t, "app", holder("2"))
			done <- fmt.Sprint(out, err)
		}()
		a := robot.Await(t, "app", 30*time.Second, "waiting for the lock", func(a release.AppState) bool {
			return a.Phase == release.PhaseWaitingLock && a.Lock != nil
		})
		if !strings.Contains(a.Lock.Holder, "service web") {
			t.Errorf("lock holder %q, want the web service named", a.Lock.Holder)
		}
		if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
			t.Fatalf("while locked answers %q", got)
		}
		time.Sleep(time.Second)
		if err := os.Remove(hold); err != nil {
			t.Fatal(err)
		}
		out := <-done
		Contains(t, out, "waiting for lock", "committed")
		if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=2\n" {
			t.Fatalf("after unlock answers %q", got)
		}
	})

	t.Run("api-lock-timeout-and-force", func(t *testing.T) {
		out, err := robot.Berth(t, "lock", "--app", "app", "--ttl", "1h", "--holder", "field-test")
		if err != nil {
			t.Fatal(err, out)
		}
		out, err = robot.Deploy(t, "app", holder("3"), "--lock-timeout", "2s")
		if err == nil {
			t.Fatalf("deploy went through a held lock:\n%s", out)
		}
		Contains(t, out, "field-test", "lock timeout", "nothing was changed")
		if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=2\n" {
			t.Fatalf("after lock timeout answers %q", got)
		}
		robot.MustDeploy(t, "app", holder("3"), "--force")
		if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=3\n" {
			t.Fatalf("after --force answers %q", got)
		}
		if out, err := robot.Berth(t, "unlock", "--app", "app"); err != nil {
			t.Fatal(err, out)
		}
	})
}

func TestAppsAndAgentsSideBySide(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	other := env.NewDevice(t) // another agent on the same engine
	p1, p2, p3 := FreePort(t), FreePort(t), FreePort(t)

	// A container berth does not own, wearing a berth-looking label.
	foreign := "berthtest-foreign-" + randomID()
	if out, err := docker("run", "-d", "--name", foreign, "--label", "berth.app=app", env.Images["a"]); err != nil {
		t.Fatal(err, out)
	}
	t.Cleanup(func() { docker("rm", "-f", foreign) })

	robot.MustDeploy(t, "app", web(p1, "1"))
	robot.MustDeploy(t, "nav", web(p2, "1"))
	other.MustDeploy(t, "app", web(p3, "1"))
	if len(robot.State(t).Apps) != 2 || len(other.State(t).Apps) != 1 {
		t.Fatalf("apps: robot %v, other %v", robot.State(t).Apps, other.State(t).Apps)
	}
	robot.MustDeploy(t, "app", web(p1, "2"))
	if out, err := robot.Berth(t, "rm", "--app", "app", "--volumes"); err != nil {
		t.Fatal(err, out)
	}
	for _, u := range []string{p2, p3} {
		if got, _ := Get("http://127.0.0.1:" + u + "/"); got != "version=1\n" {
			t.Errorf("port %s answers %q after the other app was updated and removed", u, got)
		}
	}
	if out, _ := docker("inspect", "-f", "{{.State.Running}}", foreign); strings.TrimSpace(out) != "true" {
		t.Errorf("foreign container: running=%q", out)
	}
	if n := len(other.Containers(t, "app")); n != 1 {
		t.Errorf("other agent's app has %d containers", n)
	}
	if _, ok := robot.State(t).Apps["app"]; ok {
		t.Error("removed app still listed")
	}
	vols, _ := robot.Engine().Volumes(context.Background(), "app")
	if len(vols) != 0 {
		t.Errorf("volumes left after rm --volumes: %v", vols)
	}
}

// awaitFlockHeld waits until another process holds flock on path.
func awaitFlockHeld(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		f.Close() // closing drops our lock if we got it
		if err == syscall.EWOULDBLOCK {
			return
		}
	}
	t.Fatalf("nobody took the lock on %s", path)
}

// TestMaintenanceWindow: outside the device's window a switch waits, and
// says why; --force goes through.
func TestMaintenanceWindow(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	now := time.Now()
	closed := fmt.Sprintf("%02d:00-%02d:30", (now.Hour()+2)%24, (now.Hour()+2)%24) // opens in 2 hours
	robot := env.NewDeviceWithPolicy(t, `{"settle": "1s", "verify_timeout": "20s", "maintenance_windows": ["`+closed+`"]}`)
	port := FreePort(t)
	done := make(chan string, 1)
	go func() {
		out, err := robot.Deploy(t, "app", web(port, "1"))
		done <- fmt.Sprint(out, err)
	}()
	a := robot.Await(t, "app", 30*time.Second, "waiting for the window", func(a release.AppState) bool {
		return a.Phase == release.PhaseWaitingLock && a.Lock != nil
	})
	Contains(t, a.Lock.Holder, "maintenance window "+closed)
	if _, err := Get("http://127.0.0.1:" + port + "/"); err == nil {
		t.Fatal("the app started outside the maintenance window")
	}
	// The waiting deploy holds the app; a forced one is refused as busy until it ends.
	out, err := robot.Deploy(t, "app", web(port, "1"), "--force")
	if err == nil {
		t.Fatalf("second deploy during the first went through:\n%s", out)
	}
	Contains(t, out, "busy", "waiting for lock")
	robot.Kill(t) // drop the waiting switch; the restart rolls it back
	robot.Start(t)
	<-done
	robot.MustDeploy(t, "app", web(port, "1"), "--force")
	robot.AwaitHealthy(t, "app")
}
