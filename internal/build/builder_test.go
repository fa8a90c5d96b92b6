package build

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/release"
)

// fakeEngine offers the builders it is given, takes sessions unless
// noSessions, and counts the builds asked of it.
type fakeEngine struct {
	builders   engine.Builders
	noSessions bool
	builds     int
}

func (f *fakeEngine) Build(context.Context, engine.BuildOptions, func(string)) (string, error) {
	f.builds++
	return "", errors.New("fake engine: no builds")
}

func (f *fakeEngine) Image(context.Context, string) (engine.ImageInfo, error) {
	return engine.ImageInfo{}, errors.New("fake engine: no images")
}

func (f *fakeEngine) Builders(context.Context) (engine.Builders, error) { return f.builders, nil }

func (f *fakeEngine) DialSession(context.Context, string, map[string][]string) (net.Conn, error) {
	if f.noSessions {
		return nil, errors.New("fake engine: no sessions")
	}
	client, server := net.Pipe()
	go func() { _, _ = io.Copy(io.Discard, server) }() // an engine that listens and says nothing
	return client, nil
}

func TestParseBuilder(t *testing.T) {
	for in, want := range map[string]Builder{"": BuilderAuto, "auto": BuilderAuto, "BuildKit": BuilderBuildKit, "classic": BuilderClassic} {
		if got, err := ParseBuilder(in); err != nil || got != want {
			t.Errorf("ParseBuilder(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseBuilder("buildx"); err == nil {
		t.Error("ParseBuilder(buildx): no error")
	}
}

func TestChooseBuilders(t *testing.T) {
	plan := &Plan{App: "robot", Targets: []Target{
		{Service: "plain"},
		{Service: "secret", Build: compose.Build{Secrets: []compose.Secret{{ID: "tok", Env: "PATH"}}}},
	}}
	classicOnly := engine.Builders{Default: "1", API: "1.38", OS: "linux"}
	bkBuiltIn := engine.Builders{Default: "1", BuildKit: true, API: "1.41", OS: "linux"}
	bkDefault := engine.Builders{Default: "2", BuildKit: true, API: "1.43", OS: "linux"}
	tests := []struct {
		name    string
		offer   engine.Builders
		want    Builder
		targets []Target // default: plan's
		got     []Builder
		err     string
		noSess  bool
	}{
		{"auto-secrets-take-buildkit", bkBuiltIn, BuilderAuto, nil, []Builder{BuilderClassic, BuilderBuildKit}, "", false},
		{"auto-engine-default", bkDefault, BuilderAuto, nil, []Builder{BuilderBuildKit, BuilderBuildKit}, "", false},
		{"asked-buildkit", bkBuiltIn, BuilderBuildKit, nil, []Builder{BuilderBuildKit, BuilderBuildKit}, "", false},
		{"asked-classic-no-secrets", bkDefault, BuilderClassic, plan.Targets[:1], []Builder{BuilderClassic}, "", false},
		{"asked-classic-secrets", bkDefault, BuilderClassic, nil, nil, "service secret has build secrets (tok), which the classic builder would leave", false},
		{"no-buildkit-secrets", classicOnly, BuilderAuto, nil, nil, "offers no BuildKit, which secret needs (their build secrets need it); nothing was built", false},
		{"no-buildkit-asked", classicOnly, BuilderBuildKit, plan.Targets[:1], nil, "which plain needs (--builder buildkit was asked for)", false},
		{"no-buildkit-no-secrets", classicOnly, BuilderAuto, plan.Targets[:1], []Builder{BuilderClassic}, "", false},
		{"session-refused", bkBuiltIn, BuilderAuto, nil, nil, "did not take a BuildKit session (buildkit session: failed to dial gRPC: fake engine: no sessions), which secret needs; nothing was built", true},
		{"session-refused-classic", bkBuiltIn, BuilderAuto, plan.Targets[:1], []Builder{BuilderClassic}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := *plan
			if tt.targets != nil {
				p.Targets = tt.targets
			}
			got, err := chooseBuilders(context.Background(), &fakeEngine{builders: tt.offer, noSessions: tt.noSess}, &p, tt.want, false)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.got, got); d != "" {
				t.Errorf("builders (-want +got):\n%s", d)
			}
		})
	}
}

// TestRunAllFailedSaysNoneBuilt: when every build fails, the error does not
// claim that the other services' images were built.
func TestRunAllFailedSaysNoneBuilt(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a/Dockerfile", "b/Dockerfile"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte("FROM scratch\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &compose.Project{App: "robot", Spec: &release.Spec{Services: map[string]release.Service{"a": {Image: "robot-a"}, "b": {Image: "robot-b"}}},
		Builds: map[string]compose.Build{"a": {Context: dir, Dockerfile: "a/Dockerfile"}, "b": {Context: dir, Dockerfile: "b/Dockerfile"}}}
	plan, err := NewPlan(p, Version{Describe: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	eng := &fakeEngine{builders: engine.Builders{Default: "1", OS: "linux", Arch: "amd64"}}
	_, err = Run(context.Background(), eng, plan, Options{})
	if err == nil || !strings.Contains(err.Error(), "none was built") || strings.Contains(err.Error(), "were built") {
		t.Errorf("err = %v, want it to say none was built", err)
	}
	if eng.builds != 2 {
		t.Errorf("%d builds asked, want 2", eng.builds)
	}
}

// TestChooseBuildersCross: a build for another platform goes to BuildKit
// even where the engine's default is the classic builder.
func TestChooseBuildersCross(t *testing.T) {
	plan := &Plan{App: "robot", Targets: []Target{{Service: "a"}}}
	eng := &fakeEngine{builders: engine.Builders{Default: "1", BuildKit: true, OS: "linux", Arch: "amd64"}}
	got, err := chooseBuilders(context.Background(), eng, plan, BuilderAuto, true)
	if err != nil || len(got) != 1 || got[0] != BuilderBuildKit {
		t.Errorf("cross: %v %v, want buildkit", got, err)
	}
	got, err = chooseBuilders(context.Background(), eng, plan, BuilderAuto, false)
	if err != nil || got[0] != BuilderClassic {
		t.Errorf("native: %v %v, want classic", got, err)
	}
	eng.builders.BuildKit = false
	if _, err := chooseBuilders(context.Background(), eng, plan, BuilderAuto, true); err == nil || !strings.Contains(err.Error(), "another platform") {
		t.Errorf("cross without BuildKit: %v, want a refusal naming the other platform", err)
	}
}
