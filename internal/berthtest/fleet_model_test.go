package berthtest

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/release"
	"github.com/berth-robotics/berth/internal/serverapi"
)

// modelApp is the model test's app: one service with a healthcheck and no
// published port (several devices share this engine); bad makes it fail
// its healthcheck, so a switch to it rolls back.
func modelApp(version string, bad bool) string {
	unhealthy := ""
	if bad {
		unhealthy = `, UNHEALTHY: "1"`
	}
	return `
services:
  web:
    image: ${IMG_A}
    environment: {VERSION: "` + version + `"` + unhealthy + `}
    healthcheck: {test: ["CMD", "/app", "-check"], interval: 1s, timeout: 2s, retries: 2}
`
}

// modelRelease is a release of the model test and whether it passes its
// health gate.
type modelRelease struct {
	id, version string
	good        bool
}

// modelDevice is what the model knows of a device beyond what the server
// says: a LAN override it made, and under which generation.
type modelDevice struct {
	*Device
	override   string // the LAN release's version, "" for none
	removed    bool   // the override is a LAN removal
	overGen    int64  // the app's generation when the override was made
	overUntil  time.Time
	lastStatus serverapi.AppStatus
}

// TestFleetModel drives a small fleet — a real server, two real berthd on
// the real engine — through a random sequence of what operators and robot
// developers do: releases assigned to all or one, rollouts (which pass or
// pause on a failing release) and their aborts, environment edits, LAN
// deploys and removals with and without a TTL, pins, retries, reclaims,
// berthd killed at random moments (mid-switch included) and the server
// killed. After each step it waits for every device to settle and checks
// that it runs what the server says it should run, or reports why not
// (failed, override) — and that what it reports is what the engine runs.
// BERTH_MODEL_STEPS sets the number of steps (default 10);
// BERTH_FAULT_SEED replays a sequence (the seed is logged).
func TestFleetModel(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	rng := FaultSeed(t)
	steps := FaultCount(t, "BERTH_MODEL_STEPS", 10)
	srv := env.NewServer(t)
	key := srv.CreateFleet(t, "lab")

	var rels []modelRelease
	byID := map[string]modelRelease{}
	newRelease := func(version string, good bool) modelRelease {
		compose := filepath.Join(t.TempDir(), "compose.yaml")
		write(t, compose, strings.Replace(modelApp(version, !good), "${IMG_A}", env.Images["a"], 1))
		r := modelRelease{createRelease(t, srv, compose, version), version, good}
		rels = append(rels, r)
		byID[r.id] = r
		return r
	}
	for _, v := range []string{"g1", "g2", "g3"} {
		newRelease(v, true)
	}
	newRelease("b1", false)

	var devs []*modelDevice
	for range 2 {
		devs = append(devs, &modelDevice{Device: env.NewFleetDevice(t, srv.URL, key)})
	}
	srv.AssignAll(t, rels[0].id)
	modelCheck(t, srv, devs, byID, "start")

	lan := 0
	for step := 1; step <= steps; step++ {
		d := devs[rng.IntN(len(devs))]
		r := rels[rng.IntN(len(rels))]
		var what string
		switch op := rng.IntN(12); op {
		case 0, 1:
			what = "assign " + r.version + " to the fleet"
			srv.AssignAll(t, r.id)
		case 2:
			what = "assign " + r.version + " to " + d.Name
			mustBerth(t, srv, "release", "assign", r.id, "--fleet", "lab", "--device", d.Name)
		case 3:
			what = "roll " + r.version + " out (canary 1, batches of 1)"
			mustBerth(t, srv, "rollout", "start", "--release", r.id, "--fleet", "lab", "--canary", "1", "--batch", "1", "--stage-timeout", "2m")
		case 4:
			what = "abort the paused rollout, if any"
			if id := pausedRollout(t, srv); id != "" {
				mustBerth(t, srv, "rollout", "abort", id, "--fleet", "lab")
			}
		case 5:
			what = "fleet env MODEL_VAR=" + fmt.Sprint(step)
			mustBerth(t, srv, "fleet", "env", "lab", fmt.Sprintf("MODEL_VAR=%d", step))
		case 6:
			lan++
			version := fmt.Sprintf("lan%d", lan)
			args := []string{}
			ttl := rng.IntN(2) == 0
			if ttl {
				args = append(args, "--override-ttl", "20s")
			}
			what = fmt.Sprintf("LAN deploy %s to %s (TTL: %v)", version, d.Name, ttl)
			gen := showDevice(t, srv, d.Name).Target["app"].Generation
			d.MustDeploy(t, "app", modelApp(version, false), args...)
			d.override, d.removed, d.overGen, d.overUntil = version, false, gen, time.Time{}
			if ttl {
				d.overUntil = time.Now().Add(20 * time.Second)
			}
		case 7:
			what = "LAN rm on " + d.Name
			gen := showDevice(t, srv, d.Name).Target["app"].Generation
			if out, err := d.Berth(t, "rm", "--app", "app"); err != nil && !strings.Contains(out, "not on this device") {
				t.Fatalf("step %d: %s: %v\n%s", step, what, err, out)
			}
			d.override, d.removed, d.overGen, d.overUntil = "removed", true, gen, time.Time{}
		case 8:
			if rng.IntN(2) == 0 {
				what = "pin " + d.Name + " to " + r.version
				mustBerth(t, srv, "device", "pin", d.Name, "--fleet", "lab", "--release", r.id)
			} else {
				what = "unpin " + d.Name
				mustBerth(t, srv, "device", "pin", d.Name, "--fleet", "lab", "--clear", "app")
			}
		case 9:
			what = "retry " + d.Name
			mustBerth(t, srv, "device", "retry", d.Name, "--fleet", "lab", "--app", "app")
		case 10:
			// Kill berthd a random moment after a change reaches it:
			// mid-fetch, mid-switch, mid-rollback or at rest.
			delay := time.Duration(rng.IntN(4000)) * time.Millisecond
			what = fmt.Sprintf("assign %s to the fleet, kill -9 berthd of %s %s later, start it", r.version, d.Name, delay)
			srv.AssignAll(t, r.id)
			time.Sleep(delay)
			d.Kill(t)
			d.Start(t)
		case 11:
			what = "kill -9 the server and start it again"
			srv.Stop()
			time.Sleep(time.Duration(rng.IntN(3000)) * time.Millisecond)
			srv.Start(t)
		}
		t.Logf("step %d: %s", step, what)
		// Any assignment that reached a device ends its override there.
		for _, md := range devs {
			if md.override != "" && showDevice(t, srv, md.Name).Target["app"].Generation > md.overGen {
				md.override, md.removed = "", false
			}
		}
		modelCheck(t, srv, devs, byID, fmt.Sprintf("step %d (%s)", step, what))
	}
}

func mustBerth(t *testing.T, srv *Server, args ...string) string {
	t.Helper()
	out, err := srv.Berth(t, args...)
	if err != nil {
		t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// pausedRollout returns the fleet's paused rollout, if any.
func pausedRollout(t *testing.T, srv *Server) string {
	var rs []serverapi.Rollout
	if err := json.Unmarshal([]byte(mustBerth(t, srv, "rollout", "list", "--fleet", "lab", "--status", "paused", "--json")), &rs); err != nil || len(rs) == 0 {
		return ""
	}
	return rs[0].ID
}

// modelCheck waits until no rollout runs and every device's app has
// settled as the model expects, then checks what it reports against what
// the engine runs.
func modelCheck(t *testing.T, srv *Server, devs []*modelDevice, rels map[string]modelRelease, when string) {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for {
		var rs []serverapi.Rollout
		out := mustBerth(t, srv, "rollout", "list", "--fleet", "lab", "--status", "running", "--json")
		if err := json.Unmarshal([]byte(out), &rs); err != nil {
			t.Fatalf("%s: rollout list: %v\n%s", when, err, out)
		}
		if len(rs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: a rollout still runs: %s", when, out)
		}
		time.Sleep(time.Second)
	}
	for _, d := range devs {
		var last serverapi.Device
		var why string
		for {
			last = showDevice(t, srv, d.Name)
			if why = d.judge(t, last, rels); why == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: device %s did not settle as the model expects: %s\nstatus %+v\ntarget %+v\nreported %+v\n(replay with the seed logged above)",
					when, d.Name, why, last.Status["app"], last.Target["app"], last.Apps["app"])
			}
			time.Sleep(500 * time.Millisecond)
		}
		if st := last.Status["app"]; st != d.lastStatus {
			t.Logf("  %s: %s %s %s", d.Name, st.State, release.ShortID(st.Release), st.Reason)
			d.lastStatus = st
		}
	}
}

// judge says how the device's app differs from what the model expects of
// it, "" when it matches: the state the server shows, at rest, and on the
// engine one running container of the release it reports (healthy), with
// the version that state implies.
func (d *modelDevice) judge(t *testing.T, dev serverapi.Device, rels map[string]modelRelease) string {
	t.Helper()
	st, a := dev.Status["app"], dev.Apps["app"]
	if d.override != "" && !d.overUntil.IsZero() && time.Now().After(d.overUntil) {
		d.override, d.removed = "", false // its TTL ran out
	}
	target := rels[dev.Target["app"].Release]
	want, version := serverapi.StatusRunning, target.version
	switch {
	case d.override != "":
		want, version = serverapi.StatusOverride, d.override
	case !target.good:
		want, version = serverapi.StatusFailed, rels[st.Release].version
	}
	if st.State != want {
		return fmt.Sprintf("state %s, want %s", st.State, want)
	}
	if !a.Phase.AtRest() {
		return "phase " + string(a.Phase)
	}
	cs := d.Containers(t, "app")
	if d.removed {
		if len(cs) != 0 {
			return fmt.Sprintf("%d containers; want none", len(cs))
		}
		return ""
	}
	if version == "" {
		// Failed with no fleet release to fall back on: nothing runs, or
		// a LAN release whose override ended runs still.
		if len(cs) == 0 {
			return ""
		}
		version = "lan"
	}
	if len(cs) != 1 {
		return fmt.Sprintf("%d containers, want 1: %+v", len(cs), cs)
	}
	c := cs[0]
	if !c.Running() || c.Health != release.HealthHealthy || c.Release != a.Release {
		return fmt.Sprintf("container %s: %s, health %s, release %s; the device reports release %s", c.Name, c.State, c.Health, release.ShortID(c.Release), release.ShortID(a.Release))
	}
	out, err := exec.Command("docker", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", c.ID).Output()
	if err != nil {
		return "inspect: " + err.Error()
	}
	if !slices.ContainsFunc(strings.Split(string(out), "\n"), func(l string) bool {
		return l == "VERSION="+version || version == "lan" && strings.HasPrefix(l, "VERSION=lan")
	}) {
		return fmt.Sprintf("the container runs %q, want VERSION=%s", strings.Fields(string(out)), version)
	}
	return ""
}
