package build

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/testlock"
)

// TestBuildCrossPlatform builds, offline and with no emulator, an image for
// an arm64 and an armv7 robot on this (amd64) engine from a Dockerfile of the
// robot example's pattern (testdata/cross: a program that imports nothing,
// so the cold cross-compile stays short; the example's three services take
// ~12 min on this shared machine, see docs/compose.md): the auto builder
// must pick BuildKit, whose build stage runs FROM --platform=$BUILDPLATFORM
// on this machine and cross-compiles for $TARGETARCH. The ELF machine of the
// binary in each image proves it.
func TestBuildCrossPlatform(t *testing.T) {
	eng := newEngine(t)
	testlock.Hold(t, testlock.ExampleBuild)
	cleanBuildCache(t, eng)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	goImage, err := LocalGoImage(ctx, eng)
	if err != nil {
		t.Fatal(err)
	}
	b, err := eng.Builders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		platform string
		machine  elf.Machine
		arch     string
	}{
		{"linux/arm64", elf.EM_AARCH64, "arm64"},
		{"linux/arm/v7", elf.EM_ARM, "arm"},
	} {
		t.Run(strings.ReplaceAll(tc.platform, "/", "-"), func(t *testing.T) {
			if tc.platform == b.Platform() {
				t.Skipf("the engine is %s itself", tc.platform)
			}
			app := "berthtest-cross-" + randomID(t)
			p, err := compose.LoadProject(ctx, []string{"testdata/cross/compose.yaml"}, compose.Options{ProjectName: app, Env: map[string]string{}})
			if err != nil {
				t.Fatal(err)
			}
			plan, err := NewPlan(p, Version{Describe: "v1-cross"})
			if err != nil {
				t.Fatal(err)
			}
			tag := plan.Targets[0].Tag
			removeImages(t, eng, tag)
			var out bytes.Buffer
			res, err := Run(ctx, eng, plan, Options{Out: &out, Args: map[string]string{"GO_IMAGE": goImage}, Platform: tc.platform})
			if err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if res[0].Builder != BuilderBuildKit {
				t.Errorf("built with %q, want buildkit for another platform", res[0].Builder)
			}
			info, err := eng.Image(ctx, tag)
			if err != nil {
				t.Fatal(err)
			}
			if info.OS != "linux" || info.Arch != tc.arch {
				t.Errorf("image is %s/%s, want %s", info.OS, info.Arch, tc.platform)
			}
			var found bool
			for _, l := range layers(t, eng, tag) {
				tr := tar.NewReader(bytes.NewReader(l))
				for {
					h, err := tr.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					if strings.TrimPrefix(h.Name, "./") != "hello" {
						continue
					}
					data, err := io.ReadAll(tr)
					if err != nil {
						t.Fatal(err)
					}
					f, err := elf.NewFile(bytes.NewReader(data))
					if err != nil {
						t.Fatalf("/hello is not an ELF binary: %v", err)
					}
					if f.Machine != tc.machine {
						t.Errorf("/hello is for %s, want %s", f.Machine, tc.machine)
					}
					found = true
				}
			}
			if !found {
				t.Error("no layer holds /hello")
			}
		})
	}
}
