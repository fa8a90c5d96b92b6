package build

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-robotics/berth/internal/compose"
	"github.com/berth-robotics/berth/internal/engine"
	"github.com/berth-robotics/berth/internal/testlock"
)

// cleanBuildCache removes, at cleanup, the BuildKit cache records made
// since now that nothing uses (the caller holds testlock.ExampleBuild, so
// they are the test's own).
func cleanBuildCache(t *testing.T, eng *engine.Client) {
	since := time.Now().Add(-time.Second)
	t.Cleanup(func() {
		ctx := context.Background()
		ids, err := eng.BuildCacheSince(ctx, since)
		if err != nil {
			t.Logf("build cache left behind: %v", err)
			return
		}
		if _, err := eng.PruneBuildCache(ctx, ids); err != nil {
			t.Logf("build cache left behind: %v", err)
		}
	})
}

// busyboxImage imports a small image of busybox-static's /bin/busybox (a
// shell and the tools RUN needs), tagged for this test and removed after it.
func busyboxImage(t *testing.T, eng *engine.Client) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skipf("busybox-static is missing: %v", err)
	}
	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	for _, d := range []string{"bin/", "tmp/", "etc/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
			t.Fatal(err)
		}
	}
	if err := addFile(tw, bb, "bin/busybox"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "cat", "cut", "echo", "grep", "mkdir", "sha256sum", "test", "ls", "rm", "false"} {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ref := "berthtest-busybox-" + randomID(t) + ":1"
	removeImages(t, eng, ref)
	if _, err := eng.Import(context.Background(), &rootfs, ref, []string{"ENV PATH=/bin"}); err != nil {
		t.Fatal(err)
	}
	return ref
}

// saved exports the image and returns every file of the export: the layer
// tars, the image config (with its history) and the manifests.
func saved(t *testing.T, eng *engine.Client, ref string) map[string][]byte {
	t.Helper()
	rc, err := eng.Save(context.Background(), []string{ref})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = b
		}
	}
	return out
}

// tarHeaders lists the entries of a layer tar (none for other files).
func tarHeaders(b []byte) []*tar.Header {
	var hs []*tar.Header
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err != nil {
			return hs
		}
		hs = append(hs, h)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestBuildKitSecrets builds through the engine's BuildKit: secrets from a
// file and from an environment variable reach RUN --mount=type=secret (the
// build fails unless they are right) in the final stage and in a build
// stage, and their contents reach no file of the saved image (layers,
// config, history) nor docker history; the target picks the stage, a build
// arg reaches the build; the image is tagged and labelled as the classic
// builder's; a failed build names its step with its full log while the
// other service is built.
func TestBuildKitSecrets(t *testing.T) {
	eng := newEngine(t)
	testlock.Hold(t, testlock.ExampleBuild)
	cleanBuildCache(t, eng)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	base := busyboxImage(t, eng)
	dir := t.TempDir()
	fileSecret := "berthtest-file-secret-" + randomID(t)
	envSecret := "berthtest-env-secret-" + randomID(t)
	t.Setenv("BERTH_TEST_ENV_SECRET", envSecret)
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("token.txt", fileSecret)
	// the Dockerfile holds the secrets' hashes only: it checks them
	write("Dockerfile", `ARG BASE
FROM ${BASE} AS build
ARG GREETING=unset
RUN --mount=type=secret,id=tok --mount=type=secret,id=envtok \
    test "$(sha256sum < /run/secrets/tok | cut -d' ' -f1)" = "`+sha256Hex(fileSecret)+`" && \
    test "$(sha256sum < /run/secrets/envtok | cut -d' ' -f1)" = "`+sha256Hex(envSecret)+`" && \
    mkdir -p /out && echo "authenticated, greeting=${GREETING}" > /out/result
FROM ${BASE} AS final
COPY --from=build /out/result /result
RUN --mount=type=secret,id=tok test "$(sha256sum < /run/secrets/tok | cut -d' ' -f1)" = "`+sha256Hex(fileSecret)+`" && echo "final stage saw the secret" > /final && ls /run/secrets
FROM final AS debug
COPY token.txt /token
`)
	write("Dockerfile.broken", "ARG BASE\nFROM ${BASE}\nRUN echo about to fail && echo broken-step-output && false\n")
	write("compose.yaml", `services:
  ok:
    build:
      context: .
      target: final
      args:
        GREETING: hello-from-arg
      secrets: [tok, envtok]
  broken:
    build:
      context: .
      dockerfile: Dockerfile.broken
secrets:
  tok:
    file: ./token.txt
  envtok:
    environment: BERTH_TEST_ENV_SECRET
`)
	app := "berthtest-bk-" + randomID(t)
	p, err := compose.LoadProject(ctx, []string{filepath.Join(dir, "compose.yaml")}, compose.Options{ProjectName: app, Env: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	v := Version{Describe: "v1.2.3-bk", Revision: "rev-bk"}
	plan, err := NewPlan(p, v)
	if err != nil {
		t.Fatal(err)
	}
	ok, broken := app+"-ok:v1.2.3-bk", app+"-broken:v1.2.3-bk"
	removeImages(t, eng, ok, broken)
	var out bytes.Buffer
	res, err := Run(ctx, eng, plan, Options{Out: &out, Args: map[string]string{"BASE": base}, Builder: BuilderBuildKit})
	t.Logf("output:\n%s", out.String())
	if err == nil || !strings.Contains(err.Error(), "failed: broken (") {
		t.Fatalf("want only broken to fail, got %v", err)
	}
	for _, s := range []string{
		"--- full log of broken ---", "broken  FAILED after", "ok      " + ok,
		"broken | #", "broken-step-output", "RUN echo about to fail", // the failing step is named, its output kept
		"ok     | #",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q", s)
		}
	}
	if !strings.Contains(res[0].Error, "RUN echo about to fail") {
		t.Errorf("the error does not name the failing step: %q", res[0].Error)
	}
	if res[1].Service != "ok" || res[1].ID == "" || res[1].Builder != BuilderBuildKit {
		t.Fatalf("ok was not built with BuildKit: %+v", res)
	}
	for _, s := range []string{fileSecret, envSecret} {
		if strings.Contains(out.String(), s) {
			t.Errorf("the build output shows the secret %s", s)
		}
	}

	info, err := eng.Image(ctx, ok)
	if err != nil {
		t.Fatal(err)
	}
	if "sha256:"+strings.TrimPrefix(info.ID, "sha256:") != "sha256:"+strings.TrimPrefix(res[1].ID, "sha256:") {
		t.Errorf("tag %s is %s, the build made %s", ok, info.ID, res[1].ID)
	}
	if info.Labels[LabelVersion] != v.Describe || info.Labels[LabelRevision] != v.Revision {
		t.Errorf("labels %v", info.Labels)
	}
	if Stale(ctx, eng, plan, plan.Targets[1], "") {
		t.Error("the image BuildKit built is stale right after its build")
	}
	files := saved(t, eng, ok)
	var result, final bool
	for name, b := range files {
		for _, s := range []string{fileSecret, envSecret} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s of the saved image holds a build secret", name)
			}
		}
		result = result || bytes.Contains(b, []byte("authenticated, greeting=hello-from-arg"))
		final = final || bytes.Contains(b, []byte("final stage saw the secret"))
		for _, h := range tarHeaders(b) {
			// the engine's BuildKit leaves the mount points: empty stubs
			if strings.Contains(h.Name, "token") || (strings.HasPrefix(h.Name, "run/secrets/") && h.Size > 0) {
				t.Errorf("%s holds %s (%d bytes)", name, h.Name, h.Size)
			}
		}
	}
	if !result || !final {
		t.Errorf("the stages' results are not in the image (build stage %v, final stage %v)", result, final)
	}
	hist, err := eng.History(ctx, ok)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(hist, "\n"), "RUN") {
		t.Errorf("history without the RUN steps: %q", hist)
	}
	for _, h := range hist {
		for _, s := range []string{fileSecret, envSecret} {
			if strings.Contains(h, s) {
				t.Errorf("history holds a secret: %q", h)
			}
		}
	}
	if docker, err := exec.LookPath("docker"); err == nil {
		h, err := exec.CommandContext(ctx, docker, "history", "--no-trunc", ok).CombinedOutput()
		if err != nil {
			t.Errorf("docker history: %v\n%s", err, h)
		}
		for _, s := range []string{fileSecret, envSecret} {
			if bytes.Contains(h, []byte(s)) {
				t.Errorf("docker history --no-trunc shows a secret:\n%s", h)
			}
		}
	}
}

// TestBuildKitSecretErrors: a build secret that cannot be read fails the
// run before anything is built, and says which service and secret.
func TestBuildKitSecretErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big"), make([]byte, 600<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, secret, want string }{
		{"missing-file", "file: ./missing.txt", "build secret tok: cannot read its file"},
		{"directory", "file: ./adir", "is not a regular file"},
		{"too-big", "file: ./big", "has 614400 bytes, more than BuildKit serves (512000)"},
		{"unset-env", "environment: BERTH_TEST_UNSET_SECRET_VAR", "the environment variable BERTH_TEST_UNSET_SECRET_VAR is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := "services:\n  s:\n    build:\n      context: .\n      secrets: [tok]\n  plain:\n    build: .\nsecrets:\n  tok:\n    " + tt.secret + "\n"
			if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(y), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			p, err := compose.LoadProject(ctx, []string{filepath.Join(dir, "compose.yaml")}, compose.Options{ProjectName: "x", Env: map[string]string{}})
			if err != nil {
				t.Fatal(err)
			}
			plan, err := NewPlan(p, Version{Describe: "t1"})
			if err != nil {
				t.Fatal(err)
			}
			eng := &fakeEngine{builders: engine.Builders{Default: "1", BuildKit: true}}
			res, err := Run(ctx, eng, plan, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "service s:") || !strings.Contains(err.Error(), "nothing was built") {
				t.Fatalf("err %v, want %q naming service s and that nothing was built", err, tt.want)
			}
			if res != nil || eng.builds != 0 {
				t.Errorf("%d builds ran, results %+v", eng.builds, res)
			}
		})
	}
}

// TestBuildKitExample builds the example's sensor with BuildKit, offline:
// FROM the local Go image (a build arg) and FROM scratch resolve from the
// engine's store; the image is tagged and labelled as the classic builder's
// and holds the version from the build arg but no Go toolchain.
func TestBuildKitExample(t *testing.T) {
	eng := newEngine(t)
	testlock.Hold(t, testlock.ExampleBuild)
	cleanBuildCache(t, eng)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	goImage, err := LocalGoImage(ctx, eng)
	if err != nil {
		t.Fatal(err)
	}
	app := "berthtest-bkrobot-" + randomID(t)
	p, err := compose.LoadProject(ctx, []string{"../../examples/robot/compose.yaml"}, compose.Options{ProjectName: app, Env: map[string]string{}})
	if err != nil {
		t.Fatal(err)
	}
	v := Version{Describe: "v9.8.7-bk", Revision: "fedcba9876543210"}
	plan, err := NewPlan(p, v, "sensor")
	if err != nil {
		t.Fatal(err)
	}
	tag := app + "-sensor:v9.8.7-bk"
	removeImages(t, eng, tag)
	var out bytes.Buffer
	res, err := Run(ctx, eng, plan, Options{Out: &out, Args: map[string]string{"GO_IMAGE": goImage}, Builder: BuilderBuildKit})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, s := range []string{"sensor | #", "FROM docker.io/" + goImage, "[build ", app + " v9.8.7-bk: 1 built, 0 failed"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	info, err := eng.Image(ctx, tag)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != res[0].ID || info.Labels[LabelVersion] != v.Describe || info.Labels[LabelRevision] != v.Revision {
		t.Errorf("%s: id %s (built %s), labels %v", tag, info.ID, res[0].ID, info.Labels)
	}
	var binary bool
	for name, l := range layers(t, eng, tag) {
		for _, f := range fileNames(t, l) {
			if strings.Contains(f, "usr/local/go") || strings.HasSuffix(f, ".go") {
				t.Errorf("layer %s holds %s: the build stage leaked into the image", name, f)
			}
		}
		binary = binary || bytes.Contains(l, []byte("v9.8.7-bk"))
	}
	if !binary {
		t.Error("no layer holds the version from the build arg BERTH_VERSION")
	}
}
