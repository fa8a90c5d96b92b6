package berthtest

import (
	"context"
	"encoding/json"
	"github.com/berth-robotics/berth/internal/testlock"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/build"
	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/transfer"
)

// TestRobotExampleBytes measures what examples/robot/README.md promises:
// after a one-line edit of the planner, the new release (all three images
// rebuilt, the version being in every binary) costs a small part of the
// images on the wire. The device shares this engine, so each image is
// saved and removed before it is pushed, and must be loaded.
func TestRobotExampleBytes(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	testlock.Hold(t, testlock.ExampleBuild)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	eng, err := engine.New(ctx, "", "berthtest-bytes")
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "robot")
	if out, err := exec.Command("cp", "-r", filepath.Join(root, "examples", "robot"), src).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	goImage, err := build.LocalGoImage(ctx, eng)
	if err != nil {
		t.Fatal(err)
	}
	app := "berthtest-bytes-" + randomID()
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "reference="+app+"-*").Output()
		if refs := strings.Fields(string(out)); len(refs) > 0 {
			_ = exec.Command("docker", append([]string{"rmi", "-f"}, refs...)...).Run()
		}
	})
	cache := t.TempDir()
	release := func(version string) (changed, sent, size int64) {
		t.Helper()
		p, err := compose.LoadProject(ctx, []string{filepath.Join(src, "compose.yaml")}, compose.Options{ProjectName: app, Env: map[string]string{}})
		if err != nil {
			t.Fatal(err)
		}
		plan, err := build.NewPlan(p, build.Version{Describe: version, Revision: version})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := build.Run(ctx, eng, plan, build.Options{Args: map[string]string{"GO_IMAGE": goImage}}); err != nil {
			t.Fatal(err)
		}
		for _, tg := range plan.Targets {
			info, err := eng.Image(ctx, tg.Tag)
			if err != nil {
				t.Fatal(err)
			}
			size += info.Size
			archive := filepath.Join(t.TempDir(), "image.tar")
			if out, err := docker("save", "-o", archive, tg.Tag); err != nil {
				t.Fatal(err, out)
			}
			if out, err := docker("rmi", tg.Tag); err != nil {
				t.Fatal(err, out)
			}
			out, err := robot.BerthEnv(t, []string{"BERTH_CACHE=" + cache}, "push", archive, "--json")
			if err != nil {
				t.Fatal(err, out)
			}
			var res []struct{ Summary transfer.Summary }
			if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &res); err != nil {
				t.Fatal(err, out)
			}
			changed += res[0].Summary.BytesChanged
			sent += res[0].Summary.BytesSent
		}
		return changed, sent, size
	}
	c1, s1, size := release("v1")
	t.Logf("first release: images %d KiB, %d KiB changed, %d KiB sent", size>>10, c1>>10, s1>>10)

	p := filepath.Join(src, "planner", "main.go")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(b), `"slowing for an obstacle"`, `"slowing down for an obstacle"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	c2, s2, _ := release("v2")
	t.Logf("after a one-line edit of the planner: %d KiB changed, %.1f KiB sent", c2>>10, float64(s2)/1024)
	if s2 >= s1/4 {
		t.Errorf("the edit cost %d bytes on the wire, the first release %d", s2, s1)
	}
}
