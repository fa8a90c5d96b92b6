package berthtest

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPushFromEngine: `berth push` of an image in the local engine to a
// robot with an engine of its own. The local engine pushes the image to
// berth's loopback endpoint; after a one-line change (a new top layer) it
// pushes only that layer, and the robot gets the new file as a delta and
// loads the new layer; the robot's engine ends up with exactly the local
// images. With BERTH_PUSH_VIA=save the same comes through docker save.
func TestPushFromEngine(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	g := env.NewEngine2(t, "")
	robot := env.NewDeviceOn(t, g.Host, "", `{"settle": "1s", "verify_timeout": "20s"}`)
	cache := t.TempDir()
	pushEnv := []string{"BERTH_CACHE=" + cache, "BERTH_PUSH_PORT=" + FreePort(t)}

	// An app that does not compress to nothing, so that a delta pays.
	rng := rand.New(rand.NewSource(1))
	var code strings.Builder
	for code.Len() < 200<<10 {
		fmt.Fprintf(&code, "func f%d() int { return %d }\n", rng.Intn(1e6), rng.Int63())
	}
	appCode := code.String()
	dir := t.TempDir()
	write(t, filepath.Join(dir, "Dockerfile"), "FROM "+env.Images["a"]+"\nCOPY big /big\nCOPY app /app\n")
	write(t, filepath.Join(dir, "big"), strings.Repeat("a runtime the app needs, unchanged\n", 60000)+randomID())
	build := func(app string) (tag, id string) {
		t.Helper()
		write(t, filepath.Join(dir, "app"), appCode+app+"\n")
		tag = "berthtest/enginepush:" + randomID()
		if out, err := docker("build", "-q", "-t", tag, dir); err != nil {
			t.Fatal(err, out)
		}
		t.Cleanup(func() { docker("rmi", "-f", tag) })
		out, err := docker("image", "inspect", "-f", "{{.Id}}", tag)
		if err != nil {
			t.Fatal(err, out)
		}
		return tag, strings.TrimSpace(out)
	}
	push := func(ref string, extra ...string) (map[string]any, string) {
		t.Helper()
		out, err := robot.BerthEnv(t, append(pushEnv, extra...), "push", ref, "--json")
		if err != nil {
			t.Fatal(err, out)
		}
		var res []map[string]any
		if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &res); err != nil {
			t.Fatal(err, out)
		}
		sum, _ := res[0]["summary"].(map[string]any)
		if sum == nil {
			t.Fatalf("no summary: %s", out)
		}
		return sum, out
	}
	onRobot := func(tag, id string) {
		t.Helper()
		got, err := docker("-H", g.Host, "image", "inspect", "-f", "{{.Id}}", tag)
		if err != nil || strings.TrimSpace(got) != id {
			t.Fatalf("the robot's engine has %s as %q (%v), want %s", tag, got, err, id)
		}
	}

	tag1, id1 := build("v1")
	first, out := push(tag1)
	if first["source"] != "engine push" || first["layers_needed"].(float64) != 2 {
		t.Fatalf("first push: %v\n%s", first, out)
	}
	onRobot(tag1, id1)

	tag2, id2 := build("v2")
	second, out := push(tag2)
	if second["source"] != "engine push" || second["layers_needed"].(float64) != 1 || second["delta_files"].(float64) != 1 {
		t.Fatalf("one line changed: %v\n%s", second, out)
	}
	onRobot(tag2, id2)
	// The engine pushed the top layer only.
	if sent := second["bytes_sent"].(float64); sent > 64<<10 {
		t.Errorf("one line changed: %v bytes sent", sent)
	}

	tag3, id3 := build("v3")
	third, out := push(tag3, "BERTH_PUSH_VIA=save")
	if third["source"] != "docker save" || third["delta_files"].(float64) != 1 {
		t.Fatalf("through docker save: %v\n%s", third, out)
	}
	onRobot(tag3, id3)
	if _, err := os.Stat(filepath.Join(cache, "localreg.json")); err != nil {
		t.Errorf("the endpoint's memory: %v", err)
	}
}
