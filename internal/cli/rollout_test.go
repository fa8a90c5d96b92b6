package cli

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// robot is a device that speaks the device API as berthd's fleet mode
// does, switching releases at once: healthily, or rolling back.
type robot struct {
	name  string
	id    string
	cl    *serverapi.Client
	fails atomic.Bool
	runs  atomic.Value // the fleet release it runs
}

// run long-polls the target and reports each switch, until ctx ends.
func (r *robot) run(ctx context.Context) {
	var known int64
	state := release.CurrentState{Agent: release.AgentInfo{Name: r.name}, Apps: map[string]release.AppState{}}
	for ctx.Err() == nil {
		t, changed, err := r.cl.Target(ctx, known, 500*time.Millisecond)
		if err != nil || !changed {
			continue
		}
		known = t.Version
		for app, rel := range t.Apps {
			a := state.Apps[app]
			if a.FleetRelease == rel.ID {
				continue
			}
			if r.fails.Load() {
				a.Phase, a.FleetFailed, a.Error = release.PhaseRolledBack, rel.ID, "service web: unhealthy; rolled back"
			} else {
				a.Phase, a.FleetRelease, a.FleetFailed, a.Error = release.PhaseIdle, rel.ID, "", ""
				r.runs.Store(rel.ID)
			}
			state.Apps[app] = a
		}
		state.Reported = time.Now()
		for ctx.Err() == nil {
			_, err := r.cl.ReportState(ctx, state)
			var ae *serverapi.Error
			if !errors.As(err, &ae) || ae.Status != 429 {
				break
			}
			time.Sleep(100 * time.Millisecond) // at most one report a second
		}
	}
}

// TestRolloutCLI drives berth rollout end to end against berth server,
// with three robots: a healthy rollout watched to its end, then one
// whose canary fails, paused, resumed and aborted.
func TestRolloutCLI(t *testing.T) {
	cliEnv(t)
	url, dir, _ := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	adminToken := strings.TrimSpace(readFileT(t, filepath.Join(dir, "admin.token")))
	must(t, "login", "--server", url, "--token", adminToken)
	key := decodeJSON[map[string]any](t, must(t, "fleet", "create", "lab", "--json"))["provisioning_key"].(string)
	admin, _ := serverapi.New(url, serverapi.Options{Token: adminToken})
	defer admin.Close()

	robots := map[string]*robot{}
	for _, name := range []string{"robot-a", "robot-b", "robot-c"} {
		anon, _ := serverapi.New(url, serverapi.Options{})
		reg, err := anon.Register(ctx, serverapi.RegisterRequest{ProvisioningKey: key, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		cl, _ := serverapi.New(url, serverapi.Options{Token: reg.Token})
		defer cl.Close()
		r := &robot{name: name, id: reg.Device.ID, cl: cl}
		r.runs.Store("")
		robots[name] = r
		wg.Go(func() { r.run(ctx) })
	}
	rel := func(version string) string {
		spec := release.Spec{Services: map[string]release.Service{"web": {Image: "web:" + version}}}
		r, _, err := admin.CreateRelease(ctx, "lab", serverapi.CreateReleaseRequest{App: "hello", Version: version, Spec: spec})
		if err != nil {
			t.Fatal(err)
		}
		return r.ID
	}
	v1, v2, v3 := rel("v1"), rel("v2"), rel("v3")
	if _, err := admin.Assign(ctx, "lab", v1, serverapi.AssignRequest{All: true}); err != nil {
		t.Fatal(err)
	}

	// A healthy rollout, watched until it completes.
	ro := decodeJSON[serverapi.Rollout](t, must(t, "rollout", "start", "--fleet", "lab", "--release", release.ShortID(v2), "--batch", "2", "--json"))
	if ro.Status != serverapi.RolloutRunning || ro.Release != v2 || len(ro.Stages) != 2 || ro.Params.CanaryDevices != 1 {
		t.Fatalf("rollout start --json: %+v", ro)
	}
	out := must(t, "rollout", "status", "--fleet", "lab", "--watch")
	if !strings.Contains(out, "in fleet lab: completed") || !strings.Contains(out, "3/3 healthy") || !strings.Contains(out, "robot-c") {
		t.Errorf("rollout status --watch:\n%s", out)
	}
	if out := must(t, "rollout", "list", "--fleet", "lab"); !strings.Contains(out, ro.ID) || !strings.Contains(out, "completed") || !strings.Contains(out, "3/3") {
		t.Errorf("rollout list:\n%s", out)
	}

	// The canary (robot-a: first by name) fails: the rollout pauses, the
	// others stay on v2.
	robots["robot-a"].fails.Store(true)
	out = must(t, "rollout", "start", "--fleet", "lab", "--release", v3, "--canary", "33%", "--batch", "1", "--max-failures", "1", "--stage-timeout", "5m")
	id := ro.ID
	if f := strings.Fields(out); len(f) > 1 {
		id = f[1]
	}
	if id == ro.ID || !strings.Contains(out, "3 device(s) in 3 stage(s)") {
		t.Fatalf("rollout start:\n%s", out)
	}
	out, errOut, code := berth(t, "rollout", "status", id[:6], "--fleet", "lab", "--watch")
	if code != 1 || !strings.Contains(out, ": paused") || !strings.Contains(out, "robot-a: service web: unhealthy") || errOut != "" {
		t.Errorf("rollout status --watch of a failing rollout: exit %d\n%s%s", code, out, errOut)
	}
	st := decodeJSON[serverapi.Rollout](t, must(t, "rollout", "status", "--fleet", "lab", "--json"))
	if st.ID != id || st.Status != serverapi.RolloutPaused || st.Progress.Pending != 2 || st.Failures != 1 {
		t.Errorf("rollout status --json: %+v", st)
	}
	for _, name := range []string{"robot-b", "robot-c"} {
		if d := decodeJSON[serverapi.Device](t, must(t, "device", "show", name, "--fleet", "lab", "--json")); d.Target["hello"].Release != v2 {
			t.Errorf("%s moved while the rollout paused: %+v", name, d.Target)
		}
	}

	// A viewer may look, not act.
	must(t, "user", "create", "vera", "--role", "viewer")
	tok := decodeJSON[serverapi.NewToken](t, must(t, "user", "token", "vera", "--json")).Secret
	if _, errOut, code := berth(t, "rollout", "resume", id, "--fleet", "lab", "--token", tok); code == 0 || !strings.Contains(errOut, "needs the deployer role") {
		t.Errorf("a viewer resumes: exit %d, %s", code, errOut)
	}
	if out := must(t, "rollout", "status", id, "--fleet", "lab", "--token", tok); !strings.Contains(out, "STAGE") {
		t.Errorf("a viewer's rollout status:\n%s", out)
	}

	// Resume: robot-b moves on and is healthy, robot-c fails in its turn
	// (failures count anew after a resume); abort returns all three.
	robots["robot-c"].fails.Store(true)
	if out := must(t, "rollout", "resume", id, "--fleet", "lab"); !strings.Contains(out, ": running") {
		t.Errorf("rollout resume:\n%s", out)
	}
	out, _, code = berth(t, "rollout", "status", id, "--fleet", "lab", "--watch", "--json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := decodeJSON[serverapi.Rollout](t, lines[len(lines)-1])
	if code != 1 || last.Status != serverapi.RolloutPaused || last.Progress.Healthy != 1 || last.Progress.Failed != 2 || last.Failures != 1 {
		t.Errorf("rollout status --watch --json after the resume: exit %d, %d line(s), last %+v", code, len(lines), last)
	}
	if robots["robot-b"].runs.Load() != v3 {
		t.Errorf("robot-b runs %v, want v3", robots["robot-b"].runs.Load())
	}
	out = must(t, "rollout", "abort", id, "--fleet", "lab", "--reason", "web is flaky")
	if !strings.Contains(out, ": aborted") || !strings.Contains(out, "aborted by user:admin: web is flaky") || !strings.Contains(out, "returned to "+release.ShortID(v2)) {
		t.Errorf("rollout abort:\n%s", out)
	}
	for _, name := range []string{"robot-a", "robot-b", "robot-c"} {
		if d := decodeJSON[serverapi.Device](t, must(t, "device", "show", name, "--fleet", "lab", "--json")); d.Target["hello"].Release != v2 {
			t.Errorf("%s after the abort: %+v", name, d.Target)
		}
	}
	if _, errOut, code := berth(t, "rollout", "pause", id, "--fleet", "lab"); code == 0 || !strings.Contains(errOut, "is aborted, not running") {
		t.Errorf("pause an aborted rollout: exit %d, %s", code, errOut)
	}
	if rs := decodeJSON[[]serverapi.Rollout](t, must(t, "rollout", "list", "--fleet", "lab", "--json")); len(rs) != 2 || rs[0].ID != id {
		t.Errorf("rollout list --json: %+v", rs)
	}
}
