package compose

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLoadBuild(t *testing.T) {
	p, err := LoadProject(context.Background(), paths("build.yaml"), Options{Env: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("testdata")
	want := map[string]Build{
		"sensor": {Context: filepath.Join(dir, "sensor"), Dockerfile: "Dockerfile"},
		"planner": {
			Context: filepath.Join(dir, "planner"), Dockerfile: "build/Dockerfile", Target: "final",
			Args: map[string]string{"GO_IMAGE": "golang:1.26"}, Labels: map[string]string{"team": "nav"},
			Platforms: []string{"linux/arm64"}, Image: "registry.lab/planner",
			Secrets: []Secret{{ID: "api_key", Env: "API_KEY"}, {ID: "token", File: filepath.Join(dir, "token.txt")}},
		},
	}
	if d := cmp.Diff(want, p.Builds); d != "" {
		t.Errorf("builds (-want +got):\n%s", d)
	}
	if got := p.Spec.Services["sensor"].Image; got != "robot-sensor" {
		t.Errorf("sensor image = %q, want robot-sensor", got)
	}
	if got := p.Spec.Services["planner"].Image; got != "registry.lab/planner" {
		t.Errorf("planner image = %q", got)
	}
}
