package berthtest

import (
	"bytes"
	"context"
	"github.com/berth-robotics/berth/internal/testlock"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRobotExampleFromClone runs examples/robot/README.md in a fresh clone:
// berth install to a robot over SSH, then berth deploy, which builds the
// three images from source first (offline, on the local Go image); the web
// UI answers through the planner and the sensor. An edit deploys again as
// a -dirty version (every image is rebuilt: the version is baked into each
// binary; here the robot shares the engine, so nothing is sent); rollback
// returns to the first release.
func TestRobotExampleFromClone(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	testlock.Hold(t, testlock.ExampleBuild)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(t.TempDir(), "berth")
	if out, err := exec.Command("git", "clone", "-q", root, clone).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	app := "berthtest-robot-" + randomID()
	// after the uninstall (cleanups run last first), when no container uses them
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "reference="+app+"-*").Output()
		if refs := strings.Fields(string(out)); len(refs) > 0 {
			_ = exec.Command("docker", append([]string{"rmi", "-f"}, refs...)...).Run()
		}
	})
	sshd := env.NewSSHD(t)
	in, _ := env.Install(t, sshd)
	port := FreePort(t)
	berth := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(env.Bin, "berth"), append(args, "--to", in.Target)...)
		cmd.Dir = clone
		cmd.Env = append(os.Environ(), "HOME="+sshd.Home, "ROBOT_UI_PORT="+port)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	out := berth("deploy", "-f", "examples/robot/compose.yaml", "--app", app, "--local-go-image")
	Contains(t, out, "building planner, sensor, web of "+app, "3 built, 0 failed", app+" ", "is running")
	page := awaitPage(t, "http://127.0.0.1:"+port+"/", "m/s")
	Contains(t, page, "planner ", "sensor ")

	// edit the planner, deploy again
	p := filepath.Join(clone, "examples", "robot", "planner", "main.go")
	src, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(src), `"slowing for an obstacle"`, `"slowing down for an obstacle"`, 1)
	if edited == string(src) {
		t.Fatal("the planner's source changed: update this test")
	}
	if err := os.WriteFile(p, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	out = berth("deploy", "-f", "examples/robot/compose.yaml", "--app", app, "--local-go-image")
	Contains(t, out, "-dirty: 3 built, 0 failed", "is running")
	awaitPage(t, "http://127.0.0.1:"+port+"/", "-dirty")

	out = berth("rollback", "--app", app)
	Contains(t, out, "committed")
	page = awaitPage(t, "http://127.0.0.1:"+port+"/", "m/s")
	if strings.Contains(page, "-dirty") {
		t.Errorf("after rollback the UI still shows the edited version:\n%s", page)
	}

	// uninstall removes the app but keeps its calibration volume
	out = berth(append([]string{"uninstall"}, in.flags[:8]...)...)
	Contains(t, out, "removed app "+app+" (its volumes kept)", "berthd is uninstalled")
	vols, err := exec.Command("docker", "volume", "ls", "-q", "--filter", "name=."+app+".calibration").Output()
	if err != nil || !strings.Contains(string(vols), app+".calibration") {
		t.Fatalf("the calibration volume did not survive the uninstall: %v %q", err, vols)
	}
	for _, v := range strings.Fields(string(vols)) {
		_ = exec.Command("docker", "volume", "rm", v).Run()
	}
	if ps, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=berth.app="+app).Output(); len(strings.TrimSpace(string(ps))) > 0 {
		t.Errorf("containers of %s after uninstall: %s", app, ps)
	}
}

// awaitPage polls url until its body contains want.
func awaitPage(t *testing.T, url, want string) string {
	t.Helper()
	var last string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		body, err := Get(url)
		if err == nil && strings.Contains(body, want) {
			return body
		}
		last = body
		if err != nil {
			last = err.Error()
		}
	}
	t.Fatalf("%s never showed %q; last: %s", url, want, last)
	return ""
}
