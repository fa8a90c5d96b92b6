package berthtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
)

// handoverApp is web (a published port, a volume, a healthcheck; the same
// in every version) and a worker whose definition the test gives: its
// lines after the image.
func handoverApp(port, version, worker string) string {
	return fmt.Sprintf(`
services:
  web:
    image: ${IMG_A}
    environment: {VERSION: "1", DATA_DIR: /data}
    ports: ["127.0.0.1:%[2]s:8080"]
    volumes: [data:/data]
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 2}
  worker:
    image: ${IMG_B}
    environment: {VERSION: "%[1]s"}
%[3]s
volumes:
  data: {}
`, version, port, worker)
}

// TestHungHandOverRollsBack: a switch whose hand-over never completes —
// the new container gives no readiness signal, its healthcheck never
// leaves "starting", it crash-loops under restart: always, a service it
// depends on never gets healthy — ends within a
// bounded time, rolled back to the release before, with the reason in the
// deploy's output and in `berth status --json`; and the old container,
// which ran on during the hand-over, was never restarted. A crash-looping
// service under the default strategy is rolled back the same way.
func TestHungHandOverRollsBack(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	// The health gate and depends_on waits give up after 10 s.
	robot := env.NewDeviceWithPolicy(t, `{"settle": "1s", "verify_timeout": "10s", "lock_timeout": "60s"}`)
	port := FreePort(t)
	const handover = `    labels: {berth.update.strategy: hand-over, berth.update.handover-timeout: 4s}`
	good := func(v string) string {
		return handoverApp(port, v, `    command: ["-handover-after", "300ms"]
`+handover)
	}
	robot.MustDeploy(t, "app", good("1"))
	robot.AwaitHealthy(t, "app")

	for _, tc := range []struct {
		name, worker string
		bound        time.Duration // from the deploy request to its answer
		want         []string
	}{
		{"no-readiness-signal", handover, 30 * time.Second,
			[]string{"hand-over", "no readiness signal within 4s", "berth.update.handover-timeout"}},
		{"healthcheck-stays-starting", `    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1h, start_period: 1h}
` + handover, 30 * time.Second,
			[]string{"hand-over", "no readiness signal within 4s"}},
		{"crash-loop", `    command: ["-exit", "1"]
    restart: always
` + handover, 30 * time.Second,
			[]string{"service worker", "exit code 1"}},
		{"depends-on-never-healthy", `    depends_on: {db: {condition: service_healthy}}
` + handover + `
  db:
    image: ${IMG_A}
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1h, start_period: 1h}`, 30 * time.Second,
			[]string{"service db", "not healthy within 10s"}},
		{"crash-loop-default-strategy", `    command: ["-exit", "1"]
    restart: always`, 45 * time.Second,
			[]string{"service worker"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := robot.AwaitHealthy(t, "app")
			old := map[string]time.Time{}
			for _, c := range robot.Containers(t, "app") {
				old[c.ID] = c.StartedAt
			}
			start := time.Now()
			out, err := robot.Deploy(t, "app", handoverApp(port, "2", tc.worker))
			took := time.Since(start)
			if err == nil {
				t.Fatalf("deploy went through:\n%s", out)
			}
			if took > tc.bound {
				t.Errorf("the deploy took %s, want at most %s", took.Round(time.Millisecond), tc.bound)
			}
			Contains(t, out, append([]string{"rolled back"}, tc.want...)...)

			a := robot.AwaitHealthy(t, "app")
			if a.Release != before.Release || a.Phase != release.PhaseRolledBack {
				t.Fatalf("after the rollback: release %s, phase %s; want %s, rolled back", release.ShortID(a.Release), a.Phase, release.ShortID(before.Release))
			}
			st, err := robot.Berth(t, "status", "--json")
			if err != nil {
				t.Fatal(err, st)
			}
			var cs release.CurrentState
			if err := json.Unmarshal([]byte(st), &cs); err != nil {
				t.Fatalf("status --json: %v\n%s", err, st)
			}
			if got := cs.Apps["app"]; got.Phase != release.PhaseRolledBack || !strings.Contains(got.Error, "rolled back") || !strings.Contains(got.Error, tc.want[0]) {
				t.Errorf("status --json: phase %q, error %q; want rolled back with the reason", got.Phase, got.Error)
			}
			if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
				t.Fatalf("after the rollback web answers %q", got)
			}
			// One whole release, its containers the ones from before. web
			// did not change; under hand-over the old worker ran throughout
			// (download-then-kill stopped it, and the rollback started it).
			assertWhole(t, robot, a)
			for _, c := range robot.Containers(t, "app") {
				was, ok := old[c.ID]
				if !ok {
					t.Errorf("container %s (%s) is new: the old one was replaced", c.Name, c.Service)
				} else if !c.StartedAt.Equal(was) && (c.Service == "web" || strings.Contains(tc.worker, "hand-over")) {
					t.Errorf("container %s (%s) was restarted (%s, now %s)", c.Name, c.Service, was, c.StartedAt)
				}
			}
			assertNoLeftovers(t, robot, tc.name)
			t.Logf("rolled back %s after the deploy request; reason: %s", took.Round(100*time.Millisecond), strings.SplitN(a.Error, "\n", 2)[0])
		})
	}
}
