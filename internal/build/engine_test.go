package build

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/testlock"
)

// newEngine connects to the Docker Engine: skipped without one (and under
// -short) outside CI, a failure in CI.
func newEngine(t *testing.T) *engine.Client {
	t.Helper()
	if testing.Short() && os.Getenv("CI") == "" {
		t.Skip("needs the Docker Engine (runs without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	eng, err := engine.New(ctx, "", "berthtest-build")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs the Docker Engine: %v", err)
		}
		t.Skipf("no Docker Engine: %v", err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

func randomID(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// removeImages removes the tags at cleanup (and the images when untagged).
func removeImages(t *testing.T, eng *engine.Client, refs ...string) {
	t.Cleanup(func() {
		ctx := context.Background()
		for _, r := range refs {
			if id, err := eng.ImageID(ctx, r); err == nil {
				_ = eng.RemoveImage(ctx, r)
				_ = eng.RemoveImage(ctx, id)
			}
		}
	})
}

// layers exports the image and returns, per layer, its tar's bytes.
func layers(t *testing.T, eng *engine.Client, ref string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for name, b := range saved(t, eng, ref) {
		if strings.HasSuffix(name, ".tar") || strings.HasPrefix(name, "blobs/") {
			out[name] = b
		}
	}
	if len(out) == 0 {
		t.Fatalf("the export of %s holds no layer", ref)
	}
	return out
}

// fileNames lists the paths in a layer tar.
func fileNames(t *testing.T, layer []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err != nil {
			return names // a config blob of an OCI export is not a tar
		}
		names = append(names, h.Name)
	}
}

// TestBuildExample builds examples/robot for real: three multi-stage
// builds in parallel on the local Go image, the version build arg lands in
// each binary, the labels name version and revision, and no layer of the
// final images holds the Go toolchain or the sources.
func TestBuildExample(t *testing.T) {
	eng := newEngine(t)
	testlock.Hold(t, testlock.ExampleBuild)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	goImage, err := LocalGoImage(ctx, eng)
	if err != nil {
		t.Fatal(err)
	}
	app := "berthtest-robot-" + randomID(t)
	p, err := compose.LoadProject(ctx, []string{"../../examples/robot/compose.yaml"}, compose.Options{ProjectName: app, Env: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	v := Version{Describe: "v9.8.7-berthtest", Revision: "0123456789abcdef"}
	plan, err := NewPlan(p, v)
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, tg := range plan.Targets {
		tags = append(tags, tg.Tag)
	}
	removeImages(t, eng, tags...)
	var out bytes.Buffer
	res, err := Run(ctx, eng, plan, Options{Out: &out, Args: map[string]string{"GO_IMAGE": goImage}})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(res) != 3 {
		t.Fatalf("results %+v", res)
	}
	for _, s := range []string{"planner | Step 1/", "sensor  | Step 1/", "web     | Successfully tagged " + app + "-web:v9.8.7-berthtest", app + " v9.8.7-berthtest: 3 built, 0 failed"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	for _, r := range res {
		info, err := eng.Image(ctx, r.Image)
		if err != nil {
			t.Fatal(err)
		}
		if info.Labels[LabelVersion] != v.Describe || info.Labels[LabelRevision] != v.Revision {
			t.Errorf("%s labels %v", r.Image, info.Labels)
		}
		if Stale(ctx, eng, plan, plan.Targets[0], "") && r.Service == plan.Targets[0].Service {
			t.Errorf("%s is stale right after its build", r.Image)
		}
		var binary bool
		for name, l := range layers(t, eng, r.Image) {
			for _, f := range fileNames(t, l) {
				if strings.Contains(f, "usr/local/go") || strings.HasSuffix(f, ".go") {
					t.Errorf("%s: layer %s holds %s: the build stage leaked into the image", r.Image, name, f)
				}
			}
			if bytes.Contains(l, []byte("v9.8.7-berthtest")) {
				binary = true
			}
		}
		if !binary {
			t.Errorf("%s: no layer holds the version from the build arg BERTH_VERSION", r.Image)
		}
	}
	if !Stale(ctx, eng, &Plan{App: app, Version: Version{Describe: v.Describe, Revision: "another"}}, plan.Targets[0], "") {
		t.Error("an image built from another revision is not stale")
	}
	if !Stale(ctx, eng, plan, plan.Targets[0], "linux/arm64") {
		t.Error("an amd64 image is not stale for an arm64 robot")
	}
}

// TestBuildStageSecretAndTarget: a file only the build stage reads never
// reaches a layer of the final image (checked in every layer of the export),
// the build target picks the stage, a build arg reaches the build, and a
// failed build names itself with its full log while the others finish.
// Build secrets proper (RUN --mount=type=secret): TestBuildKitSecrets.
func TestBuildStageSecretAndTarget(t *testing.T) {
	eng := newEngine(t)
	testlock.Hold(t, testlock.ExampleBuild)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	goImage, err := LocalGoImage(ctx, eng) // busybox inside: a shell for RUN
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	marker := "berthtest-secret-" + randomID(t)
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("token.txt", marker+"\n")
	write("Dockerfile", `ARG BASE
FROM ${BASE} AS build
ARG GREETING=unset
COPY token.txt /tmp/token
RUN grep -q berthtest-secret /tmp/token && mkdir -p /out && echo "authenticated, greeting=${GREETING}" > /out/result && rm /tmp/token
FROM scratch AS final
COPY --from=build /out/result /result
FROM final AS debug
COPY token.txt /token
`)
	write("Dockerfile.broken", "FROM scratch\nCOPY missing.txt /\n")
	write("compose.yaml", `services:
  ok:
    build:
      context: .
      target: final
      args:
        GREETING: hello-from-arg
  broken:
    build:
      context: .
      dockerfile: Dockerfile.broken
`)
	app := "berthtest-stage-" + randomID(t)
	p, err := compose.LoadProject(ctx, []string{filepath.Join(dir, "compose.yaml")}, compose.Options{ProjectName: app, Env: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan(p, Version{Describe: "t1", Revision: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	removeImages(t, eng, app+"-ok:t1", app+"-broken:t1")
	var out bytes.Buffer
	res, err := Run(ctx, eng, plan, Options{Out: &out, Args: map[string]string{"BASE": goImage}})
	if err == nil || !strings.Contains(err.Error(), "failed: broken (") {
		t.Fatalf("want only broken to fail, got %v\n%s", err, out.String())
	}
	for _, s := range []string{"--- full log of broken ---", "broken  FAILED after", "ok      " + app + "-ok:t1"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	if res[1].Service != "ok" || res[1].ID == "" {
		t.Fatalf("ok was not built: %+v", res)
	}
	var result bool
	for name, l := range layers(t, eng, app+"-ok:t1") {
		if bytes.Contains(l, []byte(marker)) {
			t.Errorf("layer %s of the final image holds the build stage's secret", name)
		}
		if bytes.Contains(l, []byte("authenticated, greeting=hello-from-arg")) {
			result = true
		}
		for _, f := range fileNames(t, l) {
			if strings.Contains(f, "token") {
				t.Errorf("layer %s holds %s: the target stage was not the one built", name, f)
			}
		}
	}
	if !result {
		t.Error("no layer holds the build stage's result with the build arg")
	}

}

// TestOffline: what the quickstart calls builds the example and points the
// spec at the images it tagged.
func TestOffline(t *testing.T) {
	eng := newEngine(t)
	testlock.Hold(t, testlock.ExampleBuild)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	app := "berthtest-offline-" + randomID(t)
	p, res, err := Offline(ctx, eng, "../../examples/robot/compose.yaml", compose.Options{ProjectName: app, Env: map[string]string{}}, nil)
	for _, r := range res {
		removeImages(t, eng, r.Image)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"sensor", "planner", "web"} {
		img := p.Spec.Services[s].Image
		if !strings.HasPrefix(img, app+"-"+s+":") {
			t.Errorf("%s runs %q", s, img)
		}
		if _, err := eng.Image(ctx, img); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
}
