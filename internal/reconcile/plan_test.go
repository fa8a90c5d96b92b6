package reconcile

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/release"
)

var update = flag.Bool("update", false, "rewrite golden files")

// app builds a three-service release: db ← api ← ui, with a migrate job.
func app(strategy, version string) *release.Release {
	labels := map[string]string{}
	if strategy != "" {
		labels[release.LabelStrategy] = strategy
	}
	hc := &release.Healthcheck{Test: []string{"CMD", "/app", "-check"}}
	r := &release.Release{App: "robot", Version: version, Spec: release.Spec{
		Services: map[string]release.Service{
			"db":      {Image: "db:1", ImageID: "sha256:db1", Healthcheck: hc, Mounts: []release.Mount{{Type: "volume", Source: "data", Target: "/data"}}},
			"migrate": {Image: "db:1", ImageID: "sha256:db1", Command: []string{"migrate"}, DependsOn: map[string]release.Dependency{"db": {Condition: release.ConditionHealthy, Required: true}}},
			"api": {Image: "api:" + version, ImageID: "sha256:api" + version, Labels: labels, DependsOn: map[string]release.Dependency{
				"db":      {Condition: release.ConditionHealthy, Required: true},
				"migrate": {Condition: release.ConditionCompletedSuccessfully, Required: true},
			}},
			"ui": {Image: "ui:1", ImageID: "sha256:ui1", Labels: labels, DependsOn: map[string]release.Dependency{"api": {Condition: release.ConditionStarted, Required: true}}},
		},
		Volumes: map[string]release.Volume{"data": {}},
	}}
	r.Seal()
	return r
}

// running returns the containers a committed release leaves behind.
func running(r *release.Release) []release.Container {
	var out []release.Container
	for _, name := range []string{"api", "db", "migrate", "ui"} {
		s, ok := r.Spec.Services[name]
		if !ok {
			continue
		}
		c := release.Container{ID: name + "-" + r.Version, Service: name, SpecHash: s.Hash(), Release: r.ID, State: "running", Image: s.ImageID}
		if name == "migrate" {
			c.State = "exited"
		}
		out = append(out, c)
	}
	return out
}

func TestPlan(t *testing.T) {
	v1, v2 := app("", "1"), app("", "2")
	withoutUI := app("", "2")
	delete(withoutUI.Spec.Services, "ui")
	crashed := append(running(v1), release.Container{ID: "api-2", Service: "api", SpecHash: v2.Spec.Services["api"].Hash(), State: "running"})
	crashed[0].State = "running" // old api still up too
	stopped := running(v1)
	stopped[3].State = "exited"
	stopped[3].ExitCode = 137

	for _, tc := range []struct {
		name     string
		target   *release.Release
		observed []release.Container
	}{
		{"first-deploy", v1, nil},
		{"no-change", v1, running(v1)},
		{"update-api", v2, running(v1)},
		{"kill-then-download", app(release.StrategyKillThenDownload, "2"), running(app(release.StrategyKillThenDownload, "1"))},
		{"delete-then-download", app(release.StrategyDeleteThenDownload, "2"), running(app(release.StrategyDeleteThenDownload, "1"))},
		{"hand-over", app(release.StrategyHandOver, "2"), running(app(release.StrategyHandOver, "1"))},
		{"service-removed", withoutUI, running(v1)},
		{"crashed-mid-switch", v2, crashed},
		{"service-stopped", v1, stopped},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := Plan(tc.target, tc.observed)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "plan-"+tc.name, Describe(steps))
		})
	}
}

func TestPlanRollback(t *testing.T) {
	v1, v2 := app("", "1"), app("", "2")
	midway := append(running(v1), release.Container{ID: "api-2", Service: "api", SpecHash: v2.Spec.Services["api"].Hash(), State: "running"})
	midway[0].State = "exited" // old api stopped by the switch
	for _, tc := range []struct {
		name     string
		target   *release.Release
		observed []release.Container
	}{
		{"back-to-v1", v1, midway},
		{"first-deploy-failed", nil, running(v2)},
		{"already-whole", v1, running(v1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := PlanRollback(tc.target, tc.observed)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "rollback-"+tc.name, Describe(steps))
		})
	}
}

func TestPlanRejectsCycles(t *testing.T) {
	r := app("", "1")
	db := r.Spec.Services["db"]
	db.DependsOn = map[string]release.Dependency{"ui": {Condition: release.ConditionStarted, Required: true}}
	r.Spec.Services["db"] = db
	if _, err := Plan(r, nil); err == nil {
		t.Fatal("a depends_on cycle was planned")
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/reconcile -update)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("plan differs from %s (-want +got):\n%s", path, d)
	}
}

func TestRestored(t *testing.T) {
	v1, v2 := app("", "1"), app("", "2")
	stoppedAPI := running(v1)
	for i := range stoppedAPI {
		if stoppedAPI[i].Service == "api" {
			stoppedAPI[i].State, stoppedAPI[i].ExitCode = "exited", 137
		}
	}
	failedJob := running(v1)
	for i := range failedJob {
		if failedJob[i].Service == "migrate" {
			failedJob[i].ExitCode = 1
		}
	}
	for _, tc := range []struct {
		name     string
		observed []release.Container
		want     string // the failing service, "" for none
	}{
		{"whole", running(v1), ""},
		{"killed-after-the-plan", stoppedAPI, "api"},
		{"other-release", running(v2), "api"},
		{"job-failed", failedJob, "migrate"},
		{"nothing", nil, "api"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Restored(v1, tc.observed)
			got := ""
			if f, ok := err.(*Failure); ok {
				got = f.Service
			} else if err != nil {
				t.Fatalf("not a Failure: %v", err)
			}
			if got != tc.want {
				t.Fatalf("failing service %q, want %q (%v)", got, tc.want, err)
			}
		})
	}
}
