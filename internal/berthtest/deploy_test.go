package berthtest

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/berth-robotics/berth/internal/release"
)

// web is a one-service app with a healthcheck and a named volume.
func web(port, version string, extra ...string) string {
	return `
services:
  web:
    image: ${IMG_A}
    environment:
      VERSION: "` + version + `"
      DATA_DIR: /data
` + strings.Join(extra, "\n") + `
    ports: ["127.0.0.1:` + port + `:8080"]
    volumes: [data:/data]
    healthcheck:
      test: ["CMD", "/app", "-check"]
      interval: 1s
      timeout: 10s # a probe slowed by a loaded machine is not a failure
      retries: 2
volumes:
  data: {}
`
}

func TestDeployThenUpdate(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	robot := env.NewDevice(t)
	port := FreePort(t)

	out := robot.MustDeploy(t, "app", web(port, "1"))
	Contains(t, out, "committed", "app test is running")
	a := robot.AwaitHealthy(t, "app")
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("v1 answers %q", got)
	}

	logs, err := robot.Berth(t, "logs", "--app", "app", "web", "--tail", "5")
	if err != nil {
		t.Fatal(err, logs)
	}
	Contains(t, logs, "web | serving on 8080 version 1")

	// The status JSON contract.
	js, err := robot.Berth(t, "status", "--json")
	if err != nil {
		t.Fatal(err, js)
	}
	var raw struct {
		Apps map[string]struct {
			Release, Version, Phase, Error *string
			Services                       map[string]map[string]any
		}
	}
	if err := json.Unmarshal([]byte(js), &raw); err != nil {
		t.Fatal(err)
	}
	ja := raw.Apps["app"]
	if ja.Release == nil || *ja.Release != a.Release || ja.Version == nil || ja.Phase == nil || *ja.Phase != "idle" || ja.Error == nil {
		t.Fatalf("status --json app fields: %s", js)
	}
	for _, k := range []string{"container", "state", "health", "restarts", "release"} {
		if _, ok := ja.Services["web"][k]; !ok {
			t.Errorf("status --json services.web lacks %q: %s", k, js)
		}
	}
	if ja.Services["web"]["health"] != "healthy" || ja.Services["web"]["state"] != "running" {
		t.Errorf("web: %v", ja.Services["web"])
	}

	// Same file again: nothing to do.
	out = robot.MustDeploy(t, "app", web(port, "1"))
	Contains(t, out, "nothing to do")

	// v2 replaces v1; the volume keeps v1's data.
	robot.MustDeploy(t, "app", web(port, "2"))
	b := robot.AwaitHealthy(t, "app")
	if b.Release == a.Release {
		t.Fatal("release did not change")
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=2\n" {
		t.Fatalf("v2 answers %q", got)
	}
	if data, _ := Get("http://127.0.0.1:" + port + "/data"); data != "1\n2\n" {
		t.Fatalf("volume data = %q, want v1's and v2's boots", data)
	}
	if cs := robot.Containers(t, "app"); len(cs) != 1 {
		t.Fatalf("after commit, want 1 container, have %d: %+v", len(cs), cs)
	}
	rs, err := robot.Berth(t, "releases", "--app", "app")
	if err != nil {
		t.Fatal(err)
	}
	Contains(t, rs, release.ShortID(a.Release), release.ShortID(b.Release), "current")

	// Roll back to v1 and forward again by ID.
	out, err = robot.Berth(t, "rollback", "--app", "app")
	if err != nil {
		t.Fatal(err, out)
	}
	if got := robot.AwaitHealthy(t, "app"); got.Release != a.Release {
		t.Fatalf("after rollback release %s, want %s", got.Release, a.Release)
	}
	if got, _ := Get("http://127.0.0.1:" + port + "/"); got != "version=1\n" {
		t.Fatalf("after rollback answers %q", got)
	}
}
